"""The cache owner as a state machine: messages in, commands and snapshots out."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from pulse.actors.cache import BATCH_HOLD, PUBLISH_GAP, CacheOwner
from pulse.config import Config
from pulse.kept import KeptBody
from pulse.model import (
    CacheMessage,
    CriSnapshot,
    CriSynced,
    InitialScanDone,
    PodMeta,
    RuntimeKind,
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
from pulse.pipeline import digest_body
from pulse.sim.bodies import Flavour, SimulatedGuest
from pulse.snapshot import AgentCounters, Board, CriStatus, Snapshot

ROOT = Path("/run/vc/sbs")
SID = "1" * 64
OTHER = "2" * 64


@dataclass
class Harness:
    inbox: trio.MemorySendChannel[CacheMessage]
    commands: trio.MemoryReceiveChannel[SupervisorMessage]
    nudges: trio.MemoryReceiveChannel[None]
    board: Board[Snapshot]

    async def send(self, message: CacheMessage) -> Snapshot:
        seen = self.board.current
        await self.inbox.send(message)
        return await self.board.wait_newer(seen)

    def command(self) -> SupervisorMessage:
        return self.commands.receive_nowait()


@pytest.fixture
def config() -> Config:
    return Config(metrics_interval=10.0, shim_timeout=1.0)  # stale after 21 s


async def _harness(config: Config) -> AsyncIterator[Harness]:
    board = Board(Snapshot(0, 0.0, False, {}, CriStatus("x"), AgentCounters()))
    to_cache, inbox = trio.open_memory_channel[CacheMessage](100)
    to_supervisor, commands = trio.open_memory_channel[SupervisorMessage](100)
    nudge_send, nudges = trio.open_memory_channel[None](1)
    owner = CacheOwner(config, board, to_supervisor, nudge_send, time.time())
    owner.publish_initial()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner.run, inbox)
        yield Harness(to_cache, commands, nudges, board)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def harness(config: Config) -> AsyncIterator[Harness]:
    async for h in _harness(config):
        yield h


def success(sandbox_id: str, generation: int, at: float) -> ScrapeSucceeded:
    body = SimulatedGuest(sandbox_id, Flavour.GO, seed=1).render(at)
    return ScrapeSucceeded(sandbox_id, generation, at, 0.01, KeptBody.of(body), digest_body(body))


def failure(sandbox_id: str, generation: int, reason: ScrapeFailure) -> ScrapeFailed:
    return ScrapeFailed(sandbox_id, generation, time.time(), 0.01, reason, "detail")


async def test_appearing_sandbox_starts_a_collector_and_nudges_the_cri(harness: Harness) -> None:
    snapshot = await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    assert snapshot.sandboxes[SID].state is SandboxState.PENDING
    assert harness.command() == StartCollecting(SID, ROOT / SID / "shim-monitor.sock", 1)
    await harness.send(SandboxAppeared(OTHER, ROOT, RuntimeKind.GO))
    # Two appearances, one pending nudge: the one-slot channel conflates them.
    harness.nudges.receive_nowait()
    with pytest.raises(trio.WouldBlock):
        harness.nudges.receive_nowait()
    assert not (await harness.send(InitialScanDone())).sandboxes[SID].has_data
    assert harness.board.current.scan_done


async def test_results_of_a_replaced_collector_are_ignored(harness: Harness) -> None:
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    start = harness.command()
    assert isinstance(start, StartCollecting)
    await harness.send(SandboxGone(SID, ROOT))
    assert harness.command() == StopCollecting(SID)
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    restart = harness.command()
    assert isinstance(restart, StartCollecting) and restart.generation != start.generation
    # A late result of the first collector must not resurrect its data.
    await harness.inbox.send(success(SID, start.generation, time.time()))
    snapshot = await harness.send(failure(SID, restart.generation, ScrapeFailure.TIMEOUT))
    assert snapshot.sandboxes[SID].scrapes_total == 1
    assert not snapshot.sandboxes[SID].has_data


async def test_gone_sandbox_leaves_no_trace(harness: Harness) -> None:
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    await harness.send(success(SID, 1, time.time()))
    snapshot = await harness.send(SandboxGone(SID, ROOT))
    assert SID not in snapshot.sandboxes


async def test_last_good_data_survives_failures_until_stale(
    harness: Harness, autojump_clock: trio.testing.MockClock, config: Config
) -> None:
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    snapshot = await harness.send(success(SID, 1, time.time()))
    view = snapshot.sandboxes[SID]
    assert view.state is SandboxState.UP and view.cadvisor and view.has_data

    await trio.sleep(config.metrics_interval)
    snapshot = await harness.send(failure(SID, 1, ScrapeFailure.TIMEOUT))
    view = snapshot.sandboxes[SID]
    assert view.state is SandboxState.DEGRADED and view.has_data and view.cadvisor
    assert view.last_error_reason is ScrapeFailure.TIMEOUT
    assert snapshot.counters.scrape_failures[ScrapeFailure.TIMEOUT] == 1

    # No further message arrives (a hung collector), yet the data expires on time.
    started = trio.current_time()
    snapshot = await harness.board.wait_newer(snapshot)
    view = snapshot.sandboxes[SID]
    assert view.state is SandboxState.DOWN and not view.has_data and not view.cadvisor
    assert trio.current_time() - started == pytest.approx(config.stale_after - 10, abs=0.01)
    # The sandbox's own lines still say it is down.
    assert b" 0\n" in view.own["kata_pulse_sandbox_up"]


async def test_pod_metadata_relabels_the_sandbox_output(harness: Harness) -> None:
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    first = snapshot = await harness.send(success(SID, 1, time.time()))
    assert b'pod=""' in snapshot.sandboxes[SID].cadvisor["container_memory_working_set_bytes"]
    pod = PodMeta(SID, "web-1", "shop", "uid-1", runtime_handler="kata")
    snapshot = await harness.send(CriSynced(CriSnapshot({SID: pod}), time.time(), 0.01))
    view = snapshot.sandboxes[SID]
    assert view.pod == pod
    assert b'pod="web-1"' in view.cadvisor["container_memory_working_set_bytes"]
    # Re-rendered samples never reuse the collection's timestamp for a different value.
    before = _timestamp(first.sandboxes[SID].cadvisor["container_memory_working_set_bytes"])
    assert _timestamp(view.cadvisor["container_memory_working_set_bytes"]) > before
    assert b'namespace="shop"' in view.own["kata_pulse_sandbox_up"]
    assert snapshot.cri.up


def _timestamp(lines: bytes) -> int:
    return int(lines.split(b"\n")[0].rsplit(b" ", 1)[1])


async def test_excluded_runtime_handlers_are_never_scraped(config: Config) -> None:
    config = dataclasses.replace(config, exclude_runtime_handler=re.compile(r"^kata-qemu-rs$"))
    async for h in _harness(config):
        snapshot = await h.send(SandboxAppeared(SID, ROOT, RuntimeKind.RUST))
        snapshot = await h.send(SandboxAppeared(OTHER, ROOT, RuntimeKind.RUST))
        # Handler unknown: not scraped until the CRI says.
        assert snapshot.sandboxes[SID].state is SandboxState.AWAITING_CRI
        with pytest.raises(trio.WouldBlock):
            h.command()
        pods = {
            SID: PodMeta(SID, "a", "ns", "u1", runtime_handler="kata-qemu-rs"),
            OTHER: PodMeta(OTHER, "b", "ns", "u2", runtime_handler="kata-clh"),
        }
        snapshot = await h.send(CriSynced(CriSnapshot(pods), time.time(), 0.01))
        assert snapshot.sandboxes[SID].state is SandboxState.EXCLUDED
        assert snapshot.sandboxes[OTHER].state is SandboxState.PENDING
        command = h.command()
        assert isinstance(command, StartCollecting) and command.sandbox_id == OTHER
        with pytest.raises(trio.WouldBlock):
            h.command()


async def test_value_changes_are_published_at_most_every_gap_layout_changes_at_once(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await harness.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
    await harness.send(SandboxAppeared(OTHER, ROOT, RuntimeKind.GO))
    # Gaining data changes the layout: published at once, even right after another snapshot.
    first = await harness.send(success(SID, 1, 1_800_000_000.0))
    assert first.sandboxes[SID].has_data
    published_at = trio.current_time()
    # A new value within the gap waits; a second one joins it; no message is needed to flush.
    await harness.inbox.send(success(SID, 1, 1_800_000_010.0))
    await harness.inbox.send(success(SID, 1, 1_800_000_020.0))
    await trio.sleep(PUBLISH_GAP / 10)
    assert harness.board.current.version == first.version
    later = await harness.board.wait_newer(first)
    assert trio.current_time() - published_at == pytest.approx(PUBLISH_GAP)
    assert later.version == first.version + 1
    assert later.sandboxes[SID].last_success == 1_800_000_020.0
    # The other sandbox gaining data is a layout change again: no wait.
    sent_at = trio.current_time()
    snapshot = await harness.send(success(OTHER, 2, 1_800_000_030.0))
    assert snapshot.sandboxes[OTHER].has_data and trio.current_time() == sent_at


async def test_messages_during_a_pending_publication_are_taken_together_when_it_is_due(
    config: Config, autojump_clock: trio.testing.MockClock
) -> None:
    counter = _StepCounter()
    owner = _CostlyOwner(config, autojump_clock, 0.0, counter)
    owner.publish_initial()
    to_cache, inbox = trio.open_memory_channel[CacheMessage](100)
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.run, inbox)
            await to_cache.send(SandboxAppeared(SID, ROOT, RuntimeKind.GO))
            first = await owner.board.wait_newer(owner.board.current)
            start = owner.commands.receive_nowait()
            assert isinstance(start, StartCollecting)
            with_data = await _send_and_wait(owner, to_cache, success(SID, 1, 1_800_000_000.0))
            published_at = trio.current_time()
            # Value changes now wait for publish_due; they arrive 10 ms apart, then a new
            # sandbox, whose appearance is published as soon as the owner takes it.
            for index in range(3):
                await trio.sleep(PUBLISH_GAP / 5)
                await to_cache.send(success(SID, 1, 1_800_000_010.0 + index))
            await to_cache.send(SandboxAppeared(OTHER, ROOT, RuntimeKind.GO))
            sent_last = trio.current_time()
            later = await owner.board.wait_newer(with_data)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert first.version < with_data.version < later.version
    # The first value change woke the idle owner; the next three messages came while its
    # changes waited for publish_due and were all taken then, in one step of the owner.
    (woken_steps, woken_at), *together = owner.handled[-4:]
    assert woken_at == pytest.approx(published_at + PUBLISH_GAP / 5)
    assert len({steps for steps, _ in together}) == 1 and together[0][0] > woken_steps
    assert [at for _, at in together] == pytest.approx([published_at + PUBLISH_GAP] * 3)
    assert trio.current_time() - sent_last <= PUBLISH_GAP
    assert later.sandboxes[SID].last_success == 1_800_000_012.0 and OTHER in later.sandboxes


async def _send_and_wait(
    owner: _CostlyOwner, to_cache: trio.MemorySendChannel[CacheMessage], message: CacheMessage
) -> Snapshot:
    seen = owner.board.current
    await to_cache.send(message)
    return await owner.board.wait_newer(seen)


class _StepCounter(trio.abc.Instrument):
    """How many steps each task has begun: a task's step ends when it gives the loop up."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


