"""Clients that stop reading, over real TCP: bounded memory, then disconnection.

These run on real sockets and the kernel's clock (TCP_USER_TIMEOUT), so they use short real
bounds; they assert what happens, never how fast.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from pulse.web.stream import CLOSE_STALLED, StreamLimits

from .support import Publisher, app_server, make_view, next_message, wait_until

SANDBOXES = 200
CLIENT_RECEIVE_BUFFER = 32 * 1024


def _fleet(round_: int) -> list:  # type: ignore[type-arg]
    # Long pod names make each update batch large, so socket buffers fill in a few batches.
    return [
        make_view(n, cpu=float(round_), pod_name=f"pod-{n}-" + "x" * 150)
        for n in range(1, SANDBOXES + 1)
    ]


@asynccontextmanager
async def small_window_client(url: str) -> AsyncIterator[tuple[WebSocketConnection, int]]:
    """A websocket client with a small fixed receive buffer, which reads only when asked.

    trio-websocket's reader stops taking data from the socket once its one-message queue is
    full, so a client that does not call get_message() stops reading at the TCP level.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RECEIVE_BUFFER)
    await sock.connect((parts.hostname, parts.port))
    local_port = sock.getsockname()[1]
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery, stream, parts.hostname, parts.path, message_queue_size=1
        )
        try:
            yield ws, local_port
        finally:
            with trio.move_on_after(2) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            nursery.cancel_scope.cancel()


def _server_send_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the server has sent to this client and the client's kernel has not acknowledged.

    On loopback acknowledgements are immediate, so a non-zero value means the client's receive
    window is closed: it has stopped reading.
    """
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[0], 16)
    return None


async def _publish_rounds(publisher: Publisher, first: int, count: int) -> None:
    for round_ in range(first, first + count):
        publisher.publish({v.sandbox_id: v for v in _fleet(round_)})
        await trio.sleep(0.002)


async def _allocated_while(work: Awaitable[None]) -> int:
    """Bytes allocated while `work` ran that are still alive after it (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        await work
        gc.collect()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


async def _publish_until_blocked(publisher: Publisher, server_port: int, client_port: int) -> int:
    """Publish until the kernel holds data the client does not take: from then on the server's
    send to this client is blocked. The next round number."""
    round_ = 1
    with trio.fail_after(20):
        while not _server_send_queue(server_port, client_port):
            await _publish_rounds(publisher, round_, 5)
            round_ += 5
    return round_


async def test_silent_client_does_not_grow_memory_and_is_cut_off() -> None:
    publisher = Publisher(_fleet(0))
    limits = StreamLimits(stall_seconds=0.5, heartbeat_seconds=60.0)
    async with app_server(publisher, limits=limits, abort_stalled_after=4.0) as served:
        server_port = urlsplit(served.url).port
        assert server_port is not None
        async with small_window_client(served.ws_url) as (silent, client_port):
            await wait_until(lambda: served.web.websocket_clients == 1)
            round_ = await _publish_until_blocked(publisher, server_port, client_port)
            await _publish_rounds(publisher, round_, 10)
            round_ += 10
            # Each round is a ~140 KB batch for this client: queueing them would keep megabytes.
            grown = await _allocated_while(_publish_rounds(publisher, round_, 50))
            assert served.web.websocket_clients == 1  # measured while it was still connected
            assert grown < 512 * 1024, f"{grown} bytes still allocated"

            # The client never reads again: the connection is dropped and its slot freed.
            await wait_until(lambda: served.web.websocket_clients == 0)
            with pytest.raises(ConnectionClosed), trio.fail_after(10):
                while True:
                    await silent.get_message()

        # Others are served as before.
        async with small_window_client(served.ws_url) as (fresh, _):
            assert (await next_message(fresh))["type"] == "snapshot"


async def test_client_that_pauses_too_long_is_closed_with_4008() -> None:
    publisher = Publisher(_fleet(0))
    limits = StreamLimits(stall_seconds=0.5, heartbeat_seconds=60.0)
    async with app_server(publisher, limits=limits, abort_stalled_after=30.0) as served:
        server_port = urlsplit(served.url).port
        assert server_port is not None
        async with small_window_client(served.ws_url) as (paused, client_port):
            await wait_until(lambda: served.web.websocket_clients == 1)
            round_ = await _publish_until_blocked(publisher, server_port, client_port)
            await _publish_rounds(publisher, round_, 5)
            await trio.sleep(limits.stall_seconds * 3)  # the pause; then the client reads again
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(20):
                while True:
                    await paused.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == CLOSE_STALLED
        assert "stopped reading" in (closed.value.reason.reason or "")
        await wait_until(lambda: served.web.websocket_clients == 0)
