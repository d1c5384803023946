"""From a shim body to output blocks: the glue between the actors and the pure conversion code.

- `digest_body` runs in a collector's task: parse once, keep only the numbers the conversion
  needs (the parsed body itself is large and is not kept).
- `Renderer` runs in the cache owner: turns a digest plus pod metadata into the sandbox's
  cAdvisor block, once per collection (or when the CRI changes what the pod is called).
- `*_pieces` run in the web app, over a snapshot: joins of pre-rendered blocks, in pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

from pulse import katamon
from pulse.cadvisor import (
    GUEST_SHAPES,
    ConversionOptions,
    ConversionState,
    GuestSample,
    Rates,
    convert,
    extract_guest,
)
from pulse.cadvisor import (
    HEADERS as CADVISOR_HEADERS,
)
from pulse.cadvisor.layout import GuestLayout
from pulse.cadvisor.render import LabelTexts
from pulse.config import Config
from pulse.expo.parser import parse, parse_selected
from pulse.expo.text import assemble_pieces
from pulse.model import Labels, PodMeta
from pulse.selfmetrics import SANDBOX_HEADERS
from pulse.snapshot import Block, LiveStats, SandboxView, Snapshot

OUTPUT_HEADERS = {**CADVISOR_HEADERS, **SANDBOX_HEADERS}


@dataclass(frozen=True, slots=True)
class BodyDigest:
    guest: GuestSample
    has_samples: bool
    malformed_lines: int
    first_error: str | None
    whole: bool = True  # every line of the body was validated, not just the guest families
    # Where the figures stood, for reading the sandbox's next body (see digest_body).
    layout: GuestLayout | None = field(default=None, compare=False, repr=False)


def decode(body: bytes) -> str:
    # The format is UTF-8; a stray invalid byte must cost one line (it fails validation), not
    # the whole body.
    return body.decode("utf-8", "replace")


def digest_body(
    body: bytes,
    disk_exclude: re.Pattern[str] | None = None,
    *,
    whole: bool = True,
    checked_against: GuestSample | None = None,
    layout: GuestLayout | None = None,
    make_layout: bool = False,
) -> BodyDigest:
    """Parse and keep what the conversion needs; excluded disks are not even kept.

    `whole=False` parses only the guest families the conversion reads (see `parse_selected`).
    It falls back to the whole body when the layout does not allow that, when a guest line is
    malformed, or when the body has no guest samples (is there anything at all?); the
    result's `whole` tells which happened.

    With `checked_against` (the sandbox's previous figures), the guest lines are not validated
    either, only read: the result must then have every figure the previous one had, or the
    guest families are parsed again with validation. A line the conversion reads that broke
    thus loses its figure for no collection: it is found and counted at once. What goes
    unchecked is a line the conversion does not read, until the next whole-body check.

    With `layout` (the previous digest's), a body laid out as the one before is read where
    that one had its figures, for a third of the cost (see `pulse.cadvisor.layout`); any other
    body is read as above. With `make_layout`, a clean body read as above without the whole
    parse gives its digest a layout of its own, if one fits. The collector asks for one after
    each whole-body check and while its layout keeps changing (see `digest_next`).
    """
    text = decode(body)
    if not whole and layout is not None:
        guest = layout.read(text)
        if guest is not None:
            return BodyDigest(guest, True, 0, None, whole=False, layout=layout)
    digest = _digest_text(text, disk_exclude, whole, checked_against)
    if make_layout and not digest.whole and digest.malformed_lines == 0:
        return replace(digest, layout=GuestLayout.of(text, digest.guest))
    return digest


def digest_next(
    body: bytes,
    disk_exclude: re.Pattern[str] | None,
    *,
    whole: bool,
    previous: BodyDigest | None,
) -> BodyDigest:
    """A sandbox's body digested after its `previous` good one (None at its first): checked
    against that one's figures, read with its layout, and given a layout when `wants_layout`."""
    return digest_body(
        body,
        disk_exclude,
        whole=whole,
        checked_against=None if previous is None else previous.guest,
        layout=None if previous is None else previous.layout,
        make_layout=wants_layout(previous),
    )


def wants_layout(previous: BodyDigest | None) -> bool:
    """Whether a sandbox's next digest should make a layout for the ones after it
    (`cadvisor.layout`): right after a clean whole-body check (whose own reading, the whole
    parse, cannot give one), and whenever the layout kept stops fitting. Not at a sandbox's
    first collection (making one costs more than reading the body, and at start hundreds of
    sandboxes are collected at once), nor again while no layout fits a body, until the next
    whole-body check."""
    if previous is None:
        return False
    clean_check = previous.whole and previous.malformed_lines == 0
    return previous.layout is not None or clean_check


def _digest_text(
    text: str,
    disk_exclude: re.Pattern[str] | None,
    whole: bool,
    checked_against: GuestSample | None,
) -> BodyDigest:
    if not whole:
        if checked_against is not None:
            guest = _read_unvalidated(text, disk_exclude)
            if guest is not None and guest.has_every_figure_of(checked_against):
                return BodyDigest(guest, True, 0, None, whole=False)
        selected = parse_selected(text, GUEST_SHAPES)
        if selected is not None and selected.has_samples:
            return BodyDigest(extract_guest(selected, disk_exclude), True, 0, None, whole=False)
    parsed = parse(text)
    return BodyDigest(
        extract_guest(parsed, disk_exclude),
        parsed.has_samples,
        parsed.malformed_lines,
        parsed.first_error,
    )


def _read_unvalidated(text: str, disk_exclude: re.Pattern[str] | None) -> GuestSample | None:
    selected = parse_selected(text, GUEST_SHAPES, validate=False)
    if selected is None or not selected.has_samples:
        return None
    try:
        return extract_guest(selected, disk_exclude)
    except ValueError:
        return None  # a value that is not a number: validation will say where


@dataclass(frozen=True, slots=True)
class SandboxRendering:
    """One sandbox's rendered output and the conversion state before and after it."""

    cadvisor: Block
    state_before: ConversionState | None
    state_after: ConversionState
    live: LiveStats
    # The sandbox's label texts, reused by its next collection while its identity holds.
    label_texts: LabelTexts = field(default_factory=LabelTexts, compare=False, repr=False)

    @property
    def cpu_unit(self) -> str | None:
        return self.state_after.cpu_unit

    def view_changes(self) -> dict[str, object]:
        """The SandboxView fields this rendering sets, for `SandboxView.with_changes`."""
        return {"cadvisor": self.cadvisor, "live": self.live, "cpu_unit": self.cpu_unit}


class Renderer:
    def __init__(self, config: Config) -> None:
        self._options = ConversionOptions(
            cpu_time_unit=config.guest_cpu_time_unit,
            disk_exclude=config.disk_exclude,
            vm_container_name=config.vm_container_name,
        )

    def render(
        self,
        sandbox_id: str,
        pod: PodMeta | None,
        collected_at: float,
        digest: BodyDigest,
        previous: SandboxRendering | None,
    ) -> SandboxRendering:
        """A new collection: convert it, advancing the sandbox's conversion state."""
        if previous is None:
            return self._convert(sandbox_id, pod, digest, None, collected_at, LabelTexts())
        return self._convert(
            sandbox_id, pod, digest, previous.state_after, collected_at, previous.label_texts
        )

    def rerender(
        self, view: SandboxView, digest: BodyDigest, rendering: SandboxRendering, now: float
    ) -> SandboxRendering:
        """Same collection, new pod metadata: convert again from the state it started from.

        Stamped `now`, not with the collection's time: a series whose value changes (the
        sandbox row's remainder, when a container comes or goes) must not repeat a timestamp
        Prometheus may already hold a different value for. The pod's identity changed, so its
        rows did: the old label texts are of no more use.
        """
        return self._convert(
            view.sandbox_id, view.pod, digest, rendering.state_before, now, LabelTexts()
        )

    def _convert(
        self,
        sandbox_id: str,
        pod: PodMeta | None,
        digest: BodyDigest,
        state_before: ConversionState | None,
        collected_at: float,
        label_texts: LabelTexts,
    ) -> SandboxRendering:
        block, state_after = convert(
            sandbox_id, digest.guest, pod, collected_at, state_before, self._options, label_texts
        )
        live = live_stats(state_after)
        return SandboxRendering(block, state_before, state_after, live, label_texts)


def live_stats(state: ConversionState) -> LiveStats:
    rates = state.rates or Rates()
    return LiveStats(
        **{field.name: getattr(rates, field.name) for field in fields(Rates)},
        memory_working_set_bytes=state.working_set_bytes,
    )


# About 0.1 to 0.8 ms of joins at 500 sandboxes: what the web app builds between checkpoints.
ASSEMBLY_PIECE = 256 * 1024


def cadvisor_pieces(
    snapshot: Snapshot, sandbox_id: str | None = None, piece_size: int = ASSEMBLY_PIECE
) -> Iterator[bytes]:
    """The cAdvisor families and the per-sandbox kata_pulse_* lines of every (or one) sandbox,
    as consecutive pieces made one at a time (the caller yields between them)."""
    views = (
        [snapshot.sandboxes[sandbox_id]] if sandbox_id is not None else snapshot.sandboxes.values()
    )
    blocks: list[Block] = []
    for view in views:
        blocks.append(view.cadvisor)
        blocks.append(view.own)
    return assemble_pieces(OUTPUT_HEADERS, blocks, piece_size)


def kata_pieces(snapshot: Snapshot, family_prefixes: tuple[str, ...] = ()) -> Iterator[bytes]:
    """kata-monitor compatible output from the kept bodies: an empty piece after each body is
    parsed (a point to yield at: parsing 500 bodies in one go holds the loop for a second),
    then the output in pieces of about a megabyte, each rendered only when it is taken.

    Rendered on request rather than per collection: kept pre-rendered, every shim line with its
    four injected labels would cost several times the memory of the kept bodies, for an
    endpoint that exists for compatibility.
    """
    blocks: list[katamon.KataBlock] = []
    for view in snapshot.sandboxes.values():
        if view.raw_body is not None:
            parsed = parse(decode(view.raw_body.raw()))
            blocks.append(katamon.KataBlock(parsed, Labels.of(view.sandbox_id, view.pod)))
            yield b""
    yield from katamon.kata_pieces(blocks, family_prefixes)
