"""The cache owner: the one actor that owns the agent's state.

It receives every fact from the other actors as a message, decides what follows from it
(start or stop a collector, nudge the CRI syncer, render a sandbox's output), and publishes an
immutable Snapshot after each change. Nothing else writes any of this state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import trio

from pulse.actors.collector import SHIM_SOCKET
from pulse.channels import send_promptly
from pulse.config import Config
from pulse.logs import get_logger
from pulse.model import (
    CacheMessage,
    ContainerInfo,
    CriSnapshot,
    CriSynced,
    CriSyncFailed,
    InitialScanDone,
    PodMeta,
    SandboxAppeared,
    SandboxGone,
    SandboxState,
    ScrapeFailed,
    ScrapeFailure,
    ScrapeSucceeded,
    StartCollecting,
    StopCollecting,
    SupervisorMessage,
)
from pulse.pipeline import BodyDigest, Renderer, SandboxRendering
from pulse.selfmetrics import render_sandbox_own
from pulse.snapshot import (
    AgentCounters,
    Board,
    CriStatus,
    SandboxView,
    Snapshot,
)

log = get_logger("cache")

MAX_MESSAGES_PER_SNAPSHOT = 256
BATCH_HOLD = 0.002  # seconds a batch of messages may hold the event loop
# Value-only changes are published at most this often: at hundreds of sandboxes collections
# arrive ~100 times a second, and a snapshot per collection cost more than the collection's
# rendering. Nothing reading snapshots needs them fresher (/metrics reuses a body for up to
# a second). A change of layout (a sandbox found or gone, data gained or lost, relabelled) and
# the end of the initial scan (readiness) are published at once.
PUBLISH_GAP = 0.05


@dataclass(slots=True)
class _Entry:
    """Per-sandbox bookkeeping that only the cache owner sees (mutable, never shared)."""

    view: SandboxView
    generation: int = 0  # of the running collector; 0 while none runs
    success_clock: float | None = None  # trio clock of the last good scrape, for staleness
    digest: BodyDigest | None = None
    rendering: SandboxRendering | None = None


@dataclass(slots=True)
class _State:
    started_at: float
    cri: CriStatus
    entries: dict[str, _Entry] = field(default_factory=dict)
    pods: dict[str, PodMeta] = field(default_factory=dict)
    counters: AgentCounters = field(default_factory=AgentCounters)
    scan_done: bool = False
    cri_synced_once: bool = False
    version: int = 0
    generations: int = 0
    dirty: bool = False  # something changed since the last published snapshot
    layout: int = 0  # see Snapshot.layout
    layout_changed: bool = False
    publish_due: float = -math.inf  # trio clock: when value-only changes may be published
    urgent: bool = False  # a change readers must see at once (see PUBLISH_GAP)
    failing: set[str] = field(default_factory=set)  # sandboxes whose last scrape failed
    order: list[str] | None = None  # sandbox ids sorted, until one comes or goes


class CacheOwner:
    """Holds the state and turns messages into state changes, commands and snapshots."""

    def __init__(
        self,
        config: Config,
        board: Board[Snapshot],
        to_supervisor: trio.MemorySendChannel[SupervisorMessage],
        cri_nudges: trio.MemorySendChannel[None],
        started_at: float,
    ) -> None:
        self._config = config
        self._board = board
        self._to_supervisor = to_supervisor
        self._cri_nudges = cri_nudges
        self._renderer = Renderer(config)
        self._state = _State(started_at=started_at, cri=CriStatus(str(config.runtime_endpoint)))

    def _update(self, entry: _Entry, **changes: object) -> None:
        """Replace the entry's view; its kata_pulse_sandbox_* lines follow every change."""
        view = entry.view.with_changes(**changes)
        entry.view = view.with_changes(own=render_sandbox_own(view))

    # --- the actor loop ---

    async def run(self, inbox: trio.MemoryReceiveChannel[CacheMessage]) -> None:
        while True:
            message: CacheMessage | None = None
            if self._state.dirty:
                # Unpublished value changes go out at publish_due, and whatever comes before
                # then would only join them: the messages are taken together at that time, not
                # with a wake-up each (at 500 sandboxes that is 100 wake-ups a second). Any
                # change to publish at once was published when it was handled, so nothing
                # urgent waits here longer than PUBLISH_GAP.
                await trio.sleep_until(min(self._next_expiry(), self._state.publish_due))
                try:
                    message = inbox.receive_nowait()
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    return
            else:
                with trio.move_on_at(self._next_expiry()):
                    try:
                        message = await inbox.receive()
                    except trio.EndOfChannel:
                        return
            if message is not None:
                await self.handle(message)
                # Whatever else is already queued joins this snapshot: a burst of N messages
                # (500 sandboxes at start) costs a few snapshots, not N copies of N views.
                held_since = trio.current_time()
                for _ in range(MAX_MESSAGES_PER_SNAPSHOT - 1):
                    # The loop is given up once a batch has held it for BATCH_HOLD (a
                    # conversion takes up to half a millisecond), so that a burst does not hold
                    # responses in flight; not after every message, or the initial scan's
                    # cheap ones would wait a round of every collector each (readiness late).
                    if trio.current_time() - held_since >= BATCH_HOLD:
                        await trio.lowlevel.checkpoint()
                        held_since = trio.current_time()
                    try:
                        await self.handle(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            self._expire_stale()
            state = self._state
            if state.layout_changed or state.urgent or trio.current_time() >= state.publish_due:
                self._publish_if_changed()

    async def handle(self, message: CacheMessage) -> None:
        if isinstance(message, ScrapeSucceeded):
            self._scrape_succeeded(message)
        elif isinstance(message, ScrapeFailed):
            self._scrape_failed(message)
        elif isinstance(message, SandboxAppeared):
            await self._appeared(message)
        elif isinstance(message, SandboxGone):
            await self._gone(message)
        elif isinstance(message, CriSynced):
            await self._cri_synced(message)
        elif isinstance(message, CriSyncFailed):
            self._cri_failed(message)
        elif isinstance(message, InitialScanDone):
            self._state.scan_done = True  # readiness: published at once
            self._state.dirty = self._state.urgent = True

    # --- sandboxes coming and going ---

    def _exclusion(self, sandbox_id: str) -> SandboxState | None:
        """EXCLUDED or AWAITING_CRI when the sandbox must not be scraped (yet), else None."""
        pattern = self._config.exclude_runtime_handler
        if pattern is None:
            return None
        pod = self._state.pods.get(sandbox_id)
        if pod is None:
            # Scraping some shims kills them (kata #13708): never scrape before we know better.
            return SandboxState.AWAITING_CRI
        if pattern.search(pod.runtime_handler):
            return SandboxState.EXCLUDED
        return None

    async def _appeared(self, message: SandboxAppeared) -> None:
        state = self._state
        entry = state.entries.get(message.sandbox_id)
        if entry is None:
            view = SandboxView(
                sandbox_id=message.sandbox_id,
                root=message.root,
                kind=message.kind,
                state=SandboxState.PENDING,
                discovered_at=time.time(),
                pod=state.pods.get(message.sandbox_id),
            )
            entry = _Entry(view.with_changes(own=render_sandbox_own(view)))
            state.entries[message.sandbox_id] = entry
            state.order = None
            state.counters = replace(
                state.counters, sandboxes_seen_total=state.counters.sandboxes_seen_total + 1
            )
            state.layout_changed = True
            state.dirty = True
            log.info(
                "sandbox discovered",
                sandbox_id=message.sandbox_id,
                root=message.root,
                runtime=message.kind,
            )
            self._nudge_cri()
        else:
            # The same sandbox now lives under another root: collect from there.
            self._update(entry, root=message.root, kind=message.kind)
            state.dirty = True
        await self._apply_collection_policy(entry, restart=True)

    async def _gone(self, message: SandboxGone) -> None:
        entry = self._state.entries.pop(message.sandbox_id, None)
        if entry is None:
            return
        self._state.order = None
        self._state.failing.discard(message.sandbox_id)
        if entry.generation:
            await send_promptly(self._to_supervisor, StopCollecting(message.sandbox_id))
        self._state.layout_changed = True
        self._state.dirty = True
        log.info("sandbox removed", sandbox_id=message.sandbox_id, root=message.root)

    async def _apply_collection_policy(self, entry: _Entry, *, restart: bool = False) -> None:
        """Start or stop the sandbox's collector so that it matches the exclusion policy."""
        sandbox_id = entry.view.sandbox_id
        blocked = self._exclusion(sandbox_id)
        if blocked is not None:
            if entry.generation:
                await send_promptly(self._to_supervisor, StopCollecting(sandbox_id))
                entry.generation = 0
                self._drop_data(entry)
            if entry.view.state is not blocked:
                if blocked is SandboxState.EXCLUDED:
                    log.info(
                        "sandbox excluded from scraping",
                        sandbox_id=sandbox_id,
                        runtime_handler=entry.view.pod.runtime_handler if entry.view.pod else "",
                    )
                self._update(entry, state=blocked)
            return
        if entry.generation and not restart:
            return
        self._state.generations += 1
        entry.generation = self._state.generations
        if entry.view.state in (SandboxState.EXCLUDED, SandboxState.AWAITING_CRI):
            self._update(entry, state=SandboxState.PENDING)
        socket_path = Path(entry.view.root, sandbox_id, SHIM_SOCKET)
        await send_promptly(
            self._to_supervisor, StartCollecting(sandbox_id, socket_path, entry.generation)
        )

    def _nudge_cri(self) -> None:
        try:
            self._cri_nudges.send_nowait(None)
        except trio.WouldBlock:
            pass  # a nudge is already pending: the syncer will see this sandbox too
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # --- scrape results ---

    def _current_entry(self, sandbox_id: str, generation: int) -> _Entry | None:
        entry = self._state.entries.get(sandbox_id)
        if entry is None or entry.generation != generation:
            return None  # a result of a collector that was stopped after it sent it
        return entry

    def _scrape_succeeded(self, message: ScrapeSucceeded) -> None:
        entry = self._current_entry(message.sandbox_id, message.generation)
        if entry is None:
            return
        counters = self._state.counters
        self._state.counters = replace(
            counters,
            scrape_seconds=counters.scrape_seconds.observe(message.duration),
            parse_errors_total=counters.parse_errors_total + message.digest.malformed_lines,
        )
        if message.sandbox_id in self._state.failing:
            self._state.failing.discard(message.sandbox_id)
            log.info("sandbox scrapes recovered", sandbox_id=message.sandbox_id)
        if message.digest.malformed_lines:
            log.debug(
                "malformed lines skipped",
                sandbox_id=message.sandbox_id,
                count=message.digest.malformed_lines,
                first=message.digest.first_error,
            )
        if not entry.view.has_data:
            self._state.layout_changed = True
        entry.digest = message.digest
        entry.success_clock = trio.current_time()
        pod = self._state.pods.get(message.sandbox_id)
        rendering = self._renderer.render(
            message.sandbox_id, pod, message.wall_time, message.digest, entry.rendering
        )
        if rendering.cpu_unit and (entry.rendering is None or not entry.rendering.cpu_unit):
            log.info("guest cpu time unit", sandbox_id=message.sandbox_id, unit=rendering.cpu_unit)
        entry.rendering = rendering
        self._update(
            entry,
            pod=pod,
            state=SandboxState.UP,
            last_success=message.wall_time,
            last_attempt=message.wall_time,
            last_duration=message.duration,
            last_error=None,
            last_error_reason=None,
            scrapes_total=entry.view.scrapes_total + 1,
            malformed_lines=message.digest.malformed_lines,
            raw_body=message.body,
            **rendering.view_changes(),
        )
        self._state.dirty = True

    def _scrape_failed(self, message: ScrapeFailed) -> None:
        entry = self._current_entry(message.sandbox_id, message.generation)
        if entry is None:
            return
        counters = self._state.counters
        failures = dict(counters.scrape_failures)
        failures[message.reason] = failures.get(message.reason, 0) + 1
        self._state.counters = replace(
            counters,
            scrape_failures=failures,
            scrape_seconds=counters.scrape_seconds.observe(message.duration),
        )
        if message.sandbox_id not in self._state.failing:
            # One line per transition into failure; the sandbox's state carries the rest.
            # No socket, or nobody listening on it, is a shim starting or stopping: routine,
            # and its state shows it. Should it last, the stale-data drop warns once.
            quiet = message.reason in (ScrapeFailure.NO_SOCKET, ScrapeFailure.CONNECT)
            (log.debug if quiet else log.warning)(
                "sandbox scrape failed",
                sandbox_id=message.sandbox_id,
                reason=message.reason,
                error=message.detail,
            )
        self._state.failing.add(message.sandbox_id)
        fresh = entry.success_clock is not None and not self._is_stale(entry.success_clock)
        self._update(
            entry,
            state=SandboxState.DEGRADED if fresh else SandboxState.DOWN,
            last_attempt=message.wall_time,
            last_duration=message.duration,
            last_error=message.detail,
            last_error_reason=message.reason,
            scrapes_total=entry.view.scrapes_total + 1,
            failures_total=entry.view.failures_total + 1,
        )
        if not fresh:
            self._drop_data(entry)
        self._state.dirty = True

    # --- staleness ---

    def _is_stale(self, success_clock: float) -> bool:
        # The same expression as the deadline in _next_expiry, so waking at it always expires.
        return trio.current_time() >= success_clock + self._config.stale_after

    def _failing_entries(self) -> list[_Entry]:
        entries = self._state.entries
        return [entries[sandbox_id] for sandbox_id in self._state.failing]

    def _next_expiry(self) -> float:
        deadlines = [
            entry.success_clock + self._config.stale_after
            for entry in self._failing_entries()
            if entry.success_clock is not None and entry.view.has_data
        ]
        return min(deadlines, default=math.inf)

    def _expire_stale(self) -> None:
        for entry in self._failing_entries():
            if (
                entry.view.has_data
                and entry.success_clock is not None
                and self._is_stale(entry.success_clock)
            ):
                log.warning(
                    "dropping stale data of a failing sandbox",
                    sandbox_id=entry.view.sandbox_id,
                    age=round(trio.current_time() - entry.success_clock, 3),
                    reason=entry.view.last_error_reason,
                    error=entry.view.last_error,
                )
                self._update(entry, state=SandboxState.DOWN)
                self._drop_data(entry)
                self._state.dirty = True

    def _drop_data(self, entry: _Entry) -> None:
        if entry.view.has_data:
            self._state.layout_changed = True
        entry.digest = None
        self._update(entry, raw_body=None, cadvisor={})

    # --- CRI ---

    async def _cri_synced(self, message: CriSynced) -> None:
        state = self._state
        snapshot: CriSnapshot = message.snapshot
        cri = state.cri
        state.cri = replace(
            cri,
            up=True,
            last_success=message.wall_time,
            last_error=None,
            syncs_total=cri.syncs_total + 1,
            sync_seconds=cri.sync_seconds.observe(message.duration),
            runtime_name=snapshot.runtime_name,
            runtime_version=snapshot.runtime_version,
        )
        state.cri_synced_once = True
        state.pods = dict(snapshot.pods)
        for sandbox_id, entry in state.entries.items():
            pod = state.pods.get(sandbox_id)
            if _identity(pod) == _identity(entry.view.pod):
                # Only the container stats moved: the next collection renders them, together
                # with the VM's figures they are subtracted from.
                continue
            self._update(entry, pod=pod)
            state.layout_changed = True
            if entry.digest is not None and entry.rendering is not None:
                # At least a millisecond (the exposition's resolution) after the collection.
                stamp = max(time.time(), (entry.view.last_success or 0.0) + 0.001)
                entry.rendering = self._renderer.rerender(
                    entry.view, entry.digest, entry.rendering, stamp
                )
                self._update(entry, **entry.rendering.view_changes())
            await self._apply_collection_policy(entry)
            state.dirty = True

    def _cri_failed(self, message: CriSyncFailed) -> None:
        cri = self._state.cri
        self._state.cri = replace(
            cri,
            up=False,
            last_error=message.error,
            sync_errors_total=cri.sync_errors_total + 1,
            sync_seconds=cri.sync_seconds.observe(message.duration),
        )
        self._state.dirty = True

    # --- publication ---

    def _publish_if_changed(self) -> None:
        state = self._state
        if not state.dirty and state.version:
            return
        state.version += 1
        if state.layout_changed:
            state.layout += 1
            state.layout_changed = False
        state.publish_due = trio.current_time() + PUBLISH_GAP
        state.urgent = False
        if state.order is None:
            state.order = sorted(state.entries)
        entries = state.entries
        self._board.publish(
            Snapshot(
                version=state.version,
                started_at=state.started_at,
                scan_done=state.scan_done,
                sandboxes={sid: entries[sid].view for sid in state.order},
                cri=state.cri,
                counters=state.counters,
                layout=state.layout,
            )
        )
        state.dirty = False

    def publish_initial(self) -> None:
        self._publish_if_changed()


# Every field but the container stats, which change on every sync. Read from the classes so
# that a field added to them counts without anyone remembering this place.
_POD_IDENTITY = tuple(f.name for f in fields(PodMeta) if f.name != "containers")
_CONTAINER_IDENTITY = tuple(f.name for f in fields(ContainerInfo) if f.name != "stats")


def _identity(pod: PodMeta | None) -> tuple[object, ...] | None:
    """What of a pod's metadata its output is labelled by: all of it but container stats.
    Compared for every sandbox at every CRI sync, so it builds tuples rather than copies."""
    if pod is None:
        return None
    containers = tuple(
        tuple(getattr(c, name) for name in _CONTAINER_IDENTITY) for c in pod.containers
    )
    return (*(getattr(pod, name) for name in _POD_IDENTITY), containers)
