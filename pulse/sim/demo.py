"""`kata-pulse demo`: the real agent against simulated sandboxes and a simulated CRI."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path

import trio

from pulse.agent import run_agent
from pulse.config import Config
from pulse.logs import get_logger
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import DEMO_FLAVOURS, open_fleet

log = get_logger("demo")


def demo_config(config: Config, base: Path, cri_socket: Path) -> Config:
    """The user's options, pointed at the simulation (the demo owns roots and CRI)."""
    interval = config.metrics_interval if config.metrics_interval != 60.0 else 5.0
    return dataclasses.replace(
        config,
        sandbox_dirs=(base / "vc" / "sbs", base / "kata"),
        runtime_endpoint=cri_socket,
        metrics_interval=interval,
    )


async def run_demo(config: Config, sandboxes: int, churn_every: float, seed: int | None) -> None:
    rng = random.Random(seed)
    # Under /tmp with a short name: a Unix socket path may not exceed 107 bytes, and the
    # simulated sandboxes' sockets sit 90 bytes below this directory.
    with tempfile.TemporaryDirectory(prefix="kp", dir="/tmp") as tmp:
        base = Path(tmp)
        cri_socket = base / "cri.sock"
        with SimulatedCri(cri_socket) as cri:
            async with open_fleet(base, cri=cri, seed=seed) as fleet:
                for _ in range(sandboxes):
                    await fleet.add(rng.choice(DEMO_FLAVOURS))
                agent_config = demo_config(config, base, cri_socket)
                async with trio.open_nursery() as nursery:
                    agent = await nursery.start(run_agent, agent_config)
                    log.info(
                        "demo running",
                        url=f"{agent.url}/",
                        sandboxes=sandboxes,
                        interval=agent_config.metrics_interval,
                        directory=base,
                    )
                    print(
                        f"\nkata-pulse demo: {sandboxes} simulated Kata sandboxes\n"
                        f"  dashboard   {agent.url}/\n"
                        f"  metrics     {agent.url}/metrics\n"
                        f"  sandboxes   {agent.url}/sandboxes\n"
                        f"  terminal    kata-pulse top --url {agent.url}\n"
                        "Press Ctrl-C to stop.\n",
                        flush=True,
                    )
                    nursery.start_soon(fleet.refresh_stats_forever)
                    if churn_every > 0:
                        nursery.start_soon(fleet.churn, churn_every)