class _CostlyOwner(CacheOwner):
    """Each message costs `cost` seconds of the mock clock; notes the owner's step count."""

    def __init__(
        self, config: Config, clock: trio.testing.MockClock, cost: float, counter: _StepCounter
    ) -> None:
        self.board = Board(Snapshot(0, 0.0, False, {}, CriStatus("x"), AgentCounters()))
        to_supervisor, self.commands = trio.open_memory_channel[SupervisorMessage](100)
        nudges, _ = trio.open_memory_channel[None](1)
        super().__init__(config, self.board, to_supervisor, nudges, time.time())
        self.clock, self.cost, self.counter = clock, cost, counter
        self.handled: list[tuple[int, float]] = []  # (the owner's step count, trio time)

    @property
    def steps_seen(self) -> list[int]:
        return [steps for steps, _ in self.handled]

    async def handle(self, message: CacheMessage) -> None:
        steps = self.counter.steps[trio.lowlevel.current_task()]
        self.handled.append((steps, trio.current_time()))
        self.clock.jump(self.cost)
        await super().handle(message)


# 0.6 of BATCH_HOLD a message, so that no rounding of the clock can move a yield.
@pytest.mark.parametrize("cost", [0.0, BATCH_HOLD * 0.6])
async def test_a_batch_gives_the_loop_up_only_once_it_has_held_it_for_batch_hold(
    config: Config, autojump_clock: trio.testing.MockClock, cost: float
) -> None:
    counter = _StepCounter()
    owner = _CostlyOwner(config, autojump_clock, cost, counter)
    owner.publish_initial()
    to_cache, inbox = trio.open_memory_channel[CacheMessage](100)
    for index in range(12):  # results of collectors the owner never started: ignored
        to_cache.send_nowait(failure(f"{index:064x}", 1, ScrapeFailure.TIMEOUT))
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.run, inbox)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert len(owner.steps_seen) == 12
    yields = owner.steps_seen[-1] - owner.steps_seen[0]
    if cost == 0:
        assert yields == 0  # cheap messages (the initial scan's): one batch, one step
    else:
        assert yields == 5  # two messages per BATCH_HOLD, then the loop is given up
