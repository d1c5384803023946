"""Shared pieces of the live-view tests: servers, snapshots built by hand, stream clients."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from quart_trio import QuartTrio
from trio_websocket import WebSocketConnection, open_websocket_url

from pulse.agent import RunningAgent, run_agent
from pulse.config import Config
from pulse.model import PodMeta, RuntimeKind, SandboxState
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import SimulatedFleet, open_fleet
from pulse.snapshot import AgentCounters, Board, CriStatus, LiveStats, SandboxView, Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.server import serve_app
from pulse.web.stream import StreamLimits, abort_stalled_peers, register_stream

GO_ROOT = Path("/run/vc/sbs")


def sandbox_id(n: int) -> str:
    return f"{n:064x}"


def make_view(
    n: int,
    *,
    namespace: str | None = "default",
    cpu: float | None = 0.25,
    memory: float | None = 64 * 1024 * 1024,
    collected_at: float | None = 1_700_000_000.0,
    state: SandboxState = SandboxState.UP,
    pod_name: str | None = None,
) -> SandboxView:
    sid = sandbox_id(n)
    pod = (
        PodMeta(sid, pod_name or f"pod-{n}", namespace, f"uid-{n}", runtime_handler="kata")
        if namespace is not None
        else None
    )
    return SandboxView(
        sid,
        GO_ROOT,
        RuntimeKind.GO,
        state,
        1_700_000_000.0,
        pod=pod,
        last_success=collected_at,
        live=LiveStats(
            cpu_cores=cpu,
            memory_working_set_bytes=memory,
            network_receive_bytes_per_second=1000.0,
            network_transmit_bytes_per_second=2000.0,
            disk_read_bytes_per_second=0.0,
            disk_write_bytes_per_second=512.0,
        ),
    )


class Publisher:
    """Stands in for the cache owner: publishes snapshots built from views on a real Board."""

    def __init__(self, views: Iterable[SandboxView] = ()) -> None:
        self.version = 1
        self.board: Board[Snapshot] = Board(self._snapshot({v.sandbox_id: v for v in views}))

    def _snapshot(self, sandboxes: dict[str, SandboxView]) -> Snapshot:
        return Snapshot(
            self.version,
            1_700_000_000.0,
            True,
            dict(sorted(sandboxes.items())),
            CriStatus("/run/containerd/containerd.sock", up=True),
            AgentCounters(),
        )

    @property
    def sandboxes(self) -> dict[str, SandboxView]:
        return dict(self.board.current.sandboxes)

    def publish(self, sandboxes: dict[str, SandboxView]) -> Snapshot:
        self.version += 1
        snapshot = self._snapshot(sandboxes)
        self.board.publish(snapshot)
        return snapshot

    def put(self, *views: SandboxView) -> Snapshot:
        sandboxes = self.sandboxes
        sandboxes.update((v.sandbox_id, v) for v in views)
        return self.publish(sandboxes)

    def drop(self, *ids: str) -> Snapshot:
        sandboxes = self.sandboxes
        for sid in ids:
            del sandboxes[sid]
        return self.publish(sandboxes)

    def touch(self, n: int, **live: float) -> Snapshot:
        """A new collection of sandbox n: new rates, a later collection time."""
        view = self.board.current.sandboxes[sandbox_id(n)]
        later = (view.last_success or 0.0) + 1.0
        return self.put(view.with_changes(last_success=later, live=replace(view.live, **live)))


@dataclass(frozen=True, slots=True)
class Served:
    url: str  # http://127.0.0.1:PORT
    web: WebState

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"


async def serve_loopback(
    app: QuartTrio,
    *,
    abort_stalled_after: float | None = None,
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn (trio worker) on 127.0.0.1, the way the agent's server runs it."""
    hconfig = HypercornConfig()
    hconfig.bind = [f"127.0.0.1:{port}"]
    hconfig.accesslog = None
    hconfig.graceful_timeout = 0.5
    sockets = hconfig.create_sockets()
    for sock in sockets.insecure_sockets:
        if abort_stalled_after is not None:
            abort_stalled_peers(sock, abort_stalled_after)
        sock.listen(hconfig.backlog)

    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve_app(app, hconfig, sockets, task_status=task_status)
        )
        task_status.started(addresses[0])


