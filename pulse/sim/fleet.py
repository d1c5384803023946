"""A fleet of simulated Kata sandboxes on disk, with the pods a simulated CRI reports for them.

Each sandbox is a real directory under a Go-runtime or runtime-rs root with a real shim server on
its `shim-monitor.sock`. Used by `kata-pulse demo`, the tests and the benchmark.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from pulse.model import ContainerInfo, ContainerStats, PodMeta
from pulse.sim.bodies import Flavour, SimulatedGuest
from pulse.sim.cri import SimulatedCri
from pulse.sim.shim import Behaviour, SimulatedShim

SHIM_SOCKET = "shim-monitor.sock"
NAMESPACES = ("default", "payments", "search", "ml-batch", "web")
APPS = (
    ("nginx", "docker.io/library/nginx:1.27"),
    ("redis", "docker.io/library/redis:7.4"),
    ("api", "ghcr.io/example/api:2.3.1"),
    ("worker", "quay.io/example/worker:0.9"),
    ("postgres", "docker.io/library/postgres:17"),
)
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
RUST_FLAVOURS = (Flavour.RUST,)


@dataclass
class SimSandbox:
    sandbox_id: str
    root: Path
    flavour: Flavour
    guest: SimulatedGuest
    shim: SimulatedShim
    pod: PodMeta
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def directory(self) -> Path:
        return self.root / self.sandbox_id

    @property
    def socket_path(self) -> Path:
        return self.directory / SHIM_SOCKET


class SimulatedFleet:
    """Create, break and remove simulated sandboxes; keep the simulated CRI in step."""

    def __init__(
        self, base: Path, nursery: trio.Nursery, cri: SimulatedCri | None, seed: int | None
    ) -> None:
        self.go_root = base / "vc" / "sbs"
        self.rust_root = base / "kata"
        self.cri = cri
        self._nursery = nursery
        self._rng = random.Random(seed)
        self.sandboxes: dict[str, SimSandbox] = {}

    @property
    def roots(self) -> tuple[Path, Path]:
        return (self.go_root, self.rust_root)

    def _new_id(self) -> str:
        return f"{self._rng.getrandbits(256):064x}"

    def _new_pod(self, sandbox_id: str, flavour: Flavour, created_at: float) -> PodMeta:
        rng = self._rng
        app, image = rng.choice(APPS)
        namespace = rng.choice(NAMESPACES)
        suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        containers = tuple(
            ContainerInfo(
                container_id=f"{rng.getrandbits(256):064x}",
                name=name,
                image=img,
                image_ref=f"sha256:{rng.getrandbits(256):064x}",
                state="CONTAINER_RUNNING",
                created_at_ns=int(created_at * 1e9),
            )
            for name, img in [(app, image)]
            + ([("sidecar", "docker.io/envoyproxy/envoy:v1.31")] if rng.random() < 0.3 else [])
        )
        handler = "kata-qemu" if flavour in RUST_FLAVOURS else rng.choice(("kata", "kata-clh"))
        if flavour is Flavour.FIRECRACKER:
            handler = "kata-fc"
        qos = rng.choice(("burstable", "besteffort", ""))
        cgroup = f"/kubepods/{qos}/pod{uid}" if qos else f"/kubepods/pod{uid}"
        return PodMeta(
            sandbox_id=sandbox_id,
            name=f"{app}-{suffix}",
            namespace=namespace,
            uid=uid,
            runtime_handler=handler,
            created_at_ns=int(created_at * 1e9),
            state="SANDBOX_READY",
            cgroup_parent=cgroup,
            sandbox_image=SANDBOX_IMAGE,
            containers=containers,
        )

    async def add(
        self,
        flavour: Flavour = Flavour.GO,
        *,
        behaviour: Behaviour = Behaviour.HEALTHY,
        root: Path | None = None,
        sandbox_id: str | None = None,
        with_socket: bool = True,
        in_cri: bool = True,
    ) -> SimSandbox:
        """A new sandbox: its directory, its shim (unless with_socket=False) and its pod."""
        sandbox_id = sandbox_id or self._new_id()
        if root is None:
            root = self.rust_root if flavour in RUST_FLAVOURS else self.go_root
        now = time.time()
        # Booted a little before it appears: counters start near zero, as a new pod's do.
        guest = SimulatedGuest(
            sandbox_id,
            flavour,
            seed=self._rng.getrandbits(32),
            boot_time=now - self._rng.uniform(5.0, 600.0),
        )
        directory = root / sandbox_id
        shim = SimulatedShim(
            directory / SHIM_SOCKET,
            lambda: guest.render(time.time()),
            behaviour,
            chunked=root == self.go_root,
        )
        sandbox = SimSandbox(
            sandbox_id, root, flavour, guest, shim, self._new_pod(sandbox_id, flavour, now)
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.sandboxes[sandbox_id] = sandbox
        if with_socket:
            await self.start_shim(sandbox)
        if in_cri and self.cri is not None:
            self.cri.set_pod(self._with_stats(sandbox, now))
        return sandbox

    async def start_shim(self, sandbox: SimSandbox) -> None:
        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with sandbox.scope:
                await sandbox.shim.serve(task_status=task_status)

        await self._nursery.start(serve)

    def remove(self, sandbox_id: str) -> None:
        """The sandbox stops: its shim goes, then its directory, then its pod."""
        sandbox = self.sandboxes.pop(sandbox_id)
        sandbox.scope.cancel()
        shutil.rmtree(sandbox.directory, ignore_errors=True)
        if self.cri is not None:
            self.cri.remove_pod(sandbox_id)

    async def teardown(self, sandbox_id: str, gap: float = 0.2) -> None:
        """Stop a sandbox in Kata's order: the shim and its socket go first, the directory
        `gap` seconds later. Scrapes in between find no socket (kata #13735)."""
        sandbox = self.sandboxes[sandbox_id]
        sandbox.scope.cancel()
        await trio.sleep(gap)
        self.remove(sandbox_id)

    def _with_stats(self, sandbox: SimSandbox, now: float) -> PodMeta:
        """The pod with per-container stats that add up to less than the VM uses."""
        usage = guest_cpu_usage_seconds(sandbox.guest, now)
        working_set = guest_working_set_bytes(sandbox.guest, now)
        share = 0.8 / max(1, len(sandbox.pod.containers))
        containers = tuple(
            replace(
                container,
                stats=ContainerStats(
                    timestamp_ns=int(now * 1e9),
                    cpu_usage_core_ns=int(usage * share * 1e9),
                    memory_working_set_bytes=int(working_set * share),
                    memory_usage_bytes=int(working_set * share * 1.2),
                    memory_rss_bytes=int(working_set * share * 0.7),
                    memory_page_faults=int(usage * 1000 * share),
                    memory_major_page_faults=int(usage * share),
                ),
            )
            for container in sandbox.pod.containers
        )
        return replace(sandbox.pod, containers=containers)

    def refresh_cri_stats(self) -> None:
        if self.cri is None:
            return
        now = time.time()
        for sandbox in self.sandboxes.values():
            self.cri.set_pod(self._with_stats(sandbox, now))

    async def churn(self, every: float) -> None:
        """Forever: one sandbox goes away, and a new one comes, every `every` seconds."""
        while True:
            await trio.sleep(every)
            if self.sandboxes:
                self.remove(self._rng.choice(sorted(self.sandboxes)))
            await self.add(self._rng.choice(DEMO_FLAVOURS))

    async def refresh_stats_forever(self, every: float = 1.0) -> None:
        while True:
            self.refresh_cri_stats()
            await trio.sleep(every)


def guest_cpu_usage_seconds(guest: SimulatedGuest, now: float) -> float:
    per_item = guest.cpu_seconds(now)
    return sum(sum(per_item[item]) for item in ("user", "nice", "system", "irq", "softirq"))


def guest_working_set_bytes(guest: SimulatedGuest, now: float) -> float:
    meminfo = guest.meminfo(now)
    usage = meminfo["mem_total"] - meminfo["mem_free"]
    return max(0.0, usage - meminfo["inactive_file"])


DEMO_FLAVOURS = (Flavour.GO, Flavour.GO, Flavour.GO, Flavour.RUST, Flavour.FIRECRACKER)


@asynccontextmanager
async def open_fleet(
    base: Path, *, cri: SimulatedCri | None = None, seed: int | None = None
) -> AsyncIterator[SimulatedFleet]:
    """A fleet whose shims live as long as the `async with` block."""
    async with trio.open_nursery() as nursery:
        fleet = SimulatedFleet(base, nursery, cri, seed)
        for root in fleet.roots:
            root.mkdir(parents=True, exist_ok=True)
        try:
            yield fleet
        finally:
            nursery.cancel_scope.cancel()
