"""10,000 sandboxes come and go: afterwards the agent holds what it held before.

The agent runs in this process so its Trio tasks can be counted by walking the task tree;
descriptors and resident memory are this process's, so they include the simulated shims and
CRI as well. Those are created and removed by the test too, so a leak on either side shows.
Most cycles are bare sandbox directories (the agent still discovers each one, starts a
collector that finds no socket, and stops it when the directory goes); one in twenty has a real
shim that is scraped, and a pod in the simulated CRI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from pulse.agent import RunningAgent
from pulse.sim.bodies import Flavour
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimulatedFleet, open_fleet
from tests.helpers import agent_config, running_agent
from tests.reliability.support import open_fds, proc_status_kib

CYCLES = 10_000
BATCH = 250
WITH_SHIM_EVERY = 20  # one cycle in twenty runs a real shim
STEADY = 4  # sandboxes that live through the whole test
# "Back near the start": descriptors may differ by a few that Python, grpc or the kernel keep
# around; resident memory by what the allocators keep as free lists.
FD_TOLERANCE = 8
RSS_TOLERANCE_KIB = 24 * 1024
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
SANDBOX_ID = re.compile(r"[0-9a-f]{64}")


def task_count() -> int:
    """Every task in this Trio run, found by walking the task tree from the root."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def wait_for(agent: RunningAgent, condition: object) -> None:
    """Wait on the board (no polling) until `condition(snapshot)` holds."""
    assert callable(condition)
    with trio.fail_after(20):
        snapshot = agent.board.current
        while not condition(snapshot):
            snapshot = await agent.board.wait_newer(snapshot)


async def one_batch(fleet: SimulatedFleet, agent: RunningAgent, first_id: int) -> list[str]:
    """BATCH sandboxes appear, are seen (and the shimmed ones scraped), then all go away."""
    seen_before = agent.board.current.counters.sandboxes_seen_total
    bare: list[Path] = []
    shimmed: list[str] = []
    for n in range(first_id, first_id + BATCH):
        sandbox_id = f"{n:064x}"
        if n % WITH_SHIM_EVERY == 0:
            flavour = Flavour.RUST if n % (2 * WITH_SHIM_EVERY) else Flavour.GO
            shimmed.append((await fleet.add(flavour, sandbox_id=sandbox_id)).sandbox_id)
        else:
            root = fleet.rust_root if n % 2 else fleet.go_root
            directory = root / sandbox_id
            directory.mkdir()
            bare.append(directory)
    await wait_for(
        agent,
        lambda s: (
            s.counters.sandboxes_seen_total >= seen_before + BATCH
            and all(s.sandboxes[i].state.value == "up" for i in shimmed if i in s.sandboxes)
            and all(i in s.sandboxes for i in shimmed)
        ),
    )
    for sandbox_id in shimmed:
        fleet.remove(sandbox_id)
    for directory in bare:
        shutil.rmtree(directory)
    await wait_for(agent, lambda s: len(s.sandboxes) == STEADY)
    return [*shimmed, *(d.name for d in bare)]


async def outputs(client: httpx.AsyncClient, ws_url: str) -> str:
    """Everything the agent tells about sandboxes, as one text."""
    texts = [(await client.get(path)).text for path in ("/metrics", "/metrics/kata", "/sandboxes")]
    async with open_websocket_url(ws_url) as ws:
        with trio.fail_after(10):
            first = json.loads(await ws.get_message())
    assert first["type"] == "snapshot"
    texts.append(json.dumps(first))
    return "\n".join(texts)


async def settle(tasks_expected: int | None = None) -> int:
    """Let cancelled tasks finish and garbage be collected; the number of tasks then.

    A scrape or request in flight is a task for a moment, so the count is taken once it
    reaches `tasks_expected` (bounded: a leak never gets there and the test says so).
    """
    with trio.move_on_after(5):
        while tasks_expected is not None and task_count() > tasks_expected:  # noqa: ASYNC110
            await trio.sleep(0.01)
    for _ in range(10):
        await trio.sleep(0.01)
    gc.collect()
    # Hand freed heap back to the kernel, so that VmRSS measures what is still alive rather
    # than what glibc keeps cached from earlier tests in this process.
    _LIBC.malloc_trim(0)
    return task_count()


async def test_ten_thousand_sandboxes_come_and_go(sim_dir: Path) -> None:
    with SimulatedCri(sim_dir / "cri.sock") as cri:
        async with open_fleet(sim_dir, cri=cri, seed=21) as fleet:
            steady = [await fleet.add(Flavour.GO) for _ in range(STEADY)]
            config = agent_config(
                fleet, cri.socket_path, metrics_interval=5.0, cri_sync_interval=0.5
            )
            async with (
                running_agent(config) as agent,
                httpx.AsyncClient(base_url=agent.url, timeout=10) as client,
            ):
                ws_url = "ws" + agent.url.removeprefix("http") + "/ws"
                # A warm-up batch, so imports, caches and pools are at their working size.
                gone = await one_batch(fleet, agent, 1)
                await outputs(client, ws_url)
                tasks_before = await settle()
                fds_before = open_fds()
                rss_before = proc_status_kib("self", "VmRSS")

                # The long-lived stream client sees all of it, and must cost nothing after.
                async with open_websocket_url(ws_url) as watcher:

                    async def drain() -> None:
                        while True:
                            await watcher.get_message()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(drain)
                        for first in range(1 + BATCH, 1 + CYCLES, BATCH):
                            gone += await one_batch(fleet, agent, first)
                        nursery.cancel_scope.cancel()

                assert len(gone) == CYCLES
                seen = agent.board.current.counters.sandboxes_seen_total
                assert seen == CYCLES + STEADY
                told = await outputs(client, ws_url)
                tasks_after = await settle(tasks_before)
                fds_after = open_fds()
                rss_after = proc_status_kib("self", "VmRSS")

    assert not set(SANDBOX_ID.findall(told)) & set(gone)
    for box in steady:
        assert box.sandbox_id in told
    assert tasks_after == tasks_before
    assert abs(fds_after - fds_before) <= FD_TOLERANCE, (fds_before, fds_after)
    assert rss_after - rss_before < RSS_TOLERANCE_KIB, (rss_before, rss_after)
    assert not os.listdir(fleet.go_root) or all(
        name in {b.sandbox_id for b in steady} for name in os.listdir(fleet.go_root)
    )
