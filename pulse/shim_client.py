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


async def _connect(socket_path: Path) -> trio.SocketStream:
    """Connect through the sandbox directory, held open, never through a symlink.

    The directory is opened first (O_NOFOLLOW) and the socket reached as
    /proc/self/fd/<dir>/<name>: connect() follows symlinks, and a sandbox root is the one place
    where a link could make the agent talk to a socket elsewhere on the node. The short path
    also lifts the 107-byte limit of Unix socket addresses, so deep sandbox roots work.
    """
    try:
        directory = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            detail = f"sandbox directory {socket_path.parent} is a symlink or not a directory"
        else:
            detail = f"open {socket_path.parent}: {err.strerror or err}"
        raise ShimError(ScrapeFailure.CONNECT, detail) from None
    try:
        try:
            mode = os.stat(socket_path.name, dir_fd=directory, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
        if not stat.S_ISSOCK(mode):
            kind = "a symlink, not followed" if stat.S_ISLNK(mode) else "not a socket"
            raise ShimError(ScrapeFailure.CONNECT, f"{socket_path} is {kind}")
        try:
            return await trio.open_unix_socket(f"/proc/self/fd/{directory}/{socket_path.name}")
        except FileNotFoundError:
            raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
        except OSError as err:
            # ECONNREFUSED: a socket nobody listens on, typical while a shim starts or stops.
            raise ShimError(
                ScrapeFailure.CONNECT, f"connect {socket_path}: {err.strerror or err}"
            ) from None
    finally:
        os.close(directory)


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