@asynccontextmanager
async def app_server(
    publisher: Publisher,
    config: Config | None = None,
    limits: StreamLimits | None = None,
    *,
    abort_stalled_after: float | None = None,
    port: int = 0,
) -> AsyncIterator[Served]:
    """The agent's real web app (create_app) over a hand-fed board; with `limits`, a bare app
    with only the stream, so tests can shorten its timings."""
    config = config or Config(listen_port=0)
    web = WebState()
    if limits is None:
        app = create_app(config, publisher.board, web)
    else:
        app = QuartTrio("kata-pulse-test", static_folder=None)
        register_stream(app, config, publisher.board, web, limits)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_loopback(
                app, abort_stalled_after=abort_stalled_after, port=port, task_status=task_status
            )
        )
        try:
            yield Served(url, web)
        finally:
            nursery.cancel_scope.cancel()


async def serve_app_until_cancelled(
    scope: trio.CancelScope,
    publisher: Publisher,
    *,
    task_status: trio.TaskStatus[Served] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An app server for `publisher` until `scope` is cancelled (a server that goes away)."""
    with scope:
        async with app_server(publisher) as served:
            task_status.started(served)
            await trio.sleep_forever()


@contextmanager
def short_directory() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; a 64-hex sandbox directory under pytest's
    # tmp_path would not fit.
    path = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class LiveAgent:
    agent: RunningAgent
    fleet: SimulatedFleet
    cri: SimulatedCri

    @property
    def url(self) -> str:
        return self.agent.url

    @property
    def ws_url(self) -> str:
        return "ws" + self.agent.url.removeprefix("http") + "/ws"


@asynccontextmanager
async def agent_with_fleet(
    sandboxes: int, *, seed: int = 7, interval: float = 0.2, **config: Any
) -> AsyncIterator[LiveAgent]:
    """The real agent (every actor) watching a simulated fleet through a simulated CRI."""
    with short_directory() as base, SimulatedCri(base / "cri.sock") as cri:
        async with open_fleet(base, cri=cri, seed=seed) as fleet:
            for _ in range(sandboxes):
                await fleet.add()
            agent_config = Config(
                listen_host="127.0.0.1",
                listen_port=0,
                sandbox_dirs=fleet.roots,
                runtime_endpoint=base / "cri.sock",
                metrics_interval=interval,
                cri_sync_interval=interval,
                **config,
            )
            async with trio.open_nursery() as nursery:
                agent = await nursery.start(run_agent, agent_config)
                nursery.start_soon(fleet.refresh_stats_forever, interval)
                try:
                    yield LiveAgent(agent, fleet, cri)
                finally:
                    nursery.cancel_scope.cancel()


MESSAGE_WAIT = 10.0  # generous: a failure shows as a timeout, never as a wrong assertion


async def next_message(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(MESSAGE_WAIT):
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def next_of(ws: WebSocketConnection, *kinds: str) -> dict[str, Any]:
    """The next message of one of these types, skipping others (heartbeats, other updates)."""
    with trio.fail_after(MESSAGE_WAIT):
        while True:
            message = await next_message(ws)
            if message["type"] in kinds:
                return message


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a plain value (a gauge, a counter) that has no event to wait on."""
    with trio.fail_after(MESSAGE_WAIT):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the value itself
            await trio.sleep(0.01)


def connect(url: str, origin: str | None = None, **kwargs: Any) -> Any:
    headers = [(b"origin", origin.encode())] if origin is not None else None
    return open_websocket_url(url, extra_headers=headers, **kwargs)
