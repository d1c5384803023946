"""Collector scheduling and the supervisor's task ownership, on Trio's mock clock."""

from __future__ import annotations

import gc
import itertools
import math
import random
import warnings
from pathlib import Path

import pytest
import trio
import trio.testing

from pulse.actors.collector import (
    JITTER,
    SOCKET_RETRY_FIRST,
    SOCKET_RETRY_MAX,
    WHOLE_BODY_CHECK_EVERY,
    CollectorSettings,
    run_collector,
    run_supervisor,
)
from pulse.model import (
    CacheMessage,
    ScrapeFailed,
    ScrapeFailure,
    ScrapeSucceeded,
    StartCollecting,
    StopCollecting,
    SupervisorMessage,
)
from pulse.sim.bodies import Flavour, SimulatedGuest
from pulse.sim.shim import Behaviour, SimulatedShim

SID = "3" * 64
SETTINGS = CollectorSettings(interval=60.0, timeout=3.0, max_body=1 << 24)


def _shim(directory: Path, suffix: bytes = b"") -> SimulatedShim:
    guest = SimulatedGuest(SID, Flavour.GO, seed=3)
    directory.mkdir(parents=True, exist_ok=True)
    return SimulatedShim(directory / "shim-monitor.sock", lambda: guest.render(1.8e9) + suffix)


async def _collections(
    shim: SimulatedShim, settings: CollectorSettings, count: int
) -> list[tuple[float, ScrapeSucceeded]]:
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    results: list[tuple[float, ScrapeSucceeded]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(shim.serve)
        nursery.start_soon(
            run_collector, SID, 1, shim.socket_path, settings, send, random.Random(2)
        )
        for _ in range(count):
            message = await inbox.receive()
            assert isinstance(message, ScrapeSucceeded)
            results.append((trio.current_time(), message))
        nursery.cancel_scope.cancel()
    return results


async def test_first_collection_at_once_then_every_interval_with_jitter(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim(sim_dir / SID)
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(shim.serve)
        start = trio.current_time()
        nursery.start_soon(
            run_collector, SID, 7, shim.socket_path, SETTINGS, send, random.Random(1)
        )
        for _ in range(6):
            message = await inbox.receive()
            assert isinstance(message, ScrapeSucceeded) and message.generation == 7
            times.append(trio.current_time() - start)
        nursery.cancel_scope.cancel()
    assert times[0] == pytest.approx(0, abs=1e-6)
    assert 0 <= times[1] < SETTINGS.interval  # a random phase spreads sandboxes apart
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[1:])]
    for gap in gaps:
        assert SETTINGS.interval * (1 - JITTER) <= gap <= SETTINGS.interval * (1 + JITTER)
    assert len({round(gap, 6) for gap in gaps}) > 1  # jittered, not a fixed period


async def test_missing_socket_is_retried_with_backoff_and_reported_once(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim(sim_dir / SID)  # directory exists, socket not yet
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_collector, SID, 1, shim.socket_path, SETTINGS, send, random.Random(1)
        )
        first = await inbox.receive()
        assert isinstance(first, ScrapeFailed) and first.reason is ScrapeFailure.NO_SOCKET
        await trio.sleep(10)
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()  # retried all along, reported once
        await nursery.start(shim.serve)
        appeared = trio.current_time()
        message = await inbox.receive()
        assert isinstance(message, ScrapeSucceeded)
        # Backoff is capped, so the shim is found within the cap of appearing.
        assert trio.current_time() - appeared <= SOCKET_RETRY_MAX
        nursery.cancel_scope.cancel()
    assert SOCKET_RETRY_FIRST < SOCKET_RETRY_MAX


