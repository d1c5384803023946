"""CRI metadata through the whole agent: simulated CRI and shims, real sockets, real HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pulse.model import ContainerStats
from pulse.sim.bodies import Flavour
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimulatedFleet, open_fleet
from tests.cri.agent_helpers import (
    AgentUnderTest,
    metrics_with,
    row_with_pod,
    running_agent,
    sample_lines,
    sample_value,
)


@dataclass
class World:
    cri: SimulatedCri
    fleet: SimulatedFleet
    agent: AgentUnderTest


@pytest.fixture
async def world(short_tmp: Path, sim_cri: SimulatedCri) -> AsyncIterator[World]:
    async with (
        open_fleet(short_tmp, cri=sim_cri, seed=7) as fleet,
        running_agent(runtime_endpoint=sim_cri.socket_path, sandbox_dirs=fleet.roots) as agent,
    ):
        yield World(sim_cri, fleet, agent)


async def test_pod_metadata_and_container_stats_reach_sandboxes_and_metrics(
    world: World,
) -> None:
    sandbox = await world.fleet.add(Flavour.GO)
    pod = world.cri.pods()[sandbox.sandbox_id]
    (container, *_) = pod.containers
    stats = ContainerStats(
        timestamp_ns=1,
        cpu_usage_core_ns=4_200_000_000,
        memory_working_set_bytes=123_456_789,
        memory_usage_bytes=150_000_000,
        memory_rss_bytes=100_000_000,
        memory_page_faults=777,
        memory_major_page_faults=7,
    )
    world.cri.set_container_stats(container.container_id, stats)

    row = await world.agent.wait_for(row_with_pod(sandbox.sandbox_id, pod.name))
    assert (row["namespace"], row["uid"]) == (pod.namespace, pod.uid)
    assert row["runtime_handler"] == pod.runtime_handler
    assert [(c["name"], c["image"]) for c in row["containers"]] == [
        (c.name, c.image) for c in pod.containers
    ]
    # The runtime listed sha256 IDs; what is shown is the human image name.
    assert not any(c["image"].startswith("sha256:") for c in row["containers"])

    pod_lines = await world.agent.wait_for(
        metrics_with(None, pod=pod.name, namespace=pod.namespace)
    )
    assert pod_lines
    working_set = await world.agent.wait_for(
        metrics_with(
            "container_memory_working_set_bytes",
            container=container.name,
            image=container.image,
            pod=pod.name,
            namespace=pod.namespace,
        )
    )
    assert [sample_value(line) for line in working_set] == [123_456_789]
    metrics = await world.agent.metrics()
    assert sample_lines(metrics, "kata_pulse_cri_up") == ["kata_pulse_cri_up 1"]


async def test_outage_keeps_labels_and_recovery_brings_changes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pulse")
    sandbox = await world.fleet.add(Flavour.GO)
    pod = world.cri.pods()[sandbox.sandbox_id]
    await world.agent.wait_for(row_with_pod(sandbox.sandbox_id, pod.name))

    world.cri.set_down(True)
    await world.agent.wait_for(_cri_up(0))
    # Several sync periods into the outage the agent still serves what it knew.
    failures_before = world.cri.calls["Version"] + world.cri.calls["ListPodSandbox"]
    await world.agent.wait_for(_calls_grew(world.cri, failures_before + 3), limit=20)
    rows = await world.agent.sandboxes()
    assert rows[sandbox.sandbox_id]["pod_name"] == pod.name
    assert sample_lines(await world.agent.metrics(), None, pod=pod.name)

    renamed = replace(pod, name=pod.name + "-renamed", namespace="moved")
    world.cri.set_pod(renamed)
    world.cri.set_down(False)
    await world.agent.wait_for(_cri_up(1))
    row = await world.agent.wait_for(row_with_pod(sandbox.sandbox_id, renamed.name))
    assert row["namespace"] == "moved"

    outage_lines = [r for r in caplog.records if r.getMessage() == "cri unavailable"]
    recovered_lines = [r for r in caplog.records if r.getMessage() == "cri available again"]
    assert len(outage_lines) == 1
    assert len(recovered_lines) == 1


async def test_sandbox_unknown_to_the_cri_is_collected_and_labelled_later(world: World) -> None:
    sandbox = await world.fleet.add(Flavour.GO, in_cri=False)

    async def collected_without_labels(agent: AgentUnderTest) -> dict[str, Any] | None:
        row = (await agent.sandboxes()).get(sandbox.sandbox_id)
        return row if row is not None and row["last_success"] is not None else None

    row = await world.agent.wait_for(collected_without_labels)
    assert (row["pod_name"], row["namespace"], row["uid"]) == ("", "", "")
    assert row["state"] == "up", json.dumps(row)

    world.cri.set_pod(sandbox.pod)
    row = await world.agent.wait_for(row_with_pod(sandbox.sandbox_id, sandbox.pod.name))
    assert row["uid"] == sandbox.pod.uid


def _cri_up(value: int) -> Any:
    async def probe(agent: AgentUnderTest) -> bool:
        return sample_lines(await agent.metrics(), "kata_pulse_cri_up") == [
            f"kata_pulse_cri_up {value}"
        ]

    return probe


def _calls_grew(cri: SimulatedCri, at_least: int) -> Any:
    async def probe(agent: AgentUnderTest) -> bool:
        return cri.calls["Version"] + cri.calls["ListPodSandbox"] >= at_least

    return probe
