"""The syncer's timing under Trio's MockClock: start, debounce, period, backoff."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import pytest
import trio
import trio.testing

from pulse.cri.schedule import SyncTiming, debounce, next_backoff, sync_loop

TIMING = SyncTiming(
    interval=5.0, backoff_initial=0.5, backoff_cap=5.0, debounce_quiet=0.15, debounce_max=1.0
)


class Recorder:
    """A sync function whose outcome the test scripts; records when it ran."""

    def __init__(self, outcome: Callable[[int], bool] = lambda _: True) -> None:
        self.times: list[float] = []
        self.outcome = outcome

    async def __call__(self) -> bool:
        self.times.append(trio.current_time())
        return self.outcome(len(self.times))


def test_backoff_doubles_to_the_cap_and_never_gives_up() -> None:
    delays = []
    delay = None
    for _ in range(40):
        delay = next_backoff(delay, TIMING)
        delays.append(delay)
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert set(delays[4:]) == {5.0}


def test_timing_for_short_interval_keeps_every_wait_within_the_interval() -> None:
    timing = SyncTiming.for_interval(0.2)
    assert timing.backoff_cap == 0.2
    assert timing.backoff_initial <= 0.2
    assert timing.debounce_max <= 0.2


async def test_syncs_at_start_and_then_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder()
    start = trio.current_time()
    with trio.move_on_after(16):
        await sync_loop(sync, receive, TIMING)
    assert [t - start for t in sync.times] == pytest.approx([0, 5, 10, 15])
    del send


async def test_burst_of_nudges_costs_one_sync(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_loop, sync, receive, TIMING)
        await trio.sleep(1)
        # 100 new sandboxes within 50 ms; the cache owner drops nudges the channel cannot hold.
        for _ in range(100):
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(None)
            await trio.sleep(0.0005)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    relative = [t - start for t in sync.times]
    assert relative[0] == 0
    assert len(relative) == 2, relative  # the start sync and one for the whole burst
    burst_end = 1 + 100 * 0.0005
    assert burst_end + TIMING.debounce_quiet == pytest.approx(relative[1], abs=0.01)


async def test_endless_nudges_still_sync_within_the_max_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_loop, sync, receive, TIMING)
        await trio.sleep(1)
        first_nudge = trio.current_time()
        with trio.move_on_after(3.5):
            while True:  # a nudge every 100 ms: never quiet for 150 ms
                with contextlib.suppress(trio.WouldBlock):
                    send.send_nowait(None)
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    after_nudges = [t for t in sync.times if t >= first_nudge]
    assert after_nudges, "nudges never led to a sync"
    assert after_nudges[0] - first_nudge <= TIMING.debounce_max + 1e-6
    gaps = [b - a for a, b in itertools.pairwise(after_nudges)]
    assert all(gap <= TIMING.debounce_max + 0.1 + 1e-6 for gap in gaps), gaps


async def test_a_nudge_moves_the_next_periodic_sync(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_loop, sync, receive, TIMING)
        await trio.sleep(2)
        send.send_nowait(None)
        await trio.sleep(8)
        nursery.cancel_scope.cancel()
    relative = [round(t - start, 3) for t in sync.times]
    assert relative == [0, 2.15, 7.15]


async def test_failures_back_off_and_recovery_restores_the_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder(outcome=lambda attempt: attempt > 8)  # 8 failures, then the CRI is back
    start = trio.current_time()
    with trio.move_on_after(40):
        await sync_loop(sync, receive, TIMING)
    relative = [round(t - start, 3) for t in sync.times]
    # 0 fails; retries after 0.5, 1, 2, 4, 5, 5, 5 (capped); the 9th attempt succeeds.
    assert relative[:9] == [0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5, 22.5, 27.5]
    assert relative[9:] == [32.5, 37.5]
    del send


async def test_recovery_is_seen_within_one_interval(autojump_clock: trio.testing.MockClock) -> None:
    """However long the outage, the first attempt after the CRI returns is <= interval later."""
    back_at = 123.4
    start = trio.current_time()

    async def sync() -> bool:
        return trio.current_time() - start >= back_at

    calls: list[float] = []

    async def recording_sync() -> bool:
        calls.append(trio.current_time() - start)
        return await sync()

    send, receive = trio.open_memory_channel[None](1)
    with trio.move_on_after(back_at + 20):
        await sync_loop(recording_sync, receive, TIMING)
    first_success = next(t for t in calls if t >= back_at)
    assert first_success - back_at <= TIMING.interval
    del send


async def test_nudges_do_not_shorten_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[None](1)
    sync = Recorder(outcome=lambda _: False)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_loop, sync, receive, TIMING)
        for _ in range(60):
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(None)
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    relative = [round(t - start, 3) for t in sync.times]
    assert relative == [0, 0.5, 1.5, 3.5]


async def test_closed_nudge_channel_leaves_the_periodic_sync(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[None](1)
    await send.aclose()
    sync = Recorder()
    start = trio.current_time()
    with trio.move_on_after(11):
        await sync_loop(sync, receive, TIMING)
    assert [round(t - start, 3) for t in sync.times] == [0, 5, 10]


async def test_debounce_returns_after_quiet(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[None](10)
    for _ in range(5):
        send.send_nowait(None)
    start = trio.current_time()
    assert await debounce(receive, TIMING) is True
    assert trio.current_time() - start == pytest.approx(TIMING.debounce_quiet)
    await send.aclose()
    assert await debounce(receive, TIMING) is False
