"""The simulated fleet in its own process, so that its CPU never counts as the agent's.

    python -m bench.fleet_server BASE N [--seed S]

Creates N simulated Go-shim sandboxes under BASE (BASE/vc/sbs/<id>/shim-monitor.sock) and a
simulated CRI on BASE/cri.sock, prints one JSON line `{"ready": ...}` on stdout, then obeys
line commands on stdin:

    add            one more sandbox; answers {"id": ..., "t0": <unix time before mkdir>}
    remove ID      removes it; answers {"removed": ID}
    quit           (or end of input) stops everything

Bench-only cost control: rendering one ~1,500-line body costs the simulator about 9 ms, so 500
fresh renders per interval would make the load generator heavier than the agent. Instead a small
pool of simulated guests is rendered once per time step and every sandbox serves one of them
(its counters still grow between collections, so the agent's rate conversion is exercised).
The simulator's own default (a fresh render per request) is untouched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import trio

from pulse.sim.bodies import Flavour, SimulatedGuest
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimulatedFleet, open_fleet

POOL_SIZE = 8
STEP_SECONDS = 1.0
CRI_STATS_REFRESH_SECONDS = 5.0


class BodyPool:
    """Bodies of POOL_SIZE guests, rendered at most once per guest per time step."""

    def __init__(self, seed: int) -> None:
        self._guests = [
            SimulatedGuest(f"{i:064x}", Flavour.GO, seed=seed * 1000 + i) for i in range(POOL_SIZE)
        ]
        self._step = -1
        self._bodies: dict[int, bytes] = {}

    def body(self, variant: int) -> bytes:
        step = math.floor(time.time() / STEP_SECONDS)
        if step != self._step:
            self._step = step
            self._bodies = {}
        body = self._bodies.get(variant)
        if body is None:
            body = self._guests[variant].render(step * STEP_SECONDS)
            self._bodies[variant] = body
        return body


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def add_sandbox(fleet: SimulatedFleet, pool: BodyPool) -> dict[str, object]:
    t0 = time.time()
    sandbox = await fleet.add(Flavour.GO)
    variant = len(fleet.sandboxes) % POOL_SIZE
    sandbox.shim.body = lambda: pool.body(variant)
    return {"id": sandbox.sandbox_id, "t0": t0}


def emit(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def serve(base: Path, count: int, seed: int) -> None:
    pool = BodyPool(seed)
    cri_socket = base / "cri.sock"
    with SimulatedCri(cri_socket) as cri:
        async with open_fleet(base, cri=cri, seed=seed) as fleet:
            for _ in range(count):
                await add_sandbox(fleet, pool)
            emit(
                {
                    "ready": {
                        "roots": [str(root) for root in fleet.roots],
                        "cri": str(cri_socket),
                        "sandboxes": sorted(fleet.sandboxes),
                        "pid": os.getpid(),
                    }
                }
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fleet.refresh_stats_forever, CRI_STATS_REFRESH_SECONDS)
                stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
                buffered = b""
                while True:
                    data = await stdin.receive_some(4096)
                    if not data:
                        break
                    buffered += data
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        command, _, argument = line.decode().strip().partition(" ")
                        if command == "add":
                            emit(await add_sandbox(fleet, pool))
                        elif command == "remove":
                            fleet.remove(argument)
                            emit({"removed": argument})
                        elif command == "quit":
                            nursery.cancel_scope.cancel()
                            return
                nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    raise_fd_limit()
    trio.run(serve, args.base, args.count, args.seed)


if __name__ == "__main__":
    main()
