"""An async client for the CRI (runtime.v1) over a Unix socket, for Trio.

gRPC's Python API is blocking or callback-based. Every RPC here is started as a grpc future,
which gRPC runs on its own threads, and awaited through a Trio event set from gRPC's done
callback, so the Trio thread never blocks on the network. Each call runs inside its own cancel
scope with a deadline (the CRI timeout, default 2 s) that is also sent to the server; when that
scope or any enclosing one is cancelled, the RPC is cancelled too, so a hung runtime cannot pile
up calls.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from pulse.config import Config
from pulse.cri.gen import runtime_v1_pb2 as pb

RUNTIME_SERVICE: Final = "runtime.v1.RuntimeService"
IMAGE_SERVICE: Final = "runtime.v1.ImageService"

# kubelet allows 16 MiB CRI answers; ListContainerStats on a busy node exceeds gRPC's 4 MiB.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class CriError(Exception):
    """A CRI call that gave no answer: the runtime refused it, failed, or missed the deadline."""

    def __init__(self, method: str, code: str, detail: str) -> None:
        super().__init__(f"{method}: {code}: {detail}")
        self.method = method
        self.code = code  # a grpc.StatusCode name, e.g. UNAVAILABLE, DEADLINE_EXCEEDED
        self.detail = detail


def endpoint_target(socket_path: Path) -> str:
    """The gRPC target of a Unix socket path; gRPC needs the absolute `unix:///...` form."""
    return f"unix://{socket_path}"


def channel_options(reconnect_cap: float) -> list[tuple[str, int]]:
    # gRPC's own reconnect backoff grows to two minutes by default; capping it keeps a
    # restarted runtime from staying invisible longer than our own retry period.
    cap_ms = max(100, int(reconnect_cap * 1000))
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", min(100, cap_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, cap_ms)),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
        ("grpc.enable_http_proxy", 0),
    ]


async def _wait_for(future: grpc.CallFuture[ResponseT]) -> None:
    """Sleep until the future is done; cancel the RPC if we are cancelled first."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def on_done(_: object) -> None:
        # RunFinishedError: the agent is shutting down and nobody waits any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(on_done)
    try:
        await done.wait()
    except BaseException:
        future.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel untyped
        raise


class CriClient:
    """One gRPC channel to a CRI runtime (containerd, CRI-O), created on first use.

    The channel is dropped after an UNAVAILABLE answer so the next call checks the socket again
    and connects afresh: a runtime that restarts (new socket inode) is picked up at once.
    """

    def __init__(self, socket_path: Path, timeout: float = 2.0) -> None:
        if not timeout > 0:
            raise ValueError(f"CRI timeout must be > 0, got {timeout}")
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._reconnect_cap = max(timeout, 1.0)

    @classmethod
    def from_config(cls, config: Config) -> CriClient:
        client = cls(config.runtime_endpoint, config.cri_timeout)
        client._reconnect_cap = min(config.cri_sync_interval, 5.0)
        return client

    async def __aenter__(self) -> CriClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._drop(self._channel)

    async def _drop(self, channel: grpc.Channel) -> None:
        """Forget and close `channel`, unless another task already replaced it."""
        if self._channel is channel:
            self._channel = None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(channel.close)

    async def _get_channel(self, method: str) -> grpc.Channel:
        if self._channel is not None:
            return self._channel
        # Without this check gRPC reports a missing socket as a generic connect failure.
        exists = await trio.Path(self.socket_path).is_socket()
        channel = self._current_channel()
        if channel is not None:  # another task connected while we looked
            return channel
        if not exists:
            raise CriError(
                method, "UNAVAILABLE", f"no socket at {self.socket_path} (runtime not up yet)"
            )
        channel = grpc.insecure_channel(
            endpoint_target(self.socket_path), options=channel_options(self._reconnect_cap)
        )
        self._channel = channel
        return channel

    def _current_channel(self) -> grpc.Channel | None:
        # A method call, so the type checker does not assume the await above changed nothing.
        return self._channel

    async def call(
        self,
        service: str,
        method: str,
        request: RequestT,
        response_type: type[ResponseT],
        *,
        time_limit: float | None = None,
    ) -> ResponseT:
        """Call `/<service>/<method>` with a deadline; raise CriError on any failure."""
        deadline = self.timeout if time_limit is None else time_limit
        channel = await self._get_channel(method)
        rpc: grpc.UnaryUnaryMultiCallable[RequestT, ResponseT] = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        future = rpc.future(request, timeout=deadline if math.isfinite(deadline) else None)
        with trio.move_on_after(deadline) as scope:
            await _wait_for(future)
        if scope.cancelled_caught:
            raise CriError(method, "DEADLINE_EXCEEDED", f"no answer within {deadline:g}s")
        error = future.exception()
        if error is None:
            return future.result()
        if isinstance(error, grpc.Call):
            code = error.code()
            code_name = code.name if code is not None else "UNKNOWN"
            if code == grpc.StatusCode.UNAVAILABLE:
                await self._drop(channel)
            raise CriError(method, code_name, error.details() or "") from None
        raise CriError(method, "UNKNOWN", repr(error)) from None

    # --- RuntimeService -------------------------------------------------------------------

    async def version(self) -> pb.VersionResponse:
        return await self.call(
            RUNTIME_SERVICE, "Version", pb.VersionRequest(version="v1"), pb.VersionResponse
        )

    async def list_pod_sandboxes(self) -> Sequence[pb.PodSandbox]:
        response = await self.call(
            RUNTIME_SERVICE, "ListPodSandbox", pb.ListPodSandboxRequest(), pb.ListPodSandboxResponse
        )
        return list(response.items)

    async def pod_sandbox_status(
        self, sandbox_id: str, *, verbose: bool = True
    ) -> pb.PodSandboxStatusResponse:
        return await self.call(
            RUNTIME_SERVICE,
            "PodSandboxStatus",
            pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose),
            pb.PodSandboxStatusResponse,
        )

    async def list_containers(self) -> Sequence[pb.Container]:
        response = await self.call(
            RUNTIME_SERVICE, "ListContainers", pb.ListContainersRequest(), pb.ListContainersResponse
        )
        return list(response.containers)

    async def container_status(self, container_id: str) -> pb.ContainerStatus:
        response = await self.call(
            RUNTIME_SERVICE,
            "ContainerStatus",
            pb.ContainerStatusRequest(container_id=container_id),
            pb.ContainerStatusResponse,
        )
        return response.status

    async def list_container_stats(self) -> Sequence[pb.ContainerStats]:
        response = await self.call(
            RUNTIME_SERVICE,
            "ListContainerStats",
            pb.ListContainerStatsRequest(),
            pb.ListContainerStatsResponse,
        )
        return list(response.stats)

    # --- ImageService ---------------------------------------------------------------------

    async def list_images(self) -> Sequence[pb.Image]:
        response = await self.call(
            IMAGE_SERVICE, "ListImages", pb.ListImagesRequest(), pb.ListImagesResponse
        )
        return list(response.images)
