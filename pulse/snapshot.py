"""Immutable snapshots of the cache owner's state, and the one-slot board they are published on.

Readers (the web app, websocket clients) take `board.current` without waiting on anybody; the
cache owner is the only writer. A snapshot and everything it references is never mutated, so a
reader may keep using one for as long as a response takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import trio

from pulse.cadvisor.convert import Rates
from pulse.kept import KeptBody
from pulse.model import PodMeta, RuntimeKind, SandboxState, ScrapeFailure

Block = Mapping[str, bytes]  # family name -> that family's sample lines for one sandbox


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram as Prometheus renders it; `observe` returns a new one."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one more than bounds (+Inf)
    total: float = 0.0

    @staticmethod
    def empty(bounds: tuple[float, ...]) -> Histogram:
        return Histogram(bounds, (0,) * (len(bounds) + 1))

    def observe(self, value: float) -> Histogram:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        counts = list(self.counts)
        counts[index] += 1
        return Histogram(self.bounds, tuple(counts), self.total + value)

    @property
    def count(self) -> int:
        return sum(self.counts)


SCRAPE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CRI_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class LiveStats(Rates):
    """What live views show of a sandbox: the conversion's rates over the last interval (computed
    once per collection by the cache owner) and the memory working set."""

    memory_working_set_bytes: float | None = None


@dataclass(frozen=True, slots=True)
class SandboxView:
    sandbox_id: str
    root: Path
    kind: RuntimeKind
    state: SandboxState
    discovered_at: float  # unix seconds
    pod: PodMeta | None = None
    last_success: float | None = None  # unix seconds of the last good scrape
    last_attempt: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    last_error_reason: ScrapeFailure | None = None
    scrapes_total: int = 0
    failures_total: int = 0
    malformed_lines: int = 0  # in the last good body
    cpu_unit: str | None = None
    raw_body: KeptBody | None = None  # the last good shim body, while fresh
    cadvisor: Block = field(default_factory=dict)  # rendered once per collection
    own: Block = field(default_factory=dict)  # kata_pulse_sandbox_* lines of this sandbox
    live: LiveStats = field(default_factory=LiveStats)

    @property
    def has_data(self) -> bool:
        return self.raw_body is not None

    def with_changes(self, **changes: object) -> SandboxView:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CriStatus:
    endpoint: str
    up: bool = False
    last_success: float | None = None
    last_error: str | None = None
    sync_errors_total: int = 0
    syncs_total: int = 0
    sync_seconds: Histogram = field(default_factory=lambda: Histogram.empty(CRI_SECONDS_BUCKETS))
    runtime_name: str = ""
    runtime_version: str = ""


@dataclass(frozen=True, slots=True)
class AgentCounters:
    scrape_failures: Mapping[ScrapeFailure, int] = field(default_factory=dict)
    scrape_seconds: Histogram = field(
        default_factory=lambda: Histogram.empty(SCRAPE_SECONDS_BUCKETS)
    )
    parse_errors_total: int = 0  # malformed lines skipped, over all scrapes
    sandboxes_seen_total: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    started_at: float
    scan_done: bool
    sandboxes: Mapping[str, SandboxView]  # sorted by sandbox id
    cri: CriStatus
    counters: AgentCounters
    # Changes when a sandbox comes or goes, gains or loses data, or is relabelled: what readers
    # that reuse output across versions must never lag behind on.
    layout: int = 0


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Reader(Protocol[T_co]):
    """What readers get of a board: the current value and a way to wait for the next."""

    @property
    def current(self) -> T_co: ...

    async def wait_newer(self, seen: object) -> T_co: ...


class Board(Generic[T]):
    """A one-slot publication point: one writer replaces the value, any reader takes it."""

    def __init__(self, initial: T) -> None:
        self._value = initial
        self._changed = trio.Event()

    @property
    def current(self) -> T:
        return self._value

    def publish(self, value: T) -> None:
        self._value = value
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_newer(self, seen: object) -> T:
        """Return the current value as soon as it is not `seen` (at once if it already is not)."""
        while self._value is seen:
            await self._changed.wait()
        return self._value
