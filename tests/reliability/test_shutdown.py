"""SIGTERM while scrapers and websocket clients are busy and shims hang: a clean exit within
the documented bound."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import open_fleet
from pulse.sim.shim import Behaviour
from tests.reliability.support import agent_process

SHUTDOWN_BOUND = 2.0  # README: "exit 0 within 2 s"
# The bound is the agent's cancel deadline; the interpreter's exit after it (flushing, thread
# joins) is given this much on top, which a hang would still exceed by far.
EXIT_SLACK = 1.0


async def scrape_forever(url: str, counts: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while True:
            try:
                await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
                counts.append(1)
            except httpx.TransportError:
                await trio.sleep(0.01)  # the agent is going away: that is the point


async def watch_forever(ws_url: str, counts: list[int]) -> None:
    try:
        async with open_websocket_url(ws_url) as ws:
            while True:
                await ws.get_message()
                counts.append(1)
    except (ConnectionClosed, HandshakeError, OSError):
        await trio.sleep_forever()


async def test_sigterm_under_load_ends_cleanly_within_the_bound(sim_dir: Path) -> None:
    with SimulatedCri(sim_dir / "cri.sock") as cri:
        cri.set_delay(0.5)  # a CRI call is in flight at any moment
        async with open_fleet(sim_dir, cri=cri, seed=31) as fleet:
            for index in range(24):
                await fleet.add(behaviour=Behaviour.HANG if index % 4 == 0 else Behaviour.HEALTHY)
            extra = (
                "--metrics-interval-secs=0.5",
                "--shim-timeout=30",
                "--cri-sync-interval-secs=0.5",
            )
            async with agent_process(
                fleet.roots, cri.socket_path, sim_dir / "agent.log", *extra
            ) as agent:
                ws_url = "ws" + agent.url.removeprefix("http") + "/ws"
                scrapes: list[int] = []
                messages: list[int] = []
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(scrape_forever, agent.url, scrapes)
                    for _ in range(3):
                        nursery.start_soon(watch_forever, ws_url, messages)
                    with trio.fail_after(10):
                        while len(scrapes) < 20 or len(messages) < 10:  # noqa: ASYNC110
                            await trio.sleep(0.05)
                    agent.process.send_signal(signal.SIGTERM)
                    started = trio.current_time()
                    with trio.fail_after(10):
                        returncode = await agent.process.wait()
                    elapsed = trio.current_time() - started
                    nursery.cancel_scope.cancel()
                log = agent.log()
    assert returncode == 0, log
    assert elapsed < SHUTDOWN_BOUND + EXIT_SLACK, f"exit took {elapsed:.2f}s"
    assert "shutting down" in log
    assert "Traceback" not in log, log
