"""HTTP/1.1 GET over a shim's Unix socket, with a deadline and a response size cap.

The shims speak plain HTTP/1.1 on `shim-monitor.sock` (Go net/http or hyper): responses may be
chunked or carry a Content-Length. h11 does the framing so every variant is read the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import h11
import trio

from pulse.model import ScrapeFailure

USER_AGENT = "kata-pulse"
READ_SIZE = 256 * 1024


class ShimError(Exception):
    """A scrape that gave no usable body, with the reason the agent reports for it."""

    def __init__(self, reason: ScrapeFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


async def fetch(socket_path: Path, target: str, *, max_body: int) -> bytes:
    """GET `target` from the HTTP server on `socket_path`; the body of a 200 response.

    Raises ShimError for anything else. The caller bounds it in time with a cancel scope.
    """
    stream = await _connect(socket_path)
    async with stream:
        return await _exchange(stream, target, max_body)


def _refuse_symlinks(socket_path: Path) -> None:
    """The sandbox directory and its socket must be what they claim, not symlinks.

    connect() follows symlinks, and a sandbox root is the one place a symlink could make the
    agent talk to a socket elsewhere on the node. The check and the connect are not atomic;
    it stops a link that is there, and the roots are writable by the runtime only.
    """
    for path, wanted, what in (
        (socket_path.parent, stat.S_ISDIR, "sandbox directory"),
        (socket_path, stat.S_ISSOCK, "socket"),
    ):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
        except OSError as err:
            raise ShimError(ScrapeFailure.CONNECT, f"stat {path}: {err.strerror or err}") from None
        if stat.S_ISLNK(mode):
            raise ShimError(ScrapeFailure.CONNECT, f"{what} {path} is a symlink, not followed")
        if not wanted(mode):
            raise ShimError(ScrapeFailure.CONNECT, f"{what} {path} is not a {what}")


async def _connect(socket_path: Path) -> trio.SocketStream:
    _refuse_symlinks(socket_path)
    try:
        return await trio.open_unix_socket(str(socket_path))
    except FileNotFoundError:
        raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
    except OSError as err:
        # ECONNREFUSED: a socket file whose server is gone, typical while a sandbox is torn down.
        reason = ScrapeFailure.NO_SOCKET if err.errno == errno.ENOENT else ScrapeFailure.CONNECT
        raise ShimError(reason, f"connect {socket_path}: {err.strerror or err}") from None


async def _exchange(stream: trio.SocketStream, target: str, max_body: int) -> bytes:
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[
            ("Host", "shim"),
            ("User-Agent", USER_AGENT),
            ("Accept", "text/plain"),
            ("Connection", "close"),
        ],
    )
    try:
        await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, OSError) as err:
        raise ShimError(ScrapeFailure.CONNECT, f"sending request: {err}") from None

    status = 0
    chunks: list[bytes] = []
    size = 0
    received = 0
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as err:
            if received == 0:
                # Closed without a byte of answer: the shim went away (it is being torn
                # down, or crashed), which is a connection failure, not a malformed reply.
                raise ShimError(ScrapeFailure.CONNECT, "closed without a response") from None
            raise ShimError(ScrapeFailure.PROTOCOL, f"malformed HTTP response: {err}") from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, OSError) as err:
                raise ShimError(ScrapeFailure.CONNECT, f"reading response: {err}") from None
            received += len(data)
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            length = _content_length(event.headers)
            if length is not None and length > max_body:
                raise ShimError(
                    ScrapeFailure.OVERSIZE, f"Content-Length {length} exceeds {max_body} bytes"
                )
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:
                raise ShimError(ScrapeFailure.OVERSIZE, f"body exceeds {max_body} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise ShimError(ScrapeFailure.PROTOCOL, "connection closed before a full response")
    body = b"".join(chunks)
    if status != 200:
        snippet = body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
        raise ShimError(ScrapeFailure.HTTP_STATUS, f"HTTP {status}: {snippet}")
    return body


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
