"""Collector scheduling and the supervisor's task ownership, on Trio's mock clock."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from pulse.actors.collector import (
    JITTER,
    SOCKET_RETRY_FIRST,
    SOCKET_RETRY_MAX,
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
from pulse.sim.shim import SimulatedShim

SID = "3" * 64
SETTINGS = CollectorSettings(interval=60.0, timeout=3.0, max_body=1 << 24)


def _shim(directory: Path) -> SimulatedShim:
    guest = SimulatedGuest(SID, Flavour.GO, seed=3)
    directory.mkdir(parents=True, exist_ok=True)
    return SimulatedShim(directory / "shim-monitor.sock", lambda: guest.render(1.8e9))


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
        nursery.cancel_scope.cancel()
