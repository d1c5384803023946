"""When the CRI syncer syncs: at start, after a debounced nudge, periodically, and with backoff.

This is the syncer's timing alone, with the sync itself passed in, so it can be tested under
Trio's MockClock without any gRPC thread in the way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class SyncTiming:
    interval: float = 5.0  # between two syncs while the CRI answers
    backoff_initial: float = 0.5  # first retry after a failed sync
    backoff_cap: float = 5.0  # retries never wait longer, so recovery shows within one interval
    debounce_quiet: float = 0.15  # a nudge burst is over after this long without a nudge
    debounce_max: float = 1.0  # ...or this long after its first nudge, whichever is first

    @classmethod
    def for_interval(cls, interval: float) -> SyncTiming:
        return cls(
            interval=interval,
            backoff_initial=min(0.5, interval),
            backoff_cap=interval,
            debounce_quiet=min(0.15, interval),
            debounce_max=min(1.0, interval),
        )


def next_backoff(previous: float | None, timing: SyncTiming) -> float:
    """Doubling delays from backoff_initial, capped at backoff_cap; never gives up."""
    if previous is None:
        return timing.backoff_initial
    return min(previous * 2, timing.backoff_cap)


async def debounce(nudges: trio.MemoryReceiveChannel[None], timing: SyncTiming) -> bool:
    """Swallow a burst of nudges; return once it has been quiet, or the burst ran too long.

    Returns False when the nudge channel is closed (its sender is gone).
    """
    with trio.move_on_after(timing.debounce_max):
        while True:
            with trio.move_on_after(timing.debounce_quiet) as quiet:
                try:
                    await nudges.receive()
                except trio.EndOfChannel:
                    return False
            if quiet.cancelled_caught:
                break
    return True


async def sync_loop(
    sync: Callable[[], Awaitable[bool]],
    nudges: trio.MemoryReceiveChannel[None],
    timing: SyncTiming,
) -> None:
    """Run `sync` (True = success) forever on the schedule; returns only when cancelled.

    A nudge brings the next sync forward (after debouncing) while the CRI is healthy; while it
    fails, the backoff alone decides, so a stream of new sandboxes cannot hammer a sick runtime.
    """
    listening = True
    backoff: float | None = None
    next_sync = trio.current_time()
    while True:
        with trio.move_on_at(next_sync):
            if listening and backoff is None:
                try:
                    await nudges.receive()
                except trio.EndOfChannel:
                    listening = False
                    await trio.sleep_forever()
                # Leaving the block early brings the sync forward.
                listening = await debounce(nudges, timing)
            else:
                await trio.sleep_forever()
        if await sync():
            backoff = None
            next_sync = trio.current_time() + timing.interval
        else:
            backoff = next_backoff(backoff, timing)
            next_sync = trio.current_time() + backoff