async def test_supervisor_cancels_collectors_it_is_told_to_stop(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim(sim_dir / SID)
    to_cache, inbox = trio.open_memory_channel[CacheMessage](10)
    commands, command_inbox = trio.open_memory_channel[SupervisorMessage](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(shim.serve)
        await nursery.start(run_supervisor, SETTINGS, command_inbox, to_cache, 1)
        await commands.send(StartCollecting(SID, shim.socket_path, 1))
        assert isinstance(await inbox.receive(), ScrapeSucceeded)
        # A restart replaces the collector: only the new generation reports from then on.
        await commands.send(StartCollecting(SID, shim.socket_path, 2))
        message = await inbox.receive()
        assert isinstance(message, ScrapeSucceeded) and message.generation == 2
        await commands.send(StopCollecting(SID))
        await trio.sleep(10 * SETTINGS.interval)
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()
        assert shim.requests == 2
        # Each collector's connection went with it.
        assert (shim.connections, shim.open_connections) == (2, 0)
        nursery.cancel_scope.cancel()


async def test_whole_body_is_checked_at_the_second_collection_then_every_few_minutes(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = CollectorSettings(interval=WHOLE_BODY_CHECK_EVERY / 6, timeout=3.0, max_body=1 << 24)
    results = await _collections(_shim(sim_dir / SID), settings, 20)
    whole = [message.digest.whole for _, message in results]
    assert whole[:2] == [False, True]  # found sandboxes show up sooner; checked one cycle on
    checks = [at for at, message in results if message.digest.whole]
    assert len(checks) >= 3 and whole.count(False) >= 14
    for earlier, later in itertools.pairwise(checks):
        assert later - earlier >= WHOLE_BODY_CHECK_EVERY
        assert later - earlier <= WHOLE_BODY_CHECK_EVERY + settings.interval * (1 + JITTER)
    # Either way the conversion gets the same figures.
    partial = next(message for _, message in results if not message.digest.whole)
    assert partial.digest.guest == results[1][1].digest.guest
    assert all(message.digest.malformed_lines == 0 for _, message in results)


async def test_collections_after_the_whole_check_read_with_the_layout_made_after_it(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = CollectorSettings(interval=10.0, timeout=3.0, max_body=1 << 24)
    results = await _collections(_shim(sim_dir / SID), settings, 6)
    digests = [message.digest for _, message in results]
    assert [digest.whole for digest in digests] == [False, True, False, False, False, False]
    # Made at the collection after the whole check, then read with by each one after it.
    assert digests[0].layout is None and digests[1].layout is None
    made = digests[2].layout
    assert made is not None and all(digest.layout is made for digest in digests[3:])
    assert all(digest.guest == digests[0].guest for digest in digests)


async def test_a_body_with_malformed_lines_is_checked_whole_at_every_collection(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = CollectorSettings(interval=10.0, timeout=3.0, max_body=1 << 24)
    broken = b"go_goroutines{this is not a sample\n"
    results = await _collections(_shim(sim_dir / SID, broken), settings, 8)
    assert [message.digest.whole for _, message in results] == [False] + [True] * 7
    assert all(message.digest.malformed_lines == 1 for _, message in results[1:])
    assert results[1][1].digest.first_error is not None


def _shim_breaking(sim_dir: Path, line_start: bytes, runs: list[int]) -> SimulatedShim:
    """A shim whose body alternates, run by run, between good and one with the line that
    starts with `line_start` broken (its label set left unterminated)."""
    good = SimulatedGuest(SID, Flavour.GO, seed=3).render(1.8e9)
    assert line_start in good
    broken = good.replace(line_start, line_start.replace(b'"} ', b"} "))
    bodies = iter(
        body for index, run in enumerate(runs) for body in [(good, broken)[index % 2]] * run
    )
    (sim_dir / SID).mkdir(parents=True)
    return SimulatedShim(sim_dir / SID / "shim-monitor.sock", lambda: next(bodies))


async def test_a_read_line_that_breaks_between_whole_checks_is_counted_at_once(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim_breaking(sim_dir, b'kata_guest_meminfo{item="mem_free"} ', [4, 2, 2])
    settings = CollectorSettings(interval=10.0, timeout=3.0, max_body=1 << 24)
    results = [message for _, message in await _collections(shim, settings, 8)]
    # Well within WHOLE_BODY_CHECK_EVERY: the unvalidated reading missed mem_free, so the
    # body was validated whole at once, and at every collection while it stayed broken.
    assert [m.digest.whole for m in results] == [False, True, False, False, True, True, True, False]
    assert [m.digest.malformed_lines for m in results] == [0, 0, 0, 0, 1, 1, 0, 0]
    assert all("mem_free" in m.digest.guest.meminfo for m in results[:4] + results[6:])
    assert all("mem_free" not in m.digest.guest.meminfo for m in results[4:6])


async def test_an_unread_line_that_breaks_waits_for_the_next_whole_check(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim_breaking(sim_dir, b'kata_guest_vm_stat{item="nr_free_pages"} ', [2, 6])
    interval = WHOLE_BODY_CHECK_EVERY / 4
    settings = CollectorSettings(interval=interval, timeout=3.0, max_body=1 << 24)
    results = [message for _, message in await _collections(shim, settings, 8)]
    whole = [m.digest.whole for m in results]
    # Read without validation (the conversion's figures are all there) until the whole check
    # comes round, which counts the error; from then on every collection is validated.
    assert whole[:4] == [False, True, False, False]
    first_check = whole.index(True, 2)
    assert all(whole[first_check:])
    assert [m.digest.malformed_lines for m in results[:first_check]] == [0] * first_check
    assert all(m.digest.malformed_lines == 1 for m in results[first_check:])
    assert all(m.digest.guest == results[0].digest.guest for m in results)


async def test_collections_share_one_connection_closed_when_the_collector_stops(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim(sim_dir / SID)
    settings = CollectorSettings(interval=10.0, timeout=3.0, max_body=1 << 24)
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(shim.serve)
        collector_scope = trio.CancelScope()

        async def collector() -> None:
            with collector_scope:
                await run_collector(SID, 1, shim.socket_path, settings, send, random.Random(2))

        nursery.start_soon(collector)
        for _ in range(5):
            assert isinstance(await inbox.receive(), ScrapeSucceeded)
        assert (shim.connections, shim.requests, shim.open_connections) == (1, 5, 1)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", ResourceWarning)
            collector_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
        assert shim.open_connections == 0  # the shim saw the collector's close
        # Closed by the collector itself, not left for the garbage collector to find.
        assert not [w for w in warned if issubclass(w.category, ResourceWarning)]
        nursery.cancel_scope.cancel()


async def test_a_timed_out_collection_drops_its_connection_and_the_next_reconnects(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    shim = _shim(sim_dir / SID)
    shim.behaviour = Behaviour.HANG
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(shim.serve)
        nursery.start_soon(
            run_collector, SID, 1, shim.socket_path, SETTINGS, send, random.Random(2)
        )
        timed_out = await inbox.receive()
        assert isinstance(timed_out, ScrapeFailed)
        assert timed_out.reason is ScrapeFailure.TIMEOUT
        shim.behaviour = Behaviour.HEALTHY
        assert isinstance(await inbox.receive(), ScrapeSucceeded)
        assert (shim.connections, shim.requests) == (2, 2)
        nursery.cancel_scope.cancel()


async def test_a_shim_restarted_between_collections_is_reached_on_a_new_connection(
    sim_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The old shim's close ends the kept connection; the restart is not a failed scrape."""
    first, second = _shim(sim_dir / SID), _shim(sim_dir / SID)
    send, inbox = trio.open_memory_channel[CacheMessage](10)
    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()

        async def serve_first(task_status: trio.TaskStatus[None]) -> None:
            with first_scope:
                await first.serve(task_status=task_status)

        await nursery.start(serve_first)
        nursery.start_soon(
            run_collector, SID, 1, first.socket_path, SETTINGS, send, random.Random(2)
        )
        assert isinstance(await inbox.receive(), ScrapeSucceeded)
        first_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()  # the first shim and its socket are gone
        assert first.open_connections == 0 and not first.socket_path.exists()
        # The shim binds its socket in a thread, during which time must not jump ahead.
        autojump_clock.autojump_threshold = math.inf
        await nursery.start(second.serve)
        autojump_clock.autojump_threshold = 0
        message = await inbox.receive()
        assert isinstance(message, ScrapeSucceeded), message
        assert (first.requests, second.requests, second.connections) == (1, 1, 1)
        nursery.cancel_scope.cancel()
