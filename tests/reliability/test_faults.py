"""200 sandboxes, 40% of them misbehaving, and a CRI that is never healthy: the agent keeps
serving every healthy sandbox, promptly, in bounded memory, and names what is wrong.

The agent runs as its own process (its memory is measured alone); the shims and the CRI are
real servers on real Unix sockets in the test process.
"""

from __future__ import annotations

import collections
import functools
import re
import time
from pathlib import Path

import httpx
import trio

from pulse.sim.bodies import Flavour
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimSandbox, SimulatedFleet, open_fleet
from pulse.sim.shim import HUGE_BODY_BYTES, Behaviour
from tests.helpers import eventually
from tests.reliability.support import agent_process, proc_status_kib, served_sandboxes

SANDBOXES = 200
# 10% hang, 10% trickle, 10% bad bodies, 10% vanish mid-request; the rest are healthy.
FAULTS: dict[Behaviour, int] = {
    Behaviour.HANG: 20,
    Behaviour.TRICKLE: 20,
    Behaviour.GARBAGE: 7,
    Behaviour.TRUNCATED: 7,
    Behaviour.HUGE: 6,
    Behaviour.VANISH: 10,  # the connection closes halfway through the body
}
REMOVED_MID_REQUEST = 10  # the other half of "vanish": the whole sandbox goes while asked
REASONS = {
    Behaviour.HANG: "timeout",
    Behaviour.TRICKLE: "timeout",
    Behaviour.GARBAGE: "unparseable",
    Behaviour.TRUNCATED: "protocol",
    Behaviour.HUGE: "oversize",
    Behaviour.VANISH: "protocol",
}
INTERVAL = 3.0
SHIM_TIMEOUT = 4.0  # hung shims hold their request this long, twice the latency bound below
LATENCY_BOUND = 2.0  # each /metrics response, while 40 shims hang or trickle
CRI_PHASE = 1.0
CRI_SLOW_METHODS = ("Version", "ListPodSandbox", "ListContainers", "ListContainerStats")
# The agent's resident memory may grow this much above its steady state while the faults run.
# 100 MiB bodies come from 6 shims at every interval: buffering even one would exceed it.
MEMORY_HEADROOM_KIB = 48 * 1024


async def flap_cri(cri: SimulatedCri) -> None:
    """Down half of the time, slow (every list call 0.3 s late) the other half."""
    while True:
        cri.set_delay(0.0)
        cri.set_down(True)
        await trio.sleep(CRI_PHASE)
        cri.set_down(False)
        cri.set_delay(0.3, CRI_SLOW_METHODS)
        await trio.sleep(CRI_PHASE)


async def scrape_while(
    client: httpx.AsyncClient, healthy: dict[str, str], until: float, latencies: list[float]
) -> None:
    """/metrics again and again: each answer within the bound, with every healthy sandbox."""
    while trio.current_time() < until:
        started = trio.current_time()
        with trio.fail_after(LATENCY_BOUND):
            response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
        latencies.append(trio.current_time() - started)
        assert response.status_code == 200
        missing = healthy.keys() - served_sandboxes(response.text, healthy)
        assert not missing, f"{len(missing)} healthy sandboxes missing from /metrics"
        await trio.sleep(0.2)


async def remove_once_asked(fleet: SimulatedFleet, sandbox: SimSandbox) -> None:
    """Remove the sandbox while the agent's request to it is in flight (its shim hangs)."""

    async def asked() -> bool:
        return sandbox.shim.requests >= 1

    await eventually(asked)
    fleet.remove(sandbox.sandbox_id)


