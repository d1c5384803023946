"""The CRI syncer actor against a real grpcio CRI server on a Unix socket (real time)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from pulse.config import Config
from pulse.cri.schedule import SyncTiming
from pulse.cri.syncer import run_cri_syncer
from pulse.model import (
    CacheMessage,
    ContainerInfo,
    ContainerStats,
    CriSynced,
    CriSyncFailed,
    PodMeta,
)
from pulse.sim.cri import SimulatedCri

INTERVAL = 0.5


def pod(n: int, *, handler: str = "kata", image: str = "docker.io/library/nginx:1.27") -> PodMeta:
    return PodMeta(
        sandbox_id=f"sandbox-{n:03d}",
        name=f"web-{n}",
        namespace="shop",
        uid=f"uid-{n}",
        runtime_handler=handler,
        cgroup_parent=f"/kubepods/burstable/poduid-{n}",
        sandbox_image="registry.k8s.io/pause:3.9",
        containers=(
            ContainerInfo(
                container_id=f"ctr-{n:03d}",
                name="nginx",
                image=image,
                image_ref="",
                state="CONTAINER_RUNNING",
                created_at_ns=1_700_000_000_000_000_000,
                stats=ContainerStats(
                    timestamp_ns=1_700_000_000_000_000_000,
                    cpu_usage_core_ns=1_234_567_890 + n,
                    memory_working_set_bytes=10_000_000,
                    memory_usage_bytes=12_000_000,
                    memory_rss_bytes=8_000_000,
                    memory_page_faults=4321,
                    memory_major_page_faults=12,
                ),
            ),
        ),
    )


@dataclass
class Inbox:
    """What the cache owner would receive."""

    messages: list[CacheMessage] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def collect(self, receive: trio.MemoryReceiveChannel[CacheMessage]) -> None:
        async for message in receive:
            self.messages.append(message)
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, predicate: object, limit: float = 10.0) -> CacheMessage:
        """The first message from now on that satisfies predicate."""
        assert callable(predicate)
        start = len(self.messages)
        with trio.fail_after(limit):
            while True:
                for message in self.messages[start:]:
                    if predicate(message):
                        return message
                start = len(self.messages)
                await self.changed.wait()

    def synced(self) -> list[CriSynced]:
        return [m for m in self.messages if isinstance(m, CriSynced)]

    def failed(self) -> list[CriSyncFailed]:
        return [m for m in self.messages if isinstance(m, CriSyncFailed)]


@dataclass
class Running:
    inbox: Inbox
    nudge: trio.MemorySendChannel[None]


@contextlib.asynccontextmanager
async def running_syncer(socket: Path, *, cri_timeout: float = 2.0) -> AsyncIterator[Running]:
    config = Config(runtime_endpoint=socket, cri_timeout=cri_timeout, cri_sync_interval=INTERVAL)
    send, receive = trio.open_memory_channel[CacheMessage](100)
    nudge_send, nudge_receive = trio.open_memory_channel[None](1)
    inbox = Inbox()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.collect, receive)
        await nursery.start(run_cri_syncer, config, send, nudge_receive)
        yield Running(inbox, nudge_send)
        nursery.cancel_scope.cancel()


def synced_with(predicate: object) -> object:
    assert callable(predicate)
    return lambda m: isinstance(m, CriSynced) and predicate(m.snapshot)


async def test_pod_metadata_and_container_stats_arrive(sim_cri: SimulatedCri) -> None:
    sim_cri.set_pod(pod(1))
    async with running_syncer(sim_cri.socket_path) as run:
        message = await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
    assert isinstance(message, CriSynced)
    snapshot = message.snapshot
    assert snapshot.runtime_name == "containerd"
    meta = snapshot.pods["sandbox-001"]
    assert (meta.name, meta.namespace, meta.uid) == ("web-1", "shop", "uid-1")
    assert meta.runtime_handler == "kata"
    assert meta.state == "SANDBOX_READY"
    assert meta.created_at_ns > 0
    assert meta.cgroup_parent == "/kubepods/burstable/poduid-1"
    assert meta.sandbox_image == "registry.k8s.io/pause:3.9"
    (container,) = meta.containers
    # The runtime lists the container by image ID; the syncer shows the human name.
    assert container.image == "docker.io/library/nginx:1.27"
    assert container.image_ref.startswith("sha256:")
    assert (container.container_id, container.name) == ("ctr-001", "nginx")
    assert container.state == "CONTAINER_RUNNING"
    assert container.stats is not None
    assert container.stats.cpu_usage_core_ns == 1_234_567_891
    assert container.stats.memory_working_set_bytes == 10_000_000
    assert container.stats.memory_rss_bytes == 8_000_000
    assert container.stats.memory_page_faults == 4321
    assert container.stats.memory_swap_bytes is None
    assert message.wall_time > 1e9
    assert message.duration >= 0


async def test_periodic_sync_stays_cheap(sim_cri: SimulatedCri) -> None:
    for n in range(5):
        sim_cri.set_pod(pod(n))
    async with running_syncer(sim_cri.socket_path) as run:
        for _ in range(3):
            await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
        sim_cri.set_pod(pod(99))
        await run.inbox.wait_for(synced_with(lambda s: "sandbox-099" in s.pods))
    calls = sim_cri.calls
    syncs = len(run.inbox.synced())
    assert calls["ListPodSandbox"] == syncs
    assert calls["Version"] == 1
    # Status and image look-ups only for what is new: 5 + 1 sandboxes, two ListImages.
    assert calls["PodSandboxStatus"] == 6
    assert calls["ListImages"] == 2
    assert calls["ContainerStatus"] == 0


async def test_image_name_from_container_status_without_image_service(cri_socket: Path) -> None:
    with SimulatedCri(cri_socket, image_service=False) as sim:
        sim.set_pod(pod(1, image="quay.io/acme/api:2.3"))
        async with running_syncer(cri_socket) as run:
            for _ in range(3):
                message = await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
        calls = sim.calls
    assert isinstance(message, CriSynced)
    assert message.snapshot.pods["sandbox-001"].containers[0].image == "quay.io/acme/api:2.3"
    assert calls["ContainerStatus"] == 1  # resolved once for the container's lifetime


async def test_removed_pod_disappears(sim_cri: SimulatedCri) -> None:
    sim_cri.set_pod(pod(1))
    sim_cri.set_pod(pod(2))
    async with running_syncer(sim_cri.socket_path) as run:
        await run.inbox.wait_for(synced_with(lambda s: len(s.pods) == 2))
        sim_cri.remove_pod("sandbox-001")
        await run.inbox.wait_for(synced_with(lambda s: set(s.pods) == {"sandbox-002"}))


async def test_outage_and_recovery_log_once_and_labels_return(
    sim_cri: SimulatedCri, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pulse.cri")
    sim_cri.set_pod(pod(1))
    async with running_syncer(sim_cri.socket_path, cri_timeout=0.5) as run:
        await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
        for outage in range(2):
            sim_cri.set_down(True)
            for _ in range(4):  # several failed attempts in one outage
                await run.inbox.wait_for(lambda m: isinstance(m, CriSyncFailed))
            sim_cri.set_pod(pod(10 + outage))  # the cluster moved on meanwhile
            sim_cri.set_down(False)
            recovered_at = trio.current_time()
            await run.inbox.wait_for(
                synced_with(lambda s, n=10 + outage: f"sandbox-{n:03d}" in s.pods)
            )
            # Backoff is capped at the interval: labels are back within about one period.
            assert trio.current_time() - recovered_at < 3 * INTERVAL
    failures = run.inbox.failed()
    assert len(failures) >= 8
    assert all("UNAVAILABLE" in f.error for f in failures)
    warnings = [r for r in caplog.records if r.getMessage() == "cri unavailable"]
    recoveries = [r for r in caplog.records if r.getMessage() == "cri available again"]
    assert len(warnings) == 2  # one per outage, not one per attempt
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert len(recoveries) == 2


async def test_runtime_not_up_at_start_is_waited_for(cri_socket: Path) -> None:
    async with running_syncer(cri_socket) as run:
        failed = await run.inbox.wait_for(lambda m: isinstance(m, CriSyncFailed))
        assert isinstance(failed, CriSyncFailed)
        assert str(cri_socket) in failed.error
        with SimulatedCri(cri_socket) as sim:
            sim.set_pod(pod(7))
            await run.inbox.wait_for(synced_with(lambda s: "sandbox-007" in s.pods))


async def test_runtime_restart_is_picked_up(cri_socket: Path) -> None:
    async with running_syncer(cri_socket) as run:
        with SimulatedCri(cri_socket) as sim:
            sim.set_pod(pod(1))
            await run.inbox.wait_for(synced_with(lambda s: "sandbox-001" in s.pods))
        await run.inbox.wait_for(lambda m: isinstance(m, CriSyncFailed))
        with SimulatedCri(cri_socket, runtime_version="2.0") as sim:
            sim.set_pod(pod(2))
            message = await run.inbox.wait_for(synced_with(lambda s: "sandbox-002" in s.pods))
    assert isinstance(message, CriSynced)
    assert message.snapshot.runtime_version == "2.0"


async def test_slow_answers_fail_the_sync_at_the_deadline(sim_cri: SimulatedCri) -> None:
    sim_cri.set_pod(pod(1))
    sim_cri.set_delay(30, methods=["ListContainers"])
    async with running_syncer(sim_cri.socket_path, cri_timeout=0.2) as run:
        failed = await run.inbox.wait_for(lambda m: isinstance(m, CriSyncFailed))
        assert isinstance(failed, CriSyncFailed)
        assert "DEADLINE_EXCEEDED" in failed.error
        assert "ListContainers" in failed.error
        assert failed.duration < 5  # cut at the deadline, not after the server's 30 s
        sim_cri.set_delay(0)
        await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
    assert sim_cri.cancelled["ListContainers"] >= 1


async def test_burst_of_new_sandboxes_is_debounced(sim_cri: SimulatedCri) -> None:
    async with running_syncer(sim_cri.socket_path) as run:
        await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
        before = sim_cri.calls["ListPodSandbox"]
        for n in range(100):
            sim_cri.set_pod(pod(n))
            with contextlib.suppress(trio.WouldBlock):  # conflation, as the cache owner does
                run.nudge.send_nowait(None)
        message = await run.inbox.wait_for(synced_with(lambda s: len(s.pods) == 100))
        after = sim_cri.calls["ListPodSandbox"]
    assert isinstance(message, CriSynced)
    assert after - before <= 2  # the burst, plus at most one periodic sync in between
    assert sim_cri.calls["PodSandboxStatus"] == 100
    assert message.snapshot.pods["sandbox-042"].cgroup_parent == "/kubepods/burstable/poduid-42"


async def test_nudge_syncs_before_the_period(cri_socket: Path) -> None:
    with SimulatedCri(cri_socket) as sim:
        config = Config(runtime_endpoint=cri_socket, cri_sync_interval=30)
        send, receive = trio.open_memory_channel[CacheMessage](10)
        nudge_send, nudge_receive = trio.open_memory_channel[None](1)
        async with trio.open_nursery() as nursery:
            await nursery.start(run_cri_syncer, config, send, nudge_receive)
            assert isinstance(await receive.receive(), CriSynced)
            sim.set_pod(pod(3))
            nudge_send.send_nowait(None)
            with trio.fail_after(5):  # well before the 30 s period
                message = await receive.receive()
            nursery.cancel_scope.cancel()
    assert isinstance(message, CriSynced)
    assert "sandbox-003" in message.snapshot.pods


async def test_syncer_stops_quietly_when_the_cache_channel_closes(sim_cri: SimulatedCri) -> None:
    config = Config(runtime_endpoint=sim_cri.socket_path, cri_sync_interval=INTERVAL)
    send, receive = trio.open_memory_channel[CacheMessage](0)
    _, nudge_receive = trio.open_memory_channel[None](1)
    await receive.aclose()
    with trio.fail_after(5):
        await run_cri_syncer(config, send, nudge_receive, timing=SyncTiming.for_interval(INTERVAL))


async def test_failing_container_stats_do_not_cost_the_labels(
    sim_cri: SimulatedCri, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pulse.cri")
    sim_cri.set_pod(pod(1))
    sim_cri.set_delay(30, methods=["ListContainerStats"])
    async with running_syncer(sim_cri.socket_path, cri_timeout=0.2) as run:
        for _ in range(2):
            message = await run.inbox.wait_for(lambda m: isinstance(m, CriSynced))
        assert isinstance(message, CriSynced)
        meta = message.snapshot.pods["sandbox-001"]
        assert meta.name == "web-1"
        assert meta.containers[0].image == "docker.io/library/nginx:1.27"
        assert meta.containers[0].stats is None
        sim_cri.set_delay(0)
        message = await run.inbox.wait_for(
            synced_with(lambda s: s.pods["sandbox-001"].containers[0].stats is not None)
        )
    assert not run.inbox.failed()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cri container stats unavailable, syncing without") == 1
    assert messages.count("cri container stats available again") == 1
