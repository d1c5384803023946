"""The shim HTTP client against real simulated shims on real Unix sockets."""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse.model import ScrapeFailure
from pulse.shim_client import ShimConnection, ShimError, fetch
from pulse.sim.shim import Behaviour, SimulatedShim

BODY = b'kata_guest_load{item="load1"} 0.5\n' * 2000  # 70 kB: several chunks and reads


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[SimulatedShim]:
    server = SimulatedShim(tmp_path / "shim-monitor.sock", lambda: BODY)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_reads_whole_body_in_either_framing(shim: SimulatedShim, chunked: bool) -> None:
    shim.chunked = chunked
    assert await fetch(shim.socket_path, "/metrics", max_body=1 << 20) == BODY


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour.ERROR, ScrapeFailure.HTTP_STATUS),
        (Behaviour.HUGE, ScrapeFailure.OVERSIZE),
        (Behaviour.TRUNCATED, ScrapeFailure.PROTOCOL),
        (Behaviour.VANISH, ScrapeFailure.PROTOCOL),
    ],
)
async def test_failures_carry_their_reason(
    shim: SimulatedShim, behaviour: Behaviour, reason: ScrapeFailure
) -> None:
    shim.behaviour = behaviour
    with pytest.raises(ShimError) as caught:
        await fetch(shim.socket_path, "/metrics", max_body=1 << 20)
    assert caught.value.reason is reason


async def test_body_over_the_cap_is_refused_even_without_content_length(
    shim: SimulatedShim,
) -> None:
    shim.chunked = True
    with pytest.raises(ShimError) as caught:
        await fetch(shim.socket_path, "/metrics", max_body=len(BODY) - 1)
    assert caught.value.reason is ScrapeFailure.OVERSIZE


async def test_missing_socket_and_dead_socket(tmp_path: Path) -> None:
    with pytest.raises(ShimError) as caught:
        await fetch(tmp_path / "nope.sock", "/metrics", max_body=1024)
    assert caught.value.reason is ScrapeFailure.NO_SOCKET
    # A socket file nobody listens on: what a crashed shim leaves behind.
    dead = trio.socket.socket(trio.socket.AF_UNIX)
    await dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(ShimError) as caught:
        await fetch(tmp_path / "dead.sock", "/metrics", max_body=1024)
    assert caught.value.reason is ScrapeFailure.CONNECT


async def test_hung_shim_is_bounded_by_the_callers_cancel_scope(
    shim: SimulatedShim, autojump_clock: trio.testing.MockClock
) -> None:
    shim.behaviour = Behaviour.HANG
    with trio.move_on_after(3) as scope:
        await fetch(shim.socket_path, "/metrics", max_body=1024)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(3)


async def test_shim_closing_without_a_byte_is_a_connection_failure(tmp_path: Path) -> None:
    """What a shim being torn down mid-request looks like; not a malformed response."""

    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.aclose()

    failure = await _fetch_failure(tmp_path / "s.sock", close_at_once)
    assert failure.reason is ScrapeFailure.CONNECT


async def test_deep_sandbox_roots_beyond_the_unix_socket_path_limit(tmp_path: Path) -> None:
    """A socket path over 107 bytes cannot be passed to connect(); the agent reaches it
    through the held-open sandbox directory instead."""
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    short = Path("/tmp") / f"kp-{os.getpid()}-deep.sock"
    await listener.bind(str(short))  # bound under a short name, then moved deep
    listener.listen(1)
    os.rename(short, directory / "shim-monitor.sock")
    assert len(str(directory / "shim-monitor.sock")) > 107

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, answer, [trio.SocketListener(listener)])
        assert await fetch(directory / "shim-monitor.sock", "/metrics", max_body=64) == b"ok\n"
        nursery.cancel_scope.cancel()


