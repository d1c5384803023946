"""HTTP/1.1 GET over a shim's Unix socket, with a deadline and a response size cap.

The shims speak plain HTTP/1.1 on `shim-monitor.sock` (Go net/http or hyper): responses may be
chunked, carry a Content-Length, or (HTTP/1.0 style) run until the connection closes. The
response reader below is written for this one exchange: the agent scrapes hundreds of shims
every cycle, and a general-purpose HTTP state machine cost more CPU than the rest of a scrape.
It buffers into one bytearray and does its searching with bytes.find and compiled patterns, so
the per-byte work happens in C; Python code runs per read, per header line and per chunk.

A collector holds one `ShimConnection` for its sandbox and reuses it from one collection to the
next (both shim servers keep HTTP/1.1 connections alive and never time them out): opening a
connection per scrape (directory, stat, socket, connect, close, poller registration) cost about
a third of the CPU of the exchange itself. `fetch` is the one-shot form.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from pulse.model import ScrapeFailure

USER_AGENT = "kata-pulse"
READ_SIZE = 256 * 1024
# The whole response head, interim (1xx) heads included, and separately the chunked trailers.
MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line with its extensions; real ones are a few bytes.
MAX_CHUNK_LINE_BYTES = 4 * 1024
# Longer Content-Length values are refused as oversize without converting them: Python caps
# decimal conversion of long strings, and no cap the agent uses needs more than 18 digits.
MAX_LENGTH_DIGITS = 18

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# The size, then optional extensions, which are ignored but may not hold control characters.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_NO_BODY_STATUSES = frozenset({204, 304})


class ShimError(Exception):
    """A scrape that gave no usable body, with the reason the agent reports for it."""

    def __init__(self, reason: ScrapeFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _NoAnswer(ShimError):
    """The connection failed before a byte of the response came: the request went unserved.

    On a reused connection that is the server having closed it while it sat idle, and the GET
    may be sent again on a new one; on a new connection it is the shim going away."""

    def __init__(self, detail: str) -> None:
        super().__init__(ScrapeFailure.CONNECT, detail)


async def fetch(socket_path: Path, target: str, *, max_body: int) -> bytes:
    """GET `target` from the HTTP server on `socket_path`; the body of a 200 response.

    One connection, closed afterwards. Raises ShimError for anything else. The caller bounds
    it in time with a cancel scope.
    """
    request = _request(target, close=True)
    link = _Link(_connect(socket_path))
    try:
        response = await _exchange(link.stream, request, max_body)
    finally:
        link.close()
    return response.ok_body()


class ShimConnection(trio.abc.AsyncResource):
    """GETs to one shim over one HTTP/1.1 connection, kept open between them when it can be.

    Connected on the first `get`; after a complete response that keeps the connection alive it
    is kept for the next, otherwise closed and the next `get` connects again, the same safe way
    as `fetch`. Owned by one task: its requests must not overlap. A request that fails or is
    cancelled half way (the caller's timeout) closes the connection, so no half-read response
    is ever mistaken for the next one's.
    """

    __slots__ = ("_closed", "_idle", "socket_path")

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._idle: _Link | None = None  # the connection kept between requests
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether a connection is kept for the next request."""
        return self._idle is not None

    async def get(self, target: str, *, max_body: int) -> bytes:
        """GET `target`; the body of a 200 response, ShimError for anything else (as fetch)."""
        if self._closed:
            raise trio.ClosedResourceError("the shim connection was closed")
        request = _request(target, close=False)
        link = self._take_idle()
        if link is not None:
            try:
                return await self._exchange(link, request, max_body)
            except _NoAnswer:
                # The server closed the idle connection as the request went out (the shim
                # restarted, or its server times idle connections out): nothing was served,
                # so the GET is sent once more, at once, on a new connection.
                pass
        return await self._exchange(_Link(_connect(self.socket_path)), request, max_body)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the kept connection at once (no checkpoint); later gets are refused."""
        self._closed = True
        link, self._idle = self._idle, None
        if link is not None:
            link.close()

    def _take_idle(self) -> _Link | None:
        link, self._idle = self._idle, None
        if link is None or link.quiet():
            return link
        link.close()
        return None

    async def _exchange(self, link: _Link, request: bytes, max_body: int) -> bytes:
        response: _Response | None = None
        try:
            response = await _exchange(link.stream, request, max_body)
        finally:
            # Only after a whole response: an error or a cancellation leaves the connection
            # somewhere inside a response, which the next request would read as its own.
            if response is not None and response.reusable and not self._closed:
                self._idle = link
            else:
                link.close()
        return response.ok_body()


class _Link:
    """A connected socket and its Trio stream; the plain socket allows a non-blocking peek."""

    __slots__ = ("sock", "stream", "trio_stream")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.trio_stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.stream = _EagerStream(sock, self.trio_stream)

    def quiet(self) -> bool:
        """Nothing to read on an idle connection, so a request may go out on it.

        An end of stream (the server closed it), an error, or bytes nobody asked for (which
        would be read as the next response) each make it unusable."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        # The Trio socket's close: it also wakes any task waiting on the socket.
        self.trio_stream.socket.close()


class _ByteStream(Protocol):
    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...


class _EagerStream:
    """Sends and receives on the socket at once when it can, through Trio only when it would
    block.

    Why: a Trio send or receive passes through the scheduler twice even when the socket is
    ready, and at hundreds of shims those passes were a few percent of the agent's CPU. A
    request always fits the socket buffer, and by the time a collector reads, the shim has
    usually answered. A read that finds data does not yield; that cannot hold the loop for
    long, since a response is capped at max_body, and a cancelled caller still stops at the
    next read.
    """

    __slots__ = ("sock", "stream")

    def __init__(self, sock: socket.socket, stream: trio.SocketStream) -> None:
        self.sock = sock
        self.stream = stream

    async def send_all(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            data = self.sock.recv(max_bytes)
        except BlockingIOError:
            return await self.stream.receive_some(max_bytes)
        await trio.lowlevel.checkpoint_if_cancelled()
        return data


def _connect(socket_path: Path) -> socket.socket:
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
        return _connect_unix(f"/proc/self/fd/{directory}/{socket_path.name}", socket_path)
    finally:
        os.close(directory)


def _connect_unix(address: str, socket_path: Path) -> socket.socket:
    """Connect without waiting: a non-blocking connect() on a Unix socket completes at once on
    Linux (connected, refused, or EAGAIN when the listener's backlog is full), so the generic
    trio.open_unix_socket, which yields to the scheduler on the way, only adds CPU per scrape.
    The request's send_all is the first checkpoint of a fetch."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as err:
        # EMFILE: each collector holds its connection open, so the agent can reach its
        # descriptor limit; that scrape fails and is retried like a refused connect.
        detail = f"socket for {socket_path}: {err.strerror or err}"
        raise ShimError(ScrapeFailure.CONNECT, detail) from None
    try:
        sock.connect(address)
    except FileNotFoundError:
        sock.close()
        raise ShimError(ScrapeFailure.NO_SOCKET, f"{socket_path} does not exist") from None
    except OSError as err:
        sock.close()
        # ECONNREFUSED: a socket nobody listens on, typical while a shim starts or stops.
        reason = err.strerror or str(err)
        if err.errno == errno.EAGAIN:
            reason = "backlog full, the shim is not accepting connections"
        raise ShimError(ScrapeFailure.CONNECT, f"connect {socket_path}: {reason}") from None
    return sock


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    # Read whole, framed, HTTP/1.1 without "Connection: close", nothing after it: the
    # connection is at the start of the next response and may carry another request.
    reusable: bool

    def ok_body(self) -> bytes:
        if self.status != 200:
            snippet = self.body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
            raise ShimError(ScrapeFailure.HTTP_STATUS, f"HTTP {self.status}: {snippet}")
        return self.body


async def _exchange(stream: _ByteStream, request: bytes, max_body: int) -> _Response:
    try:
        await stream.send_all(request)
    except (trio.BrokenResourceError, OSError) as err:
        raise _NoAnswer(f"sending request: {err}") from None
    receiver = _Receiver(stream)
    head = await _read_head(receiver)
    framed = True
    if head.status in _NO_BODY_STATUSES:
        body = b""
        receiver.overrun = len(receiver.buffer) > head.end
    elif head.chunked:
        body = await _read_chunked_body(receiver, head.end, max_body)
    elif head.length is not None:
        if head.length > max_body:
            raise ShimError(
                ScrapeFailure.OVERSIZE, f"Content-Length {head.length} exceeds {max_body} bytes"
            )
        body = await _read_sized_body(receiver, head.end, head.length)
    else:
        body = await _read_body_until_close(receiver, head.end, max_body)
        framed = False
    reusable = head.persistent and framed and not receiver.overrun
    return _Response(head.status, body, reusable)


def _request(target: str, *, close: bool) -> bytes:
    """The GET; without "Connection: close" it is HTTP/1.1's default, a persistent one."""
    if not _TARGET.fullmatch(target):
        raise ValueError(f"not a request target: {target!r}")
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET {target} HTTP/1.1\r\n"
        "Host: shim\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: text/plain\r\n"
        f"{connection}\r\n"
    ).encode("ascii")


def _protocol_error(detail: str) -> ShimError:
    return ShimError(ScrapeFailure.PROTOCOL, detail)


class _Receiver:
    """The receiving side of the connection: everything read so far that is still needed.

    Positions the readers hold are offsets into `buffer`; `discard` drops what they are done
    with, which for a bytearray's front is cheap (CPython moves its start, copies nothing).
    """

    __slots__ = ("answered", "buffer", "overrun", "stream")

    def __init__(self, stream: _ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.answered = False  # a byte of the response came
        self.overrun = False  # bytes came after the end of the response

    async def receive(self, missing: str) -> None:
        """Append the next read to `buffer`; `missing` names what an end of stream cuts off."""
        data = await self._read()
        if not data:
            raise _protocol_error(f"connection closed {missing}")
        self.buffer += data

    async def receive_or_eof(self) -> bool:
        """Like `receive`, but an end of stream is an answer (False) rather than an error."""
        data = await self._read()
        self.buffer += data
        return bool(data)

    async def _read(self) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, OSError) as err:
            if not self.answered:
                raise _NoAnswer(f"reading response: {err}") from None
            raise ShimError(ScrapeFailure.CONNECT, f"reading response: {err}") from None
        if data:
            self.answered = True
        return data

    def discard(self, upto: int) -> None:
        del self.buffer[:upto]


@dataclass(frozen=True, slots=True)
class _Head:
    """The final (non-1xx) response head and how its body is framed."""

    status: int
    chunked: bool
    length: int | None  # None with chunked, or when the body runs to the end of the stream
    end: int  # offset of the body's first byte in the receive buffer
    persistent: bool  # HTTP/1.1 and no "Connection: close": the server keeps the connection


async def _read_head(receiver: _Receiver) -> _Head:
    buffer = receiver.buffer
    start = 0  # interim (1xx) heads before `start` are skipped, but count toward the cap
    searched = 0
    while True:
        end = buffer.find(b"\r\n\r\n", searched)
        if end == -1:
            if len(buffer) > MAX_HEAD_BYTES:
                raise _protocol_error(f"response head exceeds {MAX_HEAD_BYTES} bytes")
            searched = max(start, len(buffer) - 3)
            if not await receiver.receive_or_eof():
                if not buffer:
                    # Closed without a byte of answer: the shim went away (it is being torn
                    # down, or crashed), which is a connection failure, not a malformed reply.
                    raise _NoAnswer("closed without a response")
                raise _protocol_error("connection closed inside the response head")
            continue
        if end + 4 > MAX_HEAD_BYTES:
            raise _protocol_error(f"response head exceeds {MAX_HEAD_BYTES} bytes")
        head = _parse_head(bytes(buffer[start:end]), end + 4)
        if head is not None:
            return head
        start = searched = end + 4


def _parse_head(head: bytes, end: int) -> _Head | None:
    """The head's status and body framing; None for an interim (1xx) response to skip."""
    status_line, *field_lines = head.split(b"\r\n")
    status_match = _STATUS_LINE.fullmatch(status_line)
    if status_match is None:
        raise _protocol_error(f"malformed status line {_excerpt(status_line)}")
    status = int(status_match[2])
    if status == 101:
        raise _protocol_error("unexpected 101 Switching Protocols")
    if status < 200:
        return None
    lengths: list[bytes] = []
    codings: list[bytes] = []
    persistent = status_match[1] == b"1"
    for line in field_lines:
        if line[:1] in (b" ", b"\t"):
            raise _protocol_error(f"obsolete line folding in header {_excerpt(line)}")
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            raise _protocol_error(f"malformed header line {_excerpt(line)}")
        name = field[1].lower()
        if name == b"content-length":
            lengths.extend(part.strip(b" \t") for part in field[2].split(b","))
        elif name == b"transfer-encoding":
            codings.extend(part.strip(b" \t").lower() for part in field[2].split(b","))
        elif name == b"connection" and persistent:
            options = (part.strip(b" \t").lower() for part in field[2].split(b","))
            persistent = b"close" not in options
    if codings:
        # Transfer-Encoding overrides Content-Length (RFC 9112 6.3). Nothing but chunked can
        # be asked of a server here; HTTP/1.0 has no transfer codings at all.
        if status_match[1] == b"0":
            raise _protocol_error("Transfer-Encoding in an HTTP/1.0 response")
        if codings != [b"chunked"]:
            listed = b", ".join(codings).decode("ascii", "replace")
            raise _protocol_error(f"unsupported Transfer-Encoding {listed!r}")
        return _Head(status, chunked=True, length=None, end=end, persistent=persistent)
    if lengths:
        length = _content_length(lengths)
        return _Head(status, chunked=False, length=length, end=end, persistent=persistent)
    return _Head(status, chunked=False, length=None, end=end, persistent=persistent)


def _content_length(values: list[bytes]) -> int:
    """One length from every Content-Length value; repeats must agree (RFC 9110 8.6)."""
    first = values[0]
    if not first.isdigit() or any(value != first for value in values):
        listed = b", ".join(values).decode("ascii", "replace")
        raise _protocol_error(f"invalid Content-Length {listed[:60]!r}")
    significant = first.lstrip(b"0")
    if len(significant) > MAX_LENGTH_DIGITS:
        raise ShimError(
            ScrapeFailure.OVERSIZE, f"Content-Length of {len(significant)} digits exceeds any cap"
        )
    return int(significant or b"0")


def _excerpt(data: bytes | bytearray) -> str:
    return repr(bytes(data[:80]))


async def _read_sized_body(receiver: _Receiver, start: int, length: int) -> bytes:
    buffer = receiver.buffer
    end = start + length
    while len(buffer) < end:
        await receiver.receive(f"after {len(buffer) - start} of {length} body bytes")
    # Bytes past the body (a server ignoring "Connection: close") are dropped unread; they
    # make a kept connection unusable.
    receiver.overrun = len(buffer) > end
    del buffer[end:]
    receiver.discard(start)
    return bytes(buffer)


async def _read_body_until_close(receiver: _Receiver, start: int, max_body: int) -> bytes:
    buffer = receiver.buffer
    while True:
        if len(buffer) - start > max_body:
            raise ShimError(ScrapeFailure.OVERSIZE, f"body exceeds {max_body} bytes")
        if not await receiver.receive_or_eof():
            break
    receiver.discard(start)
    return bytes(buffer)


async def _read_chunked_body(receiver: _Receiver, start: int, max_body: int) -> bytes:
    receiver.discard(start)
    return await _ChunkedBody(receiver, max_body).read()


class _ChunkedBody:
    """De-chunks a body, which starts at the front of the receive buffer.

    Chunk data is gathered as views of the buffer and copied out with one join per read (a
    bytearray cannot grow while viewed), so a body that came in one read is copied once. The
    buffer is trimmed before each read: it only ever holds the chunk being read and after.
    """

    __slots__ = ("copied", "max_body", "receiver", "size", "view", "viewed")

    def __init__(self, receiver: _Receiver, max_body: int) -> None:
        self.receiver = receiver
        self.max_body = max_body
        self.size = 0
        self.copied: list[bytes] = []  # chunk data from earlier reads
        self.viewed: list[memoryview] = []  # chunk data still in the buffer
        self.view = memoryview(receiver.buffer)

    async def read(self) -> bytes:
        buffer = self.receiver.buffer
        position = searched = 0
        while True:
            line_end = buffer.find(b"\r\n", searched)
            if line_end == -1:
                if len(buffer) - position > MAX_CHUNK_LINE_BYTES:
                    raise _protocol_error(f"chunk-size line exceeds {MAX_CHUNK_LINE_BYTES} bytes")
                # Only the last byte kept can start the CRLF: a CR waiting for its LF.
                searched = max(0, len(buffer) - position - 1)
                await self._receive(position, f"inside the chunked body after {self.size} bytes")
                position = 0
                continue
            if line_end - position > MAX_CHUNK_LINE_BYTES:
                raise _protocol_error(f"chunk-size line exceeds {MAX_CHUNK_LINE_BYTES} bytes")
            chunk_line = _CHUNK_LINE.fullmatch(buffer, position, line_end)
            if chunk_line is None:
                line = _excerpt(buffer[position:line_end])
                raise _protocol_error(f"malformed chunk-size line {line}")
            chunk_size = int(chunk_line[1], 16)
            position = line_end + 2
            if chunk_size == 0:
                await _skip_trailers(self.receiver, self._release(position))
                return self.copied[0] if len(self.copied) == 1 else b"".join(self.copied)
            self.size += chunk_size
            if self.size > self.max_body:
                raise ShimError(ScrapeFailure.OVERSIZE, f"body exceeds {self.max_body} bytes")
            data_end = position + chunk_size
            while len(buffer) < data_end + 2:
                data_end -= position
                await self._receive(position, f"inside a chunk, {self.size} body bytes announced")
                position = 0
            if not buffer.startswith(b"\r\n", data_end):
                raise _protocol_error("chunk data not followed by CRLF")
            self.viewed.append(self.view[position:data_end])
            position = searched = data_end + 2

    def _release(self, position: int) -> int:
        """Copy the viewed chunks out, drop the buffer before `position`; its new offset."""
        if self.viewed:
            self.copied.append(b"".join(self.viewed))
            self.viewed.clear()
        self.view.release()
        self.receiver.discard(position)
        return 0

    async def _receive(self, position: int, missing: str) -> None:
        """Read more, keeping the buffer from `position` on, which becomes offset 0."""
        self._release(position)
        await self.receiver.receive(missing)
        self.view = memoryview(self.receiver.buffer)


async def _skip_trailers(receiver: _Receiver, position: int) -> None:
    """Wait for the end of the trailer section after the last chunk; its fields are unused."""
    buffer = receiver.buffer
    searched = position
    while True:
        if buffer.startswith(b"\r\n", position):
            receiver.overrun = len(buffer) > position + 2
            return
        # Trailer fields end in CRLF, so the section ends at the first CRLFCRLF after them.
        end = buffer.find(b"\r\n\r\n", searched) if len(buffer) - position >= 2 else -1
        if end != -1:
            receiver.overrun = len(buffer) > end + 4
            return
        if len(buffer) - position > MAX_HEAD_BYTES:
            raise _protocol_error(f"chunked trailers exceed {MAX_HEAD_BYTES} bytes")
        searched = max(position, len(buffer) - 3)
        await receiver.receive("inside the chunked trailers")
