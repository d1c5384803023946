"""A simulated Kata shim: a real HTTP/1.1 server on a real `shim-monitor.sock`.

Besides serving good bodies it can misbehave the ways real shims and dying sandboxes do, so the
fault tests exercise the agent's real socket and HTTP code paths. Like Go's net/http (and hyper)
it keeps a connection open for further requests unless the client asks it to close, and never
times an idle connection out.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Callable
from pathlib import Path

import h11
import trio

from pulse.logs import get_logger

log = get_logger("sim.shim")


class Behaviour(enum.StrEnum):
    HEALTHY = "healthy"
    HANG = "hang"  # accept, read the request, never answer
    TRICKLE = "trickle"  # answer one byte per second
    GARBAGE = "garbage"  # 200 with a body that is not Prometheus text
    TRUNCATED = "truncated"  # Content-Length promises more than is sent, then close
    HUGE = "huge"  # a body far beyond any sane size cap
    VANISH = "vanish"  # close the connection halfway through the body
    ERROR = "error"  # HTTP 500


BodySource = Callable[[], bytes]
HUGE_BODY_BYTES = 100 * 1024 * 1024
GARBAGE = b"\x00\xff not prometheus {{{\n" * 64
# What Go's net/http adds to a response when the client asked to close the connection.
_CLOSE = "Connection: close\r\n"


class SimulatedShim:
    """Serves `GET /metrics` on `socket_path` until cancelled; behaviour can change at any time."""

    def __init__(
        self,
        socket_path: Path,
        body: BodySource,
        behaviour: Behaviour = Behaviour.HEALTHY,
        *,
        chunked: bool = False,
    ) -> None:
        self.socket_path = socket_path
        self.body = body
        self.behaviour = behaviour
        # Go's net/http answers a large /metrics without Content-Length, chunked; hyper (the
        # runtime-rs shim) sends Content-Length. Both must be read the same way.
        self.chunked = chunked
        self.requests = 0
        self.connections = 0  # accepted so far
        self.open_connections = 0  # not yet closed by either side

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        # Bound and listening under a temporary name, then renamed into place: the socket
        # appears only once it accepts, so a client never meets a half-started shim.
        staging = self.socket_path.with_name(".staging.sock")
        try:
            staging.unlink(missing_ok=True)
            await listener.bind(os.fspath(staging))
            listener.listen(64)
            staging.rename(self.socket_path)
            listeners = [trio.SocketListener(listener)]
        except BaseException:
            listener.close()
            raise
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)
        finally:
            with trio.CancelScope(shield=True):
                await listeners[0].aclose()
            self.socket_path.unlink(missing_ok=True)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            await self._serve_connection(stream)
        finally:
            self.open_connections -= 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            connection = h11.Connection(h11.SERVER)
            while True:
                try:
                    request = await _read_request(stream, connection)
                except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError):
                    return
                if request is None:
                    return
                self.requests += 1
                keep_open = False
                # A client that gave up (a timeout on its side) is its own business.
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    keep_open = await self._respond(stream, request, _keeps_alive(request))
                if not keep_open:
                    return
                connection = _next_request(connection)

    async def _respond(
        self, stream: trio.SocketStream, request: h11.Request, keep_alive: bool
    ) -> bool:
        """Answer as the behaviour says; whether the connection may carry another request."""
        close = not keep_alive
        behaviour = self.behaviour
        if request.target != b"/metrics":
            await stream.send_all(_response(404, b"not found\n", close))
            return keep_alive
        if behaviour is Behaviour.HANG:
            await trio.sleep_forever()
        if behaviour is Behaviour.ERROR:
            await stream.send_all(_response(500, b"internal error\n", close))
            return keep_alive
        if behaviour is Behaviour.GARBAGE:
            await stream.send_all(_response(200, GARBAGE, close))
            return keep_alive
        if behaviour is Behaviour.HUGE:
            await _send_huge(stream, close)
            return False
        body = self.body()
        if behaviour is Behaviour.TRUNCATED:
            head = _head(200, len(body) + 1000, close)
            await stream.send_all(head + body[: len(body) // 2])
            return False
        if behaviour is Behaviour.VANISH:
            await stream.send_all(_head(200, len(body), close) + body[: len(body) // 2])
            return False
        if behaviour is Behaviour.TRICKLE:
            for byte in _response(200, body, close):
                await stream.send_all(bytes((byte,)))
                await trio.sleep(1)
            return keep_alive
        if self.chunked:
            await stream.send_all(_chunked_response(body, close))
        else:
            await stream.send_all(_response(200, body, close))
        return keep_alive


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    """The next whole request (any body read and dropped); None at the end of the stream."""
    request: h11.Request | None = None
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16 * 1024)
            if not data:
                return None
            connection.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            continue
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request
        else:
            return None


def _keeps_alive(request: h11.Request) -> bool:
    """HTTP/1.1 keeps the connection unless the client sends "Connection: close"."""
    if request.http_version != b"1.1":
        return False
    options = {
        option.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for option in value.split(b",")
    }
    return b"close" not in options


def _next_request(finished: h11.Connection) -> h11.Connection:
    """A parser for the connection's next request, fed what already came after this one.

    The responses are written by hand, not through h11, so its server side never reaches the
    state where it could start the next cycle itself."""
    connection = h11.Connection(h11.SERVER)
    pending, _ = finished.trailing_data
    if pending:
        connection.receive_data(pending)
    return connection


def _head(status: int, length: int, close: bool) -> bytes:
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {length}\r\n"
        f"{_CLOSE if close else ''}\r\n"
    ).encode()


def _response(status: int, body: bytes, close: bool) -> bytes:
    return _head(status, len(body), close) + body


def _chunked_response(body: bytes, close: bool, chunk_size: int = 4096) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\n" + (_CLOSE.encode() if close else b"") + b"\r\n"
    )
    chunks = [
        b"%x\r\n%s\r\n" % (len(body[i : i + chunk_size]), body[i : i + chunk_size])
        for i in range(0, len(body), chunk_size)
    ]
    return head + b"".join(chunks) + b"0\r\n\r\n"


async def _send_huge(stream: trio.SocketStream, close: bool) -> None:
    line = b'kata_guest_meminfo{item="mem_total"} 1\n' * 1024
    await stream.send_all(_head(200, HUGE_BODY_BYTES, close))
    sent = 0
    while sent < HUGE_BODY_BYTES:
        await stream.send_all(line)
        sent += len(line)