async def test_symlinked_sandbox_directory_or_socket_is_not_followed(
    shim: SimulatedShim, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    (elsewhere / "linked-dir").symlink_to(shim.socket_path.parent)
    (elsewhere / "real-dir").mkdir()
    (elsewhere / "real-dir" / "shim-monitor.sock").symlink_to(shim.socket_path)
    for path in (
        elsewhere / "linked-dir" / "shim-monitor.sock",
        elsewhere / "real-dir" / "shim-monitor.sock",
    ):
        with pytest.raises(ShimError) as caught:
            await fetch(path, "/metrics", max_body=1 << 20)
        assert caught.value.reason is ScrapeFailure.CONNECT
        assert "symlink" in caught.value.detail
    assert shim.requests == 0


# --- exact byte sequences from a raw server ---------------------------------------------------


async def _fetch_failure(
    path: Path, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> ShimError:
    """The ShimError of a fetch from a server that runs `handler` on its one connection."""
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [trio.SocketListener(listener)])
        with pytest.raises(ShimError) as caught:
            await fetch(path, "/metrics", max_body=1024)
        nursery.cancel_scope.cancel()
    return caught.value


def _listening(path: Path, *, backlog: int) -> trio.socket.SocketType:
    # Bound with the plain socket call: trio's bind runs in a thread, during which a mock clock
    # sees every task blocked and jumps.
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    plain.bind(str(path))
    listener = trio.socket.from_stdlib_socket(plain)
    listener.listen(backlog)
    return listener


class RawShim:
    """Answers one connection with exactly `pieces`, each reaching the client as its own read:
    after every piece the server waits until the client has consumed it and blocks again."""

    def __init__(self, path: Path, pieces: Sequence[bytes], *, keep_open: bool = False) -> None:
        self.path = path
        self.pieces = pieces
        self.keep_open = keep_open  # never close: the client must stop on the framing alone
        self.request = b""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = _listening(self.path, backlog=1)
        try:
            with listener:
                task_status.started()
                connection, _ = await listener.accept()
            async with trio.SocketStream(connection) as stream:
                await self._answer(stream)
        finally:
            self.path.unlink(missing_ok=True)

    async def _answer(self, stream: trio.SocketStream) -> None:
        while not self.request.endswith(b"\r\n\r\n"):
            data = await stream.receive_some(4096)
            if not data:
                return
            self.request += data
        # A client that stopped reading early (a refused response) closes on us.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for piece in self.pieces:
                await stream.send_all(piece)
                await trio.testing.wait_all_tasks_blocked()
            if self.keep_open:
                await trio.sleep_forever()


async def fetch_raw(
    directory: Path,
    pieces: Sequence[bytes],
    *,
    max_body: int = 1 << 20,
    keep_open: bool = False,
    via_connection: bool = False,
) -> bytes:
    """What `fetch` (or a ShimConnection's get) makes of a server sending `pieces`; raises
    its ShimError."""
    server = RawShim(directory / "raw.sock", pieces, keep_open=keep_open)
    outcome: bytes | ShimError
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            if via_connection:
                async with ShimConnection(server.path) as connection:
                    outcome = await connection.get("/metrics", max_body=max_body)
            else:
                outcome = await fetch(server.path, "/metrics", max_body=max_body)
        except ShimError as err:
            outcome = err
        finally:
            nursery.cancel_scope.cancel()
    if isinstance(outcome, ShimError):
        raise outcome
    return outcome


async def refused(
    directory: Path, pieces: Sequence[bytes], *, max_body: int = 1 << 20, keep_open: bool = False
) -> ShimError:
    with pytest.raises(ShimError) as caught:
        await fetch_raw(directory, pieces, max_body=max_body, keep_open=keep_open)
    return caught.value


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
CHUNKED = (
    OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b'7 ; quoted="a;b" ; flag\r\n, world\r\n'
    b"1A\r\n" + b"z" * 26 + b"\r\n"
    b"0;last\r\nX-Checksum: 1\r\nX-Other: two\r\n\r\n"
)
CHUNKED_BODY = b"hello, world" + b"z" * 26


async def test_request_is_a_plain_http11_get_asking_to_close(tmp_path: Path) -> None:
    server = RawShim(tmp_path / "raw.sock", [OK_HEAD + b"Content-Length: 2\r\n\r\nok"])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        assert await fetch(server.path, "/metrics", max_body=64) == b"ok"
    request_line, *fields = server.request.removesuffix(b"\r\n\r\n").split(b"\r\n")
    assert request_line == b"GET /metrics HTTP/1.1"
    assert b"Host: shim" in fields
    assert b"Connection: close" in fields


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "byte-by-byte"])
async def test_chunk_extensions_and_trailers_are_tolerated(tmp_path: Path, split: bool) -> None:
    pieces = one_byte_at_a_time(CHUNKED) if split else [CHUNKED]
    assert await fetch_raw(tmp_path, pieces) == CHUNKED_BODY