async def test_faulty_fleet_with_a_flapping_cri(sim_dir: Path) -> None:
    plan = [b for b, n in FAULTS.items() for _ in range(n)]
    plan += [Behaviour.HANG] * REMOVED_MID_REQUEST
    plan += [Behaviour.HEALTHY] * (SANDBOXES - len(plan))
    with SimulatedCri(sim_dir / "cri.sock") as cri:
        cri.set_down(True)
        async with open_fleet(sim_dir, cri=cri, seed=11) as fleet:
            boxes: list[tuple[Behaviour, SimSandbox]] = []
            for index, behaviour in enumerate(plan):
                flavour = Flavour.RUST if index % 4 == 0 else Flavour.GO
                box = await fleet.add(flavour, behaviour=behaviour)
                # One body per shim, rendered once: the simulation's own CPU use would
                # otherwise compete with the agent for the two cores CI has.
                box.shim.body = functools.partial(bytes, box.guest.render(time.time()))
                boxes.append((behaviour, box))
            to_remove = [box for behaviour, box in boxes if behaviour is Behaviour.HANG][
                FAULTS[Behaviour.HANG] :
            ]
            doomed = {box.sandbox_id for box in to_remove}
            healthy = {
                box.sandbox_id: box.pod.name
                for behaviour, box in boxes
                if behaviour is Behaviour.HEALTHY
            }
            faulty = {
                box.sandbox_id: behaviour
                for behaviour, box in boxes
                if behaviour is not Behaviour.HEALTHY and box.sandbox_id not in doomed
            }
            extra = (
                "--log-level=warning",
                f"--metrics-interval-secs={INTERVAL}",
                f"--shim-timeout={SHIM_TIMEOUT}",
                "--cri-timeout=1",
                "--cri-sync-interval-secs=0.5",
            )
            async with (
                agent_process(fleet.roots, cri.socket_path, sim_dir / "agent.log", *extra) as agent,
                httpx.AsyncClient(base_url=agent.url, timeout=10) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(flap_cri, cri)

                async def all_healthy_served() -> bool:
                    return healthy.keys() <= served_sandboxes(
                        (await client.get("/metrics")).text, healthy
                    )

                await eventually(all_healthy_served)
                steady_kib = proc_status_kib(agent.pid, "VmRSS")

                for box in to_remove:
                    nursery.start_soon(remove_once_asked, fleet, box)
                # Long enough for every hung request to reach its timeout and every faulty
                # shim to be asked more than once.
                until = trio.current_time() + SHIM_TIMEOUT + INTERVAL
                latencies: list[float] = []
                async with trio.open_nursery() as scrapers:
                    for _ in range(2):
                        scrapers.start_soon(scrape_while, client, healthy, until, latencies)
                assert len(latencies) >= 20

                peak_kib = proc_status_kib(agent.pid, "VmHWM")
                assert peak_kib - steady_kib < MEMORY_HEADROOM_KIB, (steady_kib, peak_kib)
                assert HUGE_BODY_BYTES // 1024 > MEMORY_HEADROOM_KIB

                listed = {
                    item["sandbox_id"]: item for item in (await client.get("/sandboxes")).json()
                }
                metrics = (await client.get("/metrics")).text
                nursery.cancel_scope.cancel()

    # Every faulty sandbox names its reason, and nothing of a removed one is left.
    assert not doomed & set(listed)
    assert not any(sandbox_id in metrics for sandbox_id in doomed)
    for sandbox_id, behaviour in faulty.items():
        item = listed[sandbox_id]
        assert item["state"] == "down", (behaviour, item)
        assert item["last_error_reason"] == REASONS[behaviour], (behaviour, item)
        assert item["last_error"]
        up = re.search(
            rf'kata_pulse_sandbox_up{{[^}}]*sandbox_id="{sandbox_id}"[^}}]*}} (\d)', metrics
        )
        assert up is not None and up.group(1) == "0", behaviour
    for sandbox_id in healthy:
        assert listed[sandbox_id]["state"] == "up"
    expected = collections.Counter(REASONS[b] for b in faulty.values())
    for reason, count in expected.items():
        found = re.search(
            rf'^kata_pulse_scrape_failures_total{{reason="{reason}"}} (\d+)$', metrics, re.M
        )
        assert found is not None and int(found.group(1)) >= count, reason
    down = re.search(r'^kata_pulse_sandboxes\{root="[^"]*",state="down"\} (\d+)$', metrics, re.M)
    assert down is not None
    downs = sum(
        int(m)
        for m in re.findall(
            r'^kata_pulse_sandboxes\{root="[^"]*",state="down"\} (\d+)$', metrics, re.M
        )
    )
    assert downs == len(faulty)
    assert re.search(r"^kata_pulse_cri_sync_errors_total [1-9]\d*$", metrics, re.M)
    assert "Traceback" not in agent.log()
