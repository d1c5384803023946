"""Reading a shim body's guest figures where the sandbox's previous body had them.

A shim writes each family's block the same way at every collection; only the numbers change.
So once a body has been read the usual way (`digest_body`), the collector keeps the layout of
each guest family's block: which lines hold the figures the conversion reads, what each of
them starts with, and how many lines lie around them. The next body is read by finding the
guest families' `# HELP` lines and matching each block with one pattern made from its layout,
all in C: a third of the cost of cutting the guest families out and searching them line by
line. (Prometheus keeps a per-target cache of series text for the same reason.) Only the
blocks are kept, not their order: the Go shim writes the agent's families, the guest's among
them, in a random order at every scrape.

A layout is made only from a body whose guest blocks are all in the plain shape (`# HELP`,
`# TYPE`, then samples with exactly the labels the conversion reads them by, no escapes, values
as client libraries write them), so each figure has exactly one line a parse would read it
from. What a layout proves about the body it reads, or it declines (None) and the body is read
the usual way, which gives a new layout:
- the same guest families have a block each (a block runs from its `# HELP` line to the next
  `# HELP` line or the end of the body), and none of them has two;
- in each block, the figures are on the same lines, which start with the same metric name and
  label text as before and end in a value of the exposition format's grammar, then the line's
  end;
- each block has as many lines before, between and after those lines as before. A guest CPU,
  network interface or disk that comes or goes adds or removes lines: noticed at once.
What it does not see: a line changed in place into another that a parse would read a figure
from (a disk replaced by a new one on the very same lines, or a line of another shape with a
figure's labels), or a guest sample outside its family's block. The collector's whole-body
check (`WHOLE_BODY_CHECK_EVERY`) reads every body the usual way now and then, and its layout
replaces this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from pulse.cadvisor.guest import (
    CPU_FAMILY,
    DISKSTAT_FAMILY,
    GUEST_SHAPES,
    MEMINFO_FAMILY,
    NETDEV_FAMILY,
    TASKS_FAMILY,
    TOTAL_CPU,
    VMSTAT_FAMILY,
    GuestSample,
)
from pulse.expo.parser import SAMPLE_VALUE, is_plain_block

# GuestSample's fields, and the family each is read from.
_FIELDS = (
    ("cpu", CPU_FAMILY),
    ("meminfo", MEMINFO_FAMILY),
    ("vm_stat", VMSTAT_FAMILY),
    ("netdev", NETDEV_FAMILY),
    ("diskstat", DISKSTAT_FAMILY),
    ("tasks", TASKS_FAMILY),
)
_NESTED = frozenset({"netdev", "diskstat"})
_GUEST_FAMILIES = frozenset(family for _, family in _FIELDS)
_GUEST_HELP = "# HELP kata_guest_"  # what every guest family's `# HELP` line starts with
_GUEST_HELP_LINE = "\n" + _GUEST_HELP
_HELP = "# HELP "
_NAME = re.compile(r"[^ \t\n]*+")

# A figure's place in its GuestSample field: the device (nested fields only), the item.
Target = tuple[str | None, str]


@dataclass(frozen=True, slots=True)
class BlockLayout:
    field: str  # the GuestSample field the block's figures go to
    family: str
    pattern: re.Pattern[str]  # matches the block from its `# HELP`; a group per figure
    targets: tuple[Target, ...]  # the figure of each group


@dataclass(frozen=True, slots=True)
class GuestLayout:
    """Where a sandbox's guest figures stood in its last body (see the module's docstring)."""

    blocks: tuple[BlockLayout, ...]
    ncpu: int

    @classmethod
    def of(cls, text: str, sample: GuestSample) -> GuestLayout | None:
        """The layout of `text`, whose figures `sample` holds (in body order, as
        `extract_guest` gives them); None unless every guest block is in the plain shape
        (`# HELP`, `# TYPE`, then `name{key="value",...} value` lines with exactly the labels
        the conversion reads them by: no other line shape a parse would also take)."""
        if sample.empty:
            return None
        helps = _help_positions(text)
        if helps is None:
            return None
        blocks: list[BlockLayout] = []
        for field_name, family in _FIELDS:
            targets = _targets(sample, field_name)
            if family not in helps:
                if targets:
                    return None
                continue
            block = _block_layout(text, helps[family], field_name, family, targets)
            if block is None:
                return None
            blocks.append(block)
        layout = cls(tuple(blocks), sample.ncpu)
        # The layout must give back the very figures it was made from.
        return layout if layout.read(text) == sample else None

    def read(self, text: str) -> GuestSample | None:
        """The figures of `text` if it has this layout, else None."""
        helps = _help_positions(text)
        if helps is None or len(helps) != len(self.blocks):
            return None
        values: list[str] = []
        for block in self.blocks:
            at = helps.get(block.family)
            match = None if at is None else block.pattern.match(text, at)
            if match is None:
                return None
            values += match.groups()
        try:
            numbers = [float(value) for value in values]
        except ValueError:
            return None
        flat: dict[str, dict[str, float]] = {name: {} for name, _ in _FIELDS}
        nested: dict[str, dict[str, dict[str, float]]] = {name: {} for name in _NESTED}
        figures = iter(numbers)
        for block in self.blocks:
            for device, item in block.targets:
                if device is None:
                    flat[block.field][item] = next(figures)
                else:
                    nested[block.field].setdefault(device, {})[item] = next(figures)
        return GuestSample(
            cpu=flat["cpu"],
            ncpu=self.ncpu,
            meminfo=flat["meminfo"],
            vm_stat=flat["vm_stat"],
            netdev=nested["netdev"],
            diskstat=nested["diskstat"],
            tasks=flat["tasks"],
        )


def _help_positions(text: str) -> dict[str, int] | None:
    """Where each guest family's `# HELP` line starts; None when a family has two.

    The whole body is searched, from its end back: CPython's forward search tests each place
    for the needle's last character, here an underscore, which metric names are full of; the
    reverse search tests for its first, the newline, once a line. Over a 93 kB body that is
    11 µs instead of 27, so no search needs to stop early: a family written twice is seen
    wherever its second block is, and a parse (which keeps a series' first sample) and this
    layout never read different blocks.
    """
    positions: dict[str, int] = {}
    end = len(text)
    while end > 0:
        found = text.rfind(_GUEST_HELP_LINE, 0, end)
        if found >= 0:
            at, end = found + 1, found
        elif text.startswith(_GUEST_HELP):
            at = end = 0
        else:
            break
        name = _NAME.match(text, at + len(_HELP))
        assert name is not None  # it matches the empty string too
        if name[0] in _GUEST_FAMILIES and positions.setdefault(name[0], at) != at:
            return None
    return positions


def _next_line(text: str, start: str, at: int) -> int:
    """Where the next line that begins with `start` begins, after `at`; -1 if none does."""
    found = text.find("\n" + start, at)
    return found + 1 if found >= 0 else -1


def _block_layout(
    text: str, help_at: int, field_name: str, family: str, targets: tuple[Target, ...]
) -> BlockLayout | None:
    end = _next_line(text, _HELP, help_at)  # the block's end: the next `# HELP` line
    if end < 0:
        if not text.endswith("\n"):
            return None  # the pattern matches whole lines only
        end = len(text)
    if not is_plain_block(text[help_at + len(_HELP) : end], family, GUEST_SHAPES[family]):
        return None
    lines = text[help_at : end - 1].split("\n")
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines):
        first_line.setdefault(line[: line.rfind(" ") + 1], number)
    starts: list[str] = []
    numbers: list[int] = []
    for target in targets:
        start = _line_start(family, target)
        found = None if start is None else first_line.get(start)
        if start is None or found is None or (numbers and found <= numbers[-1]):
            return None
        starts.append(start)
        numbers.append(found)
    # Lines between the `# HELP` line (number 0) and the first figure's, between figures, and
    # after the last one.
    gaps = tuple(b - a - 1 for a, b in pairwise((0, *numbers)))
    trailing = len(lines) - 1 - (numbers[-1] if numbers else 0)
    return _shared_block_layout(field_name, family, tuple(starts), gaps, trailing, targets)


@lru_cache(maxsize=512)
def _shared_block_layout(
    field_name: str,
    family: str,
    starts: tuple[str, ...],
    gaps: tuple[int, ...],
    trailing: int,
    targets: tuple[Target, ...],
) -> BlockLayout:
    """A block with the figures' lines at these places; its pattern has a group per value.
    Shared: the sandboxes of one guest shape have the same blocks, kept once."""
    parts = [rf"# HELP {re.escape(family)}(?:[ \t][^\n]*+)?\n"]
    for start, gap in zip(starts, gaps, strict=True):
        parts.append(_lines(gap))
        parts.append(rf"{re.escape(start)}({SAMPLE_VALUE})\n")
    parts.append(_lines(trailing))
    parts.append(r"(?=# HELP |\Z)")
    return BlockLayout(field_name, family, re.compile("".join(parts)), targets)


def _lines(count: int) -> str:
    """`count` lines of the block, none of them a `# HELP` line (that would be the next
    block's)."""
    return rf"(?:(?!# HELP )[^\n]*+\n){{{count}}}" if count else ""


def _targets(sample: GuestSample, field_name: str) -> tuple[Target, ...]:
    if field_name in _NESTED:
        devices: dict[str, dict[str, float]] = getattr(sample, field_name)
        return tuple((device, item) for device, items in devices.items() for item in items)
    figures: dict[str, float] = getattr(sample, field_name)
    return tuple((None, item) for item in figures)


@lru_cache(maxsize=4096)
def _line_start(family: str, target: Target) -> str | None:
    """A sample line up to its value, as the plain shape writes it; None for a figure the
    family's labels cannot hold."""
    device, item = target
    if family == CPU_FAMILY:
        values: tuple[str, ...] = (TOTAL_CPU, item)  # the cpu field holds the total's items
    else:
        values = (item,) if device is None else (device, item)
    keys = GUEST_SHAPES[family]
    if len(keys) != len(values):
        return None
    labels = ",".join(f'{key}="{value}"' for key, value in zip(keys, values, strict=True))
    return f"{family}{{{labels}}} "