@pytest.mark.parametrize(
    "response",
    [
        OK_HEAD + b"Content-Length: 11\r\n\r\nhello world",
        CHUNKED,
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        OK_HEAD + b"Content-Length: 5\r\n\r\nhelloAND MORE THAN ANNOUNCED",
    ],
    ids=["content-length", "chunked-with-trailers", "chunked", "content-length-shorter"],
)
async def test_a_complete_message_is_returned_without_waiting_for_the_close(
    tmp_path: Path, response: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    """The server keeps the connection open: the framing alone must end the read (with the
    mock clock, a client waiting for the close would see the timeout at once)."""
    with trio.move_on_after(60) as scope:
        body = await fetch_raw(tmp_path, [response], keep_open=True)
    assert not scope.cancelled_caught
    assert body in (b"hello world", b"hello", CHUNKED_BODY)
    assert body == b"hello" or b"Content-Length: 5" not in response


async def test_body_delimited_by_the_close(tmp_path: Path) -> None:
    body = b"no length, no chunking\n" * 50
    for version in (b"1.1", b"1.0"):
        response = b"HTTP/" + version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body
        assert await fetch_raw(tmp_path, [response[:100], response[100:]]) == body
    too_long = OK_HEAD + b"\r\n" + body
    error = await refused(tmp_path, [too_long], max_body=len(body) - 1)
    assert error.reason is ScrapeFailure.OVERSIZE


async def test_interim_responses_are_skipped(tmp_path: Path) -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        + OK_HEAD
        + b"Content-Length: 2\r\n\r\nok"
    )
    assert await fetch_raw(tmp_path, [response]) == b"ok"
    assert await fetch_raw(tmp_path, one_byte_at_a_time(response)) == b"ok"
    error = await refused(tmp_path, [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"])
    assert error.reason is ScrapeFailure.PROTOCOL


@pytest.mark.parametrize(
    ("response", "snippet"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n", "HTTP 404: not found"),
        (
            b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nbusy \r\n5\r\nnow\n\n\r\n0\r\n\r\n",
            "HTTP 503: busy now",
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", "HTTP 204: "),
    ],
    ids=["404", "503-chunked", "204"],
)
async def test_other_statuses_carry_a_snippet_of_the_body(
    tmp_path: Path, response: bytes, snippet: str
) -> None:
    error = await refused(tmp_path, [response])
    assert error.reason is ScrapeFailure.HTTP_STATUS
    assert error.detail == snippet


@pytest.mark.parametrize(
    ("response", "keep_open"),
    [
        (OK_HEAD + b"Content-Length: 1000001\r\n\r\n", True),
        (OK_HEAD + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n", True),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nF4241\r\n", True),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"FFFFF\r\n" + b"x" * 0xFFFFF, True),
    ],
    ids=["content-length", "40-digit-length", "one-big-chunk", "chunks-adding-up"],
)
async def test_oversize_is_refused_as_soon_as_it_is_announced(
    tmp_path: Path, response: bytes, keep_open: bool, autojump_clock: trio.testing.MockClock
) -> None:
    if response.endswith(b"x"):  # the second chunk pushes the total over the cap
        response += b"\r\n1\r\n"
    with trio.move_on_after(60) as scope:
        error = await refused(tmp_path, [response], max_body=1_000_000, keep_open=keep_open)
    assert not scope.cancelled_caught
    assert error.reason is ScrapeFailure.OVERSIZE


@pytest.mark.parametrize(
    ("pieces", "detail"),
    [
        ([OK_HEAD + b"Content-Length: 10\r\n\r\nhello"], "closed after 5 of 10 body bytes"),
        ([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel"], "closed inside a chunk"),
        (
            [OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"],
            "closed inside the chunked body",
        ),
        (
            [OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"],
            "closed inside the chunked trailers",
        ),
        ([OK_HEAD + b"Content-Le"], "closed inside the response head"),
        ([b"\x00\xff garbage without any line end"], "closed inside the response head"),
    ],
    ids=["content-length", "mid-chunk", "between-chunks", "before-last-crlf", "head", "garbage"],
)
async def test_truncated_responses_are_protocol_errors(
    tmp_path: Path, pieces: list[bytes], detail: str
) -> None:
    error = await refused(tmp_path, pieces)
    assert error.reason is ScrapeFailure.PROTOCOL
    assert detail in error.detail


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200OK\r\n\r\n", "status line"),
        (b"ICY 200 OK\r\n\r\n", "status line"),
        (b"garbage\r\n\r\n", "status line"),
        (OK_HEAD + b"X-Folded: a\r\n  b\r\nContent-Length: 0\r\n\r\n", "line folding"),
        (OK_HEAD + b"No colon here\r\n\r\n", "header line"),
        (OK_HEAD + b"Content-Length : 2\r\n\r\nok", "header line"),
        (OK_HEAD + b"X-Nul: a\x00b\r\n\r\n", "header line"),
        (OK_HEAD + b"Content-Length: abc\r\n\r\n", "Content-Length"),
        (OK_HEAD + b"Content-Length: -1\r\n\r\n", "Content-Length"),
        (OK_HEAD + b"Content-Length: +2\r\n\r\nok", "Content-Length"),
        (OK_HEAD + b"Content-Length: 2, 3\r\n\r\nok", "Content-Length"),
        (OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length"),
        (OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n\r\n", "chunk-size line"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", "not followed by CRLF"),
        (
            OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;" + b"e" * 5000 + b"\r\n",
            "chunk-size line exceeds",
        ),
        (
            OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;" + b"e" * 5000,
            "chunk-size line exceeds",
        ),
    ],
)
async def test_malformed_responses_are_protocol_errors(
    tmp_path: Path, response: bytes, detail: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Kept open: a malformed response is refused when seen, not when the server gives up."""
    with trio.move_on_after(60) as scope:
        error = await refused(tmp_path, [response], keep_open=True)
    assert not scope.cancelled_caught
    assert error.reason is ScrapeFailure.PROTOCOL
    assert detail in error.detail


async def test_repeated_equal_content_lengths_and_transfer_encoding_precedence(
    tmp_path: Path,
) -> None:
    repeated = OK_HEAD + b"Content-Length: 2, 2\r\ncontent-length: 2\r\n\r\nok"
    assert await fetch_raw(tmp_path, [repeated]) == b"ok"
    # Transfer-Encoding overrides Content-Length: the chunked body is what counts.
    both = OK_HEAD + b"Content-Length: 1\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert await fetch_raw(tmp_path, [both]) == b"ok"


@pytest.mark.parametrize("complete", [False, True], ids=["unterminated", "terminated"])
async def test_oversized_head_is_a_protocol_error(
    tmp_path: Path, complete: bool, autojump_clock: trio.testing.MockClock
) -> None:
    head = OK_HEAD + b"X-Padding: " + b"p" * (70 * 1024) + b"\r\n"
    response = head + b"Content-Length: 2\r\n\r\nok" if complete else head
    with trio.move_on_after(60) as scope:
        error = await refused(tmp_path, [response], keep_open=True)
    assert not scope.cancelled_caught
    assert error.reason is ScrapeFailure.PROTOCOL
    assert "head exceeds" in error.detail
    # Interim heads count toward the same cap.
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" * 3000 + OK_HEAD + b"Content-Length: 0\r\n\r\n"
    error = await refused(tmp_path, [interim])
    assert error.reason is ScrapeFailure.PROTOCOL


async def test_oversized_trailers_are_a_protocol_error(tmp_path: Path) -> None:
    response = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + b"t" * 70_000
    error = await refused(tmp_path, [response, b"\r\n\r\n"])
    assert error.reason is ScrapeFailure.PROTOCOL
    assert "trailers exceed" in error.detail


async def test_a_reset_while_reading_is_a_connection_failure(tmp_path: Path) -> None:
    """A Unix socket closed with unread data resets its peer: the shim dying mid-answer."""

    async def reset(stream: trio.SocketStream) -> None:
        await stream.send_all(OK_HEAD + b"Content-Length: 100\r\n\r\npartial")
        await trio.lowlevel.wait_readable(stream.socket)  # the request is there, unread
        await stream.aclose()

    failure = await _fetch_failure(tmp_path / "s.sock", reset)
    assert failure.reason is ScrapeFailure.CONNECT
    assert "reading response" in failure.detail


# --- any body, any framing, any read split ----------------------------------------------------


@st.composite
def framed_responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A 200 response in a drawn framing, and the body it carries."""
    body = draw(st.binary(max_size=2000))
    framing = draw(st.sampled_from(["content-length", "chunked", "close"]))
    if framing == "content-length":
        return OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body, body
    if framing == "close":
        return OK_HEAD + b"\r\n" + body, body
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=8)))
    bounds = [0, *(cut for cut in cuts if cut < len(body)), len(body)]
    framed = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    for start, end in itertools.pairwise(bounds):
        if end > start:
            size = b"%x" % (end - start) if draw(st.booleans()) else b"%X" % (end - start)
            extension = draw(st.sampled_from([b"", b";a=b", b' ; q="x;y"', b";flag"]))
            framed += size + extension + b"\r\n" + body[start:end] + b"\r\n"
    trailers = draw(st.sampled_from([b"", b"X-Sum: 1\r\n", b"A: 1\r\nB: 2\r\n"]))
    return framed + b"0\r\n" + trailers + b"\r\n", body


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(framed=framed_responses(), data=st.data())
async def test_any_framing_split_anywhere_gives_the_body_back(
    tmp_path: Path, framed: tuple[bytes, bytes], data: st.DataObject
) -> None:
    response, body = framed
    cuts = sorted(data.draw(st.sets(st.integers(1, len(response) - 1), max_size=12)))
    pieces = [response[a:b] for a, b in itertools.pairwise([0, *cuts, len(response)])]
    via_connection = data.draw(st.booleans(), label="via a ShimConnection")
    assert await fetch_raw(tmp_path, pieces, via_connection=via_connection) == body


# --- one kept-alive connection across requests ------------------------------------------------


class Then(enum.Enum):
    KEEP = "keep"  # wait for the next request on this connection
    CLOSE = "close"  # close once the answer is sent
    STALL = "stall"  # answer no further, but notice the client closing
    UNANSWERED = "unanswered"  # read the request and close without a byte of answer
    RESET = "reset"  # send the data, close with the request unread: the client's read is reset


@dataclass(frozen=True)
class Answer:
    data: bytes = b""
    then: Then = Then.KEEP
    # Sent on the idle connection once `KeepAliveShim.unsolicited` is set.
    unsolicited: bytes = b""


def ok(body: bytes, *extra: bytes) -> bytes:
    return OK_HEAD + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body


class KeepAliveShim:
    """Serves any number of connections, answering each request, on whichever connection it
    comes, with the next of `answers`; counts what a server can see of the client."""

    def __init__(self, path: Path, answers: Sequence[Answer]) -> None:
        self.path = path
        self.answers = list(answers)
        self.accepts = 0
        self.requests: list[bytes] = []
        self.client_closes = 0  # connections the client closed
        self.unsolicited = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = _listening(self.path, backlog=8)
        try:
            with listener:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    while True:
                        connection, _ = await listener.accept()
                        self.accepts += 1
                        nursery.start_soon(self._serve_connection, trio.SocketStream(connection))
        finally:
            self.path.unlink(missing_ok=True)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            pending = b""
            while True:
                if not pending and self.answers and self.answers[0].then is Then.RESET:
                    if not await stream.socket.recv(1, socket.MSG_PEEK):
                        self.client_closes += 1
                        return
                    answer = self.answers.pop(0)
                    self.requests.append(b"(left unread)")
                    await stream.send_all(answer.data)
                    return
                while b"\r\n\r\n" not in pending:
                    data = await _received(stream)
                    if not data:
                        self.client_closes += 1
                        return
                    pending += data
                request, _, pending = pending.partition(b"\r\n\r\n")
                self.requests.append(request)
                answer = self.answers.pop(0)
                if answer.then is Then.UNANSWERED:
                    return
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(answer.data)
                if answer.unsolicited:
                    await self.unsolicited.wait()
                    await stream.send_all(answer.unsolicited)
                if answer.then is Then.CLOSE:
                    return
                if answer.then is Then.STALL:
                    while await _received(stream):
                        pass
                    self.client_closes += 1
                    return


async def _received(stream: trio.SocketStream) -> bytes:
    """The next read; empty when the client closed (a close with unread data is a reset)."""
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError:
        return b""


@contextlib.asynccontextmanager
async def keep_alive_shim(
    directory: Path, *answers: Answer
) -> AsyncIterator[tuple[KeepAliveShim, ShimConnection]]:
    server = KeepAliveShim(directory / "keep.sock", answers)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with ShimConnection(server.path) as connection:
            yield server, connection
        await trio.testing.wait_all_tasks_blocked()  # the server sees the close
        nursery.cancel_scope.cancel()


async def get(connection: ShimConnection) -> bytes:
    return await connection.get("/metrics", max_body=1 << 20)


async def get_error(connection: ShimConnection) -> ShimError:
    with pytest.raises(ShimError) as caught:
        await get(connection)
    return caught.value


async def test_one_connection_carries_every_request_while_the_server_keeps_it(
    tmp_path: Path,
) -> None:
    chunked = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\nX-T: 1\r\n\r\n"
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    answers = [Answer(ok(b"one")), Answer(chunked), Answer(not_found), Answer(no_content)]
    async with keep_alive_shim(tmp_path, *answers, Answer(ok(b"five"))) as (server, connection):
        assert await get(connection) == b"one"
        assert connection.is_open
        assert await get(connection) == b"two"
        # A whole response with another status leaves the connection usable too.
        assert (await get_error(connection)).detail == "HTTP 404: gone"
        assert (await get_error(connection)).reason is ScrapeFailure.HTTP_STATUS
        assert await get(connection) == b"five"
        assert connection.is_open
    assert server.accepts == 1
    assert len(server.requests) == 5
    # Keep-alive is HTTP/1.1's default: the request does not ask for a close.
    request_line, *fields = server.requests[0].split(b"\r\n")
    assert request_line == b"GET /metrics HTTP/1.1"
    assert not any(field.lower().startswith(b"connection:") for field in fields)
    assert server.client_closes == 1  # closed on leaving the context


async def test_the_simulated_shim_keeps_the_connection_like_gos_server(
    shim: SimulatedShim,
) -> None:
    for chunked in (True, False):
        shim.chunked = chunked
        async with ShimConnection(shim.socket_path) as connection:
            for _ in range(3):
                assert await connection.get("/metrics", max_body=1 << 20) == BODY
            assert shim.open_connections == 1
        await trio.testing.wait_all_tasks_blocked()
        assert shim.open_connections == 0  # the shim saw the close
    assert (shim.connections, shim.requests) == (2, 6)
    # A one-shot fetch asks to close, and the shim closes.
    assert await fetch(shim.socket_path, "/metrics", max_body=1 << 20) == BODY
    await trio.testing.wait_all_tasks_blocked()
    assert (shim.connections, shim.open_connections) == (3, 0)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(ok(b"body", b"Connection: close\r\n")),
        Answer(ok(b"body", b"Connection: Keep-Alive, CLOSE\r\n")),
        Answer(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nbody"),
        Answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nbody"),
        Answer(OK_HEAD + b"\r\nbody", Then.CLOSE),
        Answer(ok(b"body") + b"HTTP/1.1 200 OK\r\n"),
        Answer(
            OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        Answer(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n"),
    ],
    ids=[
        "connection-close",
        "close-among-options",
        "http10",
        "http10-keep-alive",
        "close-delimited",
        "bytes-after-sized",
        "bytes-after-chunked",
        "bytes-after-no-body",
    ],
)
async def test_a_response_that_does_not_keep_the_connection_is_followed_by_a_new_one(
    tmp_path: Path, answer: Answer
) -> None:
    """Whatever the server does next, the client closes a connection it may not reuse."""
    async with keep_alive_shim(tmp_path, answer, Answer(ok(b"next"))) as (server, connection):
        if answer.data.startswith(b"HTTP/1.1 204"):
            assert (await get_error(connection)).detail == "HTTP 204: "
        else:
            assert await get(connection) == b"body"
        assert not connection.is_open
        await trio.testing.wait_all_tasks_blocked()
        if answer.then is Then.KEEP:
            assert server.client_closes == 1
        assert await get(connection) == b"next"
    assert server.accepts == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(OK_HEAD + b"Content-Length: 99\r\n\r\n"), ScrapeFailure.OVERSIZE),
        (Answer(OK_HEAD + b"Content-Length: x\r\n\r\n"), ScrapeFailure.PROTOCOL),
        (Answer(OK_HEAD + b"Content-Length: 9\r\n\r\nhalf", Then.CLOSE), ScrapeFailure.PROTOCOL),
    ],
    ids=["oversize", "malformed", "cut-short"],
)
async def test_an_error_mid_response_drops_the_connection(
    tmp_path: Path, answer: Answer, reason: ScrapeFailure
) -> None:
    async with keep_alive_shim(tmp_path, answer, Answer(ok(b"next"))) as (server, connection):
        with pytest.raises(ShimError) as caught:
            await connection.get("/metrics", max_body=50)
        assert caught.value.reason is reason
        assert not connection.is_open
        assert await get(connection) == b"next"
    assert server.accepts == 2
    assert len(server.requests) == 2  # the failed request was not sent again


async def test_a_connection_the_server_closed_while_idle_is_replaced(tmp_path: Path) -> None:
    answers = [Answer(ok(b"one"), Then.CLOSE), Answer(ok(b"two"))]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        await trio.testing.wait_all_tasks_blocked()  # the server has closed it
        assert await get(connection) == b"two"
    assert server.accepts == 2
    assert len(server.requests) == 2  # seen closed before use: nothing was lost to it


@pytest.mark.parametrize("then", [Then.UNANSWERED, Then.RESET], ids=["closed", "reset"])
async def test_a_reused_connection_closed_under_the_request_is_retried_once(
    tmp_path: Path, then: Then
) -> None:
    """The server closes the idle connection just as the request goes out: no byte of
    answer, so the request is sent again at once on a new connection."""
    answers = [Answer(ok(b"one")), Answer(then=then), Answer(ok(b"two"))]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        assert await get(connection) == b"two"
        assert connection.is_open
    assert server.accepts == 2
    assert len(server.requests) == 3


async def test_the_retry_is_made_once_and_never_for_a_new_connection(tmp_path: Path) -> None:
    unanswered = Answer(then=Then.UNANSWERED)
    async with keep_alive_shim(tmp_path, unanswered) as (server, connection):
        error = await get_error(connection)
    assert (error.reason, error.detail) == (ScrapeFailure.CONNECT, "closed without a response")
    assert (server.accepts, len(server.requests)) == (1, 1)

    answers = [Answer(ok(b"one")), unanswered, unanswered]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        error = await get_error(connection)
    assert (error.reason, error.detail) == (ScrapeFailure.CONNECT, "closed without a response")
    assert (server.accepts, len(server.requests)) == (2, 3)


@pytest.mark.parametrize(
    ("answer", "reason", "detail"),
    [
        (Answer(b"HTTP/1.1 2", Then.CLOSE), ScrapeFailure.PROTOCOL, "inside the response head"),
        (Answer(b"HTTP/1.1 2", Then.RESET), ScrapeFailure.CONNECT, "reading response"),
        (Answer(OK_HEAD + b"Content-Length: 9\r\n\r\nhal", Then.RESET), ScrapeFailure.CONNECT, ""),
    ],
    ids=["closed-in-head", "reset-in-head", "reset-in-body"],
)
async def test_no_retry_once_a_byte_of_the_response_came(
    tmp_path: Path, answer: Answer, reason: ScrapeFailure, detail: str
) -> None:
    answers = [Answer(ok(b"one")), answer, Answer(ok(b"two"))]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        error = await get_error(connection)
        assert error.reason is reason
        assert detail in error.detail
        assert not connection.is_open
    assert (server.accepts, len(server.requests)) == (1, 2)


async def test_bytes_arriving_on_an_idle_connection_make_it_unusable(tmp_path: Path) -> None:
    """Unasked-for bytes would be read as the next response: a new connection is opened."""
    stale = ok(b"stale")
    answers = [Answer(ok(b"one"), unsolicited=stale), Answer(ok(b"fresh"))]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        server.unsolicited.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await get(connection) == b"fresh"
    assert server.accepts == 2


async def test_a_timeout_mid_response_drops_the_connection(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    answers = [
        Answer(ok(b"one")),
        Answer(OK_HEAD + b"Content-Length: 10\r\n\r\nhalf", Then.STALL),
        Answer(ok(b"two")),
    ]
    async with keep_alive_shim(tmp_path, *answers) as (server, connection):
        assert await get(connection) == b"one"
        with trio.move_on_after(3) as scope:
            await get(connection)
        assert scope.cancelled_caught
        assert not connection.is_open
        await trio.testing.wait_all_tasks_blocked()
        assert server.client_closes == 1  # closed at once, not left half read
        assert await get(connection) == b"two"
    assert server.accepts == 2


async def test_a_missing_or_dead_socket_fails_as_with_fetch(tmp_path: Path) -> None:
    async with ShimConnection(tmp_path / "shim.sock") as connection:
        assert (await get_error(connection)).reason is ScrapeFailure.NO_SOCKET
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(tmp_path / "shim.sock"))
        error = await get_error(connection)
        assert error.reason is ScrapeFailure.CONNECT
        assert "connect" in error.detail
        dead.close()
        (tmp_path / "shim.sock").unlink()
        # The shim comes up: the same connection object gets through.
        server = KeepAliveShim(tmp_path / "shim.sock", [Answer(ok(b"up"))])
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert await get(connection) == b"up"
            nursery.cancel_scope.cancel()


async def test_reconnecting_never_follows_a_symlink(shim: SimulatedShim, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "shim-monitor.sock").symlink_to(shim.socket_path)
    async with ShimConnection(linked / "shim-monitor.sock") as connection:
        error = await get_error(connection)
    assert error.reason is ScrapeFailure.CONNECT
    assert "symlink" in error.detail
    assert shim.requests == 0


async def test_a_closed_connection_refuses_further_requests(tmp_path: Path) -> None:
    async with keep_alive_shim(tmp_path, Answer(ok(b"one"))) as (server, connection):
        assert await get(connection) == b"one"
        await connection.aclose()
        assert not connection.is_open
        await trio.testing.wait_all_tasks_blocked()
        assert server.client_closes == 1
        with pytest.raises(trio.ClosedResourceError):
            await get(connection)
    assert server.accepts == 1


async def test_running_out_of_file_descriptors_is_a_connection_failure(
    shim: SimulatedShim,
) -> None:
    """With a kept connection per sandbox the agent holds many descriptors; hitting the limit
    must fail that scrape (retried like a refused connect), never escape as an OSError."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    for connect in ("directory", "socket"):
        # Room for no new descriptor, or for the directory's alone: socket() then fails.
        limit = lowest_free if connect == "directory" else lowest_free + 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            async with ShimConnection(shim.socket_path) as connection:
                error = await get_error(connection)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert error.reason is ScrapeFailure.CONNECT
        assert os.strerror(errno.EMFILE) in error.detail
    assert shim.requests == 0
    assert await fetch(shim.socket_path, "/metrics", max_body=1 << 20) == BODY
