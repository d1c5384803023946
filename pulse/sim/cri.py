"""A simulated CRI runtime: a real grpcio server on a real Unix socket.

It serves the RuntimeService calls kata-pulse makes (and ImageService ListImages/ImageStatus)
from a set of pods that the demo or a test changes at any time, from any thread. Like
containerd behind kubelet, it lists containers by image ID (`sha256:...`) and only
ListImages / ContainerStatus give the human name. It can be made unavailable or slow, and it
counts calls per method, so tests can check what the agent asked and when.

    with SimulatedCri(tmp / "cri.sock") as cri:
        cri.set_pod(PodMeta("abc", "web-0", "default", "uid-1", runtime_handler="kata"))
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import grpc

from pulse.cri.gen import runtime_v1_pb2 as pb
from pulse.cri.gen import runtime_v1_pb2_grpc as pb_grpc
from pulse.model import ContainerInfo, ContainerStats, PodMeta

OUTAGE_DETAIL: Final = "simulated CRI outage"


def image_id_of(name: str) -> str:
    """A stable fake image ID for an image name, in the form containerd reports."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _u64(value: int | None) -> pb.UInt64Value | None:
    return pb.UInt64Value(value=value) if value is not None else None


def stats_message(container_id: str, name: str, stats: ContainerStats) -> pb.ContainerStats:
    timestamp = stats.timestamp_ns or time.time_ns()
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=container_id, metadata=pb.ContainerMetadata(name=name)
        ),
        cpu=pb.CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u64(stats.cpu_usage_core_ns)),
        memory=pb.MemoryUsage(
            timestamp=timestamp,
            working_set_bytes=_u64(stats.memory_working_set_bytes),
            usage_bytes=_u64(stats.memory_usage_bytes),
            rss_bytes=_u64(stats.memory_rss_bytes),
            page_faults=_u64(stats.memory_page_faults),
            major_page_faults=_u64(stats.memory_major_page_faults),
        ),
        swap=pb.SwapUsage(timestamp=timestamp, swap_usage_bytes=_u64(stats.memory_swap_bytes))
        if stats.memory_swap_bytes is not None
        else None,
    )


def sandbox_info_json(pod: PodMeta) -> str:
    """The verbose PodSandboxStatus "info" document, shaped like containerd's."""
    config: dict[str, Any] = {
        "metadata": {"name": pod.name, "uid": pod.uid, "namespace": pod.namespace},
        "linux": {"cgroup_parent": pod.cgroup_parent} if pod.cgroup_parent else {},
    }
    info: dict[str, Any] = {"runtimeHandler": pod.runtime_handler, "config": config}
    if pod.sandbox_image:
        info["image"] = pod.sandbox_image
    return json.dumps(info)


