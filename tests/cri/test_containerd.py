"""kata-pulse against a real containerd (Debian package, with runc) started by the suite.

containerd runs with its root, state and socket in a temporary directory and a pause image built
here from a static C binary. A pod sandbox and an app container run through the CRI exactly as
kubelet starts them (the container from the image ID). The test skips only when containerd
cannot start on this machine, and says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pulse.config import Config
from pulse.cri.client import CriClient
from pulse.cri.syncer import run_cri_syncer
from pulse.model import CacheMessage, CriSynced
from pulse.sim.bodies import Flavour, SimulatedGuest
from pulse.sim.shim import SimulatedShim
from tests.cri.agent_helpers import metrics_with, row_with_pod, running_agent, sample_lines
from tests.cri.containerd_env import (
    APP_IMAGE,
    PAUSE_IMAGE,
    Containerd,
    ContainerdUnavailable,
    remove_pod,
    running_containerd,
    start_pod,
)

pytestmark = pytest.mark.containerd


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    try:
        with running_containerd() as daemon:
            yield daemon
    except ContainerdUnavailable as why:
        print(f"containerd cannot start here: {why}")
        pytest.skip(f"containerd cannot start here: {why}")


async def test_syncer_reports_what_containerd_runs(containerd: Containerd) -> None:
    async with CriClient(containerd.socket, timeout=10) as client:
        pod = await start_pod(
            client, containerd, name="shop-web-0", namespace="shop", uid="3f2a-uid-web-0"
        )
        try:
            config = Config(runtime_endpoint=containerd.socket, cri_sync_interval=0.5)
            send, receive = trio.open_memory_channel[CacheMessage](10)
            _, nudges = trio.open_memory_channel[None](1)
            async with trio.open_nursery() as nursery:
                await nursery.start(run_cri_syncer, config, send, nudges)
                with trio.fail_after(30):
                    while True:
                        message = await receive.receive()
                        if isinstance(message, CriSynced) and pod.sandbox_id in (
                            message.snapshot.pods
                        ):
                            break
                nursery.cancel_scope.cancel()
        finally:
            await remove_pod(client, pod)

    snapshot = message.snapshot
    assert snapshot.runtime_name == "containerd"
    assert snapshot.runtime_version
    meta = snapshot.pods[pod.sandbox_id]
    assert (meta.name, meta.namespace, meta.uid) == ("shop-web-0", "shop", "3f2a-uid-web-0")
    assert meta.state == "SANDBOX_READY"
    assert meta.created_at_ns > 0
    assert meta.cgroup_parent == pod.cgroup_parent
    assert meta.sandbox_image == PAUSE_IMAGE
    (container,) = meta.containers
    assert container.container_id == pod.container_id
    assert container.name == "app"
    assert container.state == "CONTAINER_RUNNING"
    # containerd lists it by the image ID kubelet created it from; the label is the name.
    assert pod.image_id.startswith("sha256:")
    assert container.image == APP_IMAGE
    assert container.stats is not None
    assert container.stats.cpu_usage_core_ns is not None
    assert container.stats.cpu_usage_core_ns > 0
    assert container.stats.memory_working_set_bytes is not None
    assert container.stats.memory_working_set_bytes > 0


async def test_agent_serves_containerd_pod_metadata(
    containerd: Containerd, short_tmp: Path
) -> None:
    async with CriClient(containerd.socket, timeout=10) as client:
        pod = await start_pod(
            client, containerd, name="shop-api-7d9", namespace="shop", uid="9c1e-uid-api"
        )
        try:
            # A Kata shim for this very sandbox id: the agent finds it under its sandbox root.
            root = short_tmp / "vc" / "sbs"
            (root / pod.sandbox_id).mkdir(parents=True)
            guest = SimulatedGuest(pod.sandbox_id, Flavour.GO, seed=1)
            shim = SimulatedShim(
                root / pod.sandbox_id / "shim-monitor.sock", lambda: guest.render(time.time())
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(shim.serve)
                async with running_agent(
                    runtime_endpoint=containerd.socket, sandbox_dirs=(root,)
                ) as agent:
                    row = await agent.wait_for(row_with_pod(pod.sandbox_id, pod.name), limit=30)
                    labelled = await agent.wait_for(
                        metrics_with(
                            None,
                            pod=pod.name,
                            namespace=pod.namespace,
                            container=pod.container_name,
                            image=APP_IMAGE,
                        ),
                        limit=30,
                    )
                    metrics = await agent.metrics()
                nursery.cancel_scope.cancel()
        finally:
            await remove_pod(client, pod)

    assert (row["namespace"], row["uid"]) == (pod.namespace, pod.uid)
    assert [(c["name"], c["image"]) for c in row["containers"]] == [("app", APP_IMAGE)]
    assert row["containers"][0]["container_id"] == pod.container_id
    assert labelled
    assert sample_lines(metrics, "kata_pulse_cri_up") == ["kata_pulse_cri_up 1"]
    assert not sample_lines(metrics, None, image=pod.image_id)  # never the sha256 ID
