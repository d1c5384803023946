"""One simulated Kata node: simulated sandboxes and CRI, and the real agent serving them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from pulse.agent import RunningAgent
from pulse.sim.bodies import Flavour
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimSandbox, SimulatedFleet, guest_cpu_usage_seconds, open_fleet
from tests.helpers import agent_config, http_client, running_agent

NODE_NAME = "kata-node-1"
# Each time the test's runtime reports, the containers' CPU has grown by this share of the VM's
# growth since it started. Small, so that the containers' step between two collections stays
# below the VM's own: a larger jump holds the sandbox row's remainder (a counter never goes
# back) until the VM's counter has caught up, and the pod's rows briefly add up to more than
# the VM. The agent does that by design; the tests want rows that add up exactly.
CONTAINERS_SHARE_OF_GROWTH = 0.05


@dataclass(frozen=True)
class CpuStart:
    vm_seconds: float  # the simulated VM's CPU when the runtime first reported the container
    container_seconds: float


def cpu_starts(node: SimulatedNode) -> dict[str, CpuStart]:
    starts = {}
    for box in node.known_to_cri():
        for container in node.cri.pods()[box.sandbox_id].containers:
            stats = container.stats
            assert stats is not None and stats.cpu_usage_core_ns is not None
            vm = guest_cpu_usage_seconds(box.guest, stats.timestamp_ns / 1e9)
            starts[container.container_id] = CpuStart(vm, stats.cpu_usage_core_ns / 1e9)
    return starts


def advance_container_cpu(node: SimulatedNode, starts: dict[str, CpuStart]) -> None:
    """The runtime reports new CPU figures for every container, as ListContainerStats would."""
    now = time.time()
    for box in node.known_to_cri():
        containers = node.cri.pods()[box.sandbox_id].containers
        share = CONTAINERS_SHARE_OF_GROWTH / len(containers)
        vm_now = guest_cpu_usage_seconds(box.guest, now)
        for container in containers:
            assert container.stats is not None
            start = starts[container.container_id]
            seconds = start.container_seconds + share * (vm_now - start.vm_seconds)
            stats = replace(
                container.stats, timestamp_ns=int(now * 1e9), cpu_usage_core_ns=int(seconds * 1e9)
            )
            node.cri.set_container_stats(container.container_id, stats)


async def report_container_cpu_forever(
    node: SimulatedNode, starts: dict[str, CpuStart], every: float
) -> None:
    while True:
        await trio.sleep(every)
        advance_container_cpu(node, starts)


@dataclass
class SimulatedNode:
    cri: SimulatedCri
    fleet: SimulatedFleet
    agent: RunningAgent
    client: httpx.AsyncClient

    @property
    def sandboxes(self) -> list[SimSandbox]:
        return list(self.fleet.sandboxes.values())

    def known_to_cri(self) -> list[SimSandbox]:
        pods = self.cri.pods()
        return [box for box in self.sandboxes if box.sandbox_id in pods]

    async def get_text(self, path: str, **params: str) -> str:
        response = await self.client.get(path, params=params)
        response.raise_for_status()
        return response.text

    async def sandbox_rows(self) -> dict[str, dict[str, Any]]:
        response = await self.client.get("/sandboxes")
        response.raise_for_status()
        return {row["sandbox_id"]: row for row in response.json()}

    async def wait_until_described(self, limit: float, *, cpu_units_known: bool = False) -> None:
        """Until every sandbox is up, named from the CRI when the CRI knows it, and (if asked)
        its guest CPU time unit detected."""
        known = {box.sandbox_id for box in self.known_to_cri()}
        with_guest = {
            box.sandbox_id for box in self.sandboxes if box.flavour is not Flavour.NO_GUEST
        }
        last: list[str] = []
        with trio.move_on_after(limit):
            while True:
                rows = await self.sandbox_rows()
                last = [
                    f"{box.sandbox_id[:12]} {box.flavour.value}: {rows.get(box.sandbox_id)}"
                    for box in self.sandboxes
                    if not _described(
                        rows.get(box.sandbox_id),
                        named=box.sandbox_id in known,
                        unit=cpu_units_known and box.sandbox_id in with_guest,
                    )
                ]
                if not last:
                    return
                await trio.sleep(0.05)
        raise AssertionError(f"not described within {limit} s:\n" + "\n".join(last[:5]))


def _described(row: dict[str, Any] | None, *, named: bool, unit: bool) -> bool:
    if row is None or row["state"] != "up":
        return False
    if named and not (row["pod_name"] and row["containers"]):
        return False
    return not (unit and row["guest_cpu_time_unit"] is None)


@asynccontextmanager
async def simulated_node(
    base: Path,
    flavours: Iterable[Flavour],
    *,
    seed: int,
    unknown_to_cri: int = 0,
    **config: Any,
) -> AsyncIterator[SimulatedNode]:
    """Sandboxes of the given flavours known to a simulated CRI (plus `unknown_to_cri` Go
    sandboxes it does not know), and the agent watching them with `config` overrides."""
    with SimulatedCri(base / "cri.sock") as cri:
        async with open_fleet(base, cri=cri, seed=seed) as fleet:
            for flavour in flavours:
                await fleet.add(flavour)
            for _ in range(unknown_to_cri):
                await fleet.add(Flavour.GO, in_cri=False)
            settings = agent_config(fleet, cri.socket_path, **config)
            async with running_agent(settings) as agent, http_client(agent) as client:
                yield SimulatedNode(cri, fleet, agent, client)


def kube_pod_info_labels(node: SimulatedNode, node_name: str = NODE_NAME) -> list[dict[str, str]]:
    """kube_pod_info's labels as kube-state-metrics exposes them, for the pods the CRI knows."""
    infos = []
    for index, box in enumerate(node.known_to_cri()):
        pod = box.pod
        infos.append(
            {
                "namespace": pod.namespace,
                "pod": pod.name,
                "uid": pod.uid,
                "host_ip": "10.0.0.11",
                "pod_ip": f"10.244.1.{index + 2}",
                "node": node_name,
                "created_by_kind": "ReplicaSet",
                "created_by_name": pod.name.rsplit("-", 1)[0],
                "host_network": "false",
            }
        )
    return infos
