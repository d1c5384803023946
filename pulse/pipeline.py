"""From a shim body to output blocks: the glue between the actors and the pure conversion code.

- `digest_body` runs in a collector's task: parse once, keep only the numbers the conversion
  needs (the parsed body itself is large and is not kept).
- `Renderer` runs in the cache owner: turns a digest plus pod metadata into the sandbox's
  cAdvisor block, once per collection (or when the CRI changes what the pod is called).
- `assemble_*` run in the web app, over a snapshot: joins of pre-rendered blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from pulse import katamon
from pulse.cadvisor import (
    HEADERS as CADVISOR_HEADERS,
)
from pulse.cadvisor import (
    ConversionOptions,
    ConversionState,
    GuestSample,
    Rates,
    convert,
    extract_guest,
)
from pulse.config import Config
from pulse.expo.parser import parse
from pulse.expo.text import assemble
from pulse.model import Labels
from pulse.selfmetrics import SANDBOX_HEADERS
from pulse.snapshot import Block, LiveStats, SandboxView, Snapshot

OUTPUT_HEADERS = {**CADVISOR_HEADERS, **SANDBOX_HEADERS}


@dataclass(frozen=True, slots=True)
class BodyDigest:
    guest: GuestSample
    samples: int
    malformed_lines: int
    first_error: str | None


def decode(body: bytes) -> str:
    # The format is UTF-8; a stray invalid byte must cost one line (it fails validation), not
    # the whole body.
    return body.decode("utf-8", "replace")


def digest_body(body: bytes, disk_exclude: re.Pattern[str] | None = None) -> BodyDigest:
    """Parse once and keep what the conversion needs; excluded disks are not even kept."""
    parsed = parse(decode(body))
    return BodyDigest(
        extract_guest(parsed, disk_exclude),
        parsed.sample_count,
        parsed.malformed_lines,
        parsed.first_error,
    )


@dataclass(frozen=True, slots=True)
class SandboxRendering:
    """One sandbox's rendered output and the conversion state before and after it."""

    cadvisor: Block
    state_before: ConversionState | None
    state_after: ConversionState
    live: LiveStats

    @property
    def cpu_unit(self) -> str | None:
        return self.state_after.cpu_unit

    def apply(self, view: SandboxView) -> SandboxView:
        return replace(view, cadvisor=self.cadvisor, live=self.live, cpu_unit=self.cpu_unit)


class Renderer:
    def __init__(self, config: Config) -> None:
        self._options = ConversionOptions(
            cpu_time_unit=config.guest_cpu_time_unit,
            disk_exclude=config.disk_exclude,
            vm_container_name=config.vm_container_name,
        )

    def render(
        self,
        view: SandboxView,
        digest: BodyDigest,
        previous: SandboxRendering | None,
    ) -> SandboxRendering:
        """A new collection: convert it, advancing the sandbox's conversion state."""
        assert view.last_success is not None
        state_before = previous.state_after if previous is not None else None
        return self._convert(view, digest, state_before, view.last_success)

    def rerender(
        self, view: SandboxView, digest: BodyDigest, rendering: SandboxRendering, now: float
    ) -> SandboxRendering:
        """Same collection, new pod metadata: convert again from the state it started from.

        Stamped `now`, not with the collection's time: a series whose value changes (the
        sandbox row's remainder, when a container comes or goes) must not repeat a timestamp
        Prometheus may already hold a different value for.
        """
        return self._convert(view, digest, rendering.state_before, now)

    def _convert(
        self,
        view: SandboxView,
        digest: BodyDigest,
        state_before: ConversionState | None,
        collected_at: float,
    ) -> SandboxRendering:
        block, state_after = convert(
            view.sandbox_id, digest.guest, view.pod, collected_at, state_before, self._options
        )
        return SandboxRendering(block, state_before, state_after, live_stats(state_after))


def live_stats(state: ConversionState) -> LiveStats:
    rates = state.rates or Rates()
    return LiveStats(
        **{field.name: getattr(rates, field.name) for field in fields(Rates)},
        memory_working_set_bytes=state.working_set_bytes,
    )


def _selected(snapshot: Snapshot, sandbox_id: str | None) -> list[SandboxView]:
    if sandbox_id is not None:
        return [snapshot.sandboxes[sandbox_id]]
    return list(snapshot.sandboxes.values())


def assemble_cadvisor(snapshot: Snapshot, sandbox_id: str | None = None) -> bytes:
    """The cAdvisor families and the per-sandbox kata_pulse_* lines of every (or one) sandbox."""
    blocks: list[Block] = []
    for view in _selected(snapshot, sandbox_id):
        blocks.append(view.cadvisor)
        blocks.append(view.own)
    return assemble(OUTPUT_HEADERS, blocks)


def assemble_kata(snapshot: Snapshot, family_prefixes: tuple[str, ...] = ()) -> bytes:
    """kata-monitor compatible output, rendered from the kept raw bodies.

    Rendered on request (and memoized per snapshot by the web app) rather than per collection:
    kept pre-rendered, every shim line with its four injected labels would cost several times
    the memory of the raw bodies, for an endpoint that exists for compatibility.
    """
    rendered = [
        katamon.render_sandbox(parse(decode(view.raw_body)), Labels.of(view.sandbox_id, view.pod))
        for view in snapshot.sandboxes.values()
        if view.raw_body is not None
    ]
    return katamon.assemble_kata(rendered, family_prefixes)