class _State:
    """The simulated runtime's data; every access holds the lock (gRPC serves from threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, PodMeta] = {}
        self.down = False
        self.delay = 0.0
        self.delayed_methods: frozenset[str] | None = None  # None: every method
        self.calls: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()
        self.stopping = threading.Event()


class _Servicer(pb_grpc.RuntimeServiceServicer, pb_grpc.ImageServiceServicer):
    def __init__(self, state: _State, runtime_name: str, runtime_version: str) -> None:
        self._state = state
        self._runtime_name = runtime_name
        self._runtime_version = runtime_version

    def _enter(self, method: str, context: grpc.ServicerContext) -> list[PodMeta]:
        """Count the call, apply the outage and delay settings, return the current pods."""
        state = self._state
        with state.lock:
            state.calls[method] += 1
            delay = state.delay
            if state.delayed_methods is not None and method not in state.delayed_methods:
                delay = 0.0
            down = state.down
        if delay > 0:
            end = time.monotonic() + delay
            while (remaining := end - time.monotonic()) > 0 and not state.stopping.is_set():
                if not context.is_active():
                    with state.lock:
                        state.cancelled[method] += 1
                    context.abort(grpc.StatusCode.CANCELLED, "client went away")
                state.stopping.wait(min(remaining, 0.01))
        if down:
            context.abort(grpc.StatusCode.UNAVAILABLE, OUTAGE_DETAIL)
        with state.lock:
            return list(state.pods.values())

    # --- RuntimeService -------------------------------------------------------------------

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> Any:
        self._enter("Version", context)
        return pb.VersionResponse(
            version="0.1.0",
            runtime_name=self._runtime_name,
            runtime_version=self._runtime_version,
            runtime_api_version="v1",
        )

    def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext
    ) -> Any:
        pods = self._enter("ListPodSandbox", context)
        return pb.ListPodSandboxResponse(items=[_sandbox_message(pod) for pod in pods])

    def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext
    ) -> Any:
        pods = {pod.sandbox_id: pod for pod in self._enter("PodSandboxStatus", context)}
        pod = pods.get(request.pod_sandbox_id)
        if pod is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {request.pod_sandbox_id} not found")
        sandbox = _sandbox_message(pod)
        status = pb.PodSandboxStatus(
            id=sandbox.id,
            metadata=sandbox.metadata,
            state=sandbox.state,
            created_at=sandbox.created_at,
            runtime_handler=sandbox.runtime_handler,
        )
        info = {"info": sandbox_info_json(pod)} if request.verbose else {}
        return pb.PodSandboxStatusResponse(status=status, info=info)

    def ListContainers(
        self, request: pb.ListContainersRequest, context: grpc.ServicerContext
    ) -> Any:
        pods = self._enter("ListContainers", context)
        return pb.ListContainersResponse(
            containers=[
                _container_message(pod.sandbox_id, container)
                for pod in pods
                for container in pod.containers
            ]
        )

    def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext
    ) -> Any:
        pods = self._enter("ContainerStatus", context)
        for pod in pods:
            for container in pod.containers:
                if container.container_id == request.container_id:
                    listed = _container_message(pod.sandbox_id, container)
                    # Like containerd: the status resolves the image ID to its repo tag.
                    return pb.ContainerStatusResponse(
                        status=pb.ContainerStatus(
                            id=listed.id,
                            metadata=listed.metadata,
                            state=listed.state,
                            created_at=listed.created_at,
                            image=pb.ImageSpec(image=container.image),
                            image_ref=listed.image_ref,
                            image_id=listed.image_id,
                        )
                    )
        context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id} not found")

    def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: grpc.ServicerContext
    ) -> Any:
        pods = self._enter("ListContainerStats", context)
        return pb.ListContainerStatsResponse(
            stats=[
                stats_message(container.container_id, container.name, container.stats)
                for pod in pods
                for container in pod.containers
                if container.stats is not None and container.state == "CONTAINER_RUNNING"
            ]
        )

    # --- ImageService ---------------------------------------------------------------------

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> Any:
        pods = self._enter("ListImages", context)
        names = sorted({c.image for pod in pods for c in pod.containers if c.image})
        return pb.ListImagesResponse(
            images=[pb.Image(id=image_id_of(name), repo_tags=[name], size=1) for name in names]
        )

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> Any:
        pods = self._enter("ImageStatus", context)
        for pod in pods:
            for container in pod.containers:
                wanted = request.image.image
                if wanted in (container.image, image_id_of(container.image)):
                    name = container.image
                    return pb.ImageStatusResponse(
                        image=pb.Image(id=image_id_of(name), repo_tags=[name], size=1)
                    )
        return pb.ImageStatusResponse()


def _sandbox_message(pod: PodMeta) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pod.sandbox_id,
        metadata=pb.PodSandboxMetadata(name=pod.name, uid=pod.uid, namespace=pod.namespace),
        state=pod.state or "SANDBOX_READY",
        created_at=pod.created_at_ns,
        runtime_handler=pod.runtime_handler,
        labels={
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        },
    )


def _container_message(sandbox_id: str, container: ContainerInfo) -> pb.Container:
    # kubelet creates containers from the image ID, so that is what the runtime lists.
    image_id = image_id_of(container.image) if container.image else ""
    return pb.Container(
        id=container.container_id,
        pod_sandbox_id=sandbox_id,
        metadata=pb.ContainerMetadata(name=container.name),
        image=pb.ImageSpec(image=image_id),
        image_ref=container.image_ref or image_id,
        image_id=image_id,
        state=container.state or "CONTAINER_RUNNING",
        created_at=container.created_at_ns,
    )


class SimulatedCri:
    """A CRI server for tests and the demo; every method is thread-safe."""

    def __init__(
        self,
        socket_path: Path | str,
        *,
        runtime_name: str = "containerd",
        runtime_version: str = "1.7.0-kata-pulse-sim",
        image_service: bool = True,
        max_workers: int = 8,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.runtime_name = runtime_name
        self.runtime_version = runtime_version
        self._image_service = image_service
        self._max_workers = max_workers
        self._state = _State()
        self._server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> SimulatedCri:
        if self._server is not None:
            raise RuntimeError("simulated CRI already started")
        self._state.stopping.clear()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        servicer = _Servicer(self._state, self.runtime_name, self.runtime_version)
        # The generated registration functions carry no annotations.
        pb_grpc.add_RuntimeServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        if self._image_service:
            pb_grpc.add_ImageServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        if server.add_insecure_port(self.target) == 0:
            raise OSError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving and remove the socket, as a runtime that exits does."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()
        server.stop(grace).wait()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> SimulatedCri:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what the runtime knows ---------------------------------------------------------------

    def set_pod(self, pod: PodMeta) -> None:
        """Add or replace a pod (its containers and their stats come with it)."""
        if not pod.created_at_ns:
            pod = replace(pod, created_at_ns=time.time_ns())
        with self._state.lock:
            self._state.pods[pod.sandbox_id] = pod

    def remove_pod(self, sandbox_id: str) -> None:
        with self._state.lock:
            self._state.pods.pop(sandbox_id, None)

    def set_container_stats(self, container_id: str, stats: ContainerStats | None) -> None:
        with self._state.lock:
            for sandbox_id, pod in self._state.pods.items():
                containers = tuple(
                    replace(c, stats=stats) if c.container_id == container_id else c
                    for c in pod.containers
                )
                if containers != pod.containers:
                    self._state.pods[sandbox_id] = replace(pod, containers=containers)
                    return
        raise KeyError(f"no container {container_id}")

    def pods(self) -> dict[str, PodMeta]:
        with self._state.lock:
            return dict(self._state.pods)

    # --- misbehaviour -------------------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        """While down, every call fails with UNAVAILABLE (the socket stays)."""
        with self._state.lock:
            self._state.down = down

    def set_delay(self, seconds: float, methods: Iterable[str] | None = None) -> None:
        """Answer every call (or only `methods`) `seconds` late."""
        with self._state.lock:
            self._state.delay = seconds
            self._state.delayed_methods = frozenset(methods) if methods is not None else None

    # --- what the client asked ----------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """Calls received per method name (a copy)."""
        with self._state.lock:
            return Counter(self._state.calls)

    @property
    def cancelled(self) -> Counter[str]:
        """Delayed calls the client cancelled (deadline or cancel scope) before the answer."""
        with self._state.lock:
            return Counter(self._state.cancelled)

    def reset_calls(self) -> None:
        with self._state.lock:
            self._state.calls.clear()
            self._state.cancelled.clear()
