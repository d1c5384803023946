"""The cAdvisor scrape routes: their answer, and the fast path that sends it without Quart.

Prometheus asks for /metrics/cadvisor (or /metrics) with a plain GET, as often as it is told
to, and so do the dashboards' ad hoc scrapes behind it. Through Quart-Trio a request costs a
nursery and two tasks, a Request with parsed headers, pushed contexts, signals and hooks before
a byte of the body is sent. Measured on Hypercorn's trio worker with 4 concurrent scrapers and a
1.7 MB gzip body, a bare ASGI route answers 15 to 20% more requests a second than a bare
Quart-Trio route with the same bytes.

So `ScrapeFastPath`, an ASGI middleware in front of the Quart app (`app.asgi_app`), answers
exactly those requests itself: an HTTP/1 GET on the two paths, with no query string and no
request body. Anything else (HEAD, ?sandbox=, another method, HTTP/2, every other route) goes
on to Quart. Both build their answer with `cadvisor_reply`; they differ only in how it is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from pulse.ids import is_sandbox_id
from pulse.logs import get_logger
from pulse.pipeline import cadvisor_pieces
from pulse.snapshot import Reader, Snapshot
from pulse.web.metrics_cache import AssemblyCache, AssemblyFailed, Body
from pulse.web.negotiation import lists_any

log = get_logger("web.scrape")

PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
PLAIN_TEXT: Final = "text/plain; charset=utf-8"
SCRAPE_PATHS: Final = frozenset({"/metrics", "/metrics/cadvisor"})

AsgiApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value (all of the request's, comma-joined) takes gzip."""
    return lists_any(accept_encoding, ("gzip",))


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer, transport aside: status, headers (Content-Length included), body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    pieces: Body  # sent one after the other, never joined

    @classmethod
    def text(cls, message: str, status: int) -> Reply:
        body = (message if message.endswith("\n") else message + "\n").encode()
        headers = ((b"content-type", PLAIN_TEXT.encode()), (b"content-length", b"%d" % len(body)))
        return cls(status, headers, (body,))


def sandbox_choice(values: list[str], snapshot: Snapshot) -> tuple[str | None, Reply | None]:
    """The ?sandbox= values of a request: (None, None) if none, or (id, None), or (None, error)."""
    if not values:
        return None, None
    if len(values) > 1:
        return None, Reply.text("error: give ?sandbox= at most once", 400)
    sandbox_id = values[0]
    if not is_sandbox_id(sandbox_id):
        return None, Reply.text("error: malformed sandbox id in ?sandbox=", 400)
    if sandbox_id not in snapshot.sandboxes:
        return None, Reply.text(f"error: unknown sandbox {sandbox_id}", 404)
    return sandbox_id, None


def metrics_reply(pieces: Body, gzipped: bool) -> Reply:
    """A 200 with a Prometheus text body, gzip-encoded if `gzipped`."""
    headers = [(b"content-type", PROMETHEUS_TEXT.encode()), (b"vary", b"Accept-Encoding")]
    if gzipped:
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", b"%d" % sum(map(len, pieces))))
    return Reply(200, tuple(headers), pieces)


async def cadvisor_reply(
    assembly: AssemblyCache,
    agent_tail: Callable[[Snapshot], bytes],
    snapshot: Snapshot,
    sandbox_values: list[str],
    accept_encoding: str,
) -> Reply:
    """The answer to a scrape of /metrics or /metrics/cadvisor taken at `snapshot`."""
    sandbox_id, error = sandbox_choice(sandbox_values, snapshot)
    if error is not None:
        return error
    gzipped = accepts_gzip(accept_encoding)
    try:
        assembled = await assembly.get(
            snapshot,
            ("cadvisor", sandbox_id),
            lambda s: cadvisor_pieces(s, sandbox_id),
            gzip=gzipped,
        )
        tail = agent_tail(snapshot) if sandbox_id is None else b""
        pieces = await (assembled.gzipped(tail) if gzipped else assembled.plain(tail))
    except AssemblyFailed:
        # The build logged its traceback once; every request that waited on it lands here.
        return Reply.text("error: assembling the metrics failed, see the agent's log", 500)
    except Exception:
        # A bug, not bad input: the same clear answer on both paths, and the traceback.
        log.error("answering a scrape failed", exc_info=True)
        return Reply.text("error: answering the scrape failed, see the agent's log", 500)
    return metrics_reply(pieces, gzipped)


class ScrapeFastPath:
    """ASGI middleware: plain scrapes of SCRAPE_PATHS answered here, the rest by `inner`."""

    def __init__(
        self,
        inner: AsgiApp,
        board: Reader[Snapshot],
        assembly: AssemblyCache,
        agent_tail: Callable[[Snapshot], bytes],
        count: Callable[[str, int], None],
        response_timeout: Callable[[], float | None],
    ) -> None:
        self.inner = inner
        self._board = board
        self._assembly = assembly
        self._agent_tail = agent_tail
        self._count = count
        self._response_timeout = response_timeout

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or (accept_encoding := _plain_scrape(scope)) is None:
            await self.inner(scope, receive, send)
            return
        reply = await cadvisor_reply(
            self._assembly, self._agent_tail, self._board.current, [], accept_encoding
        )
        self._count(scope["path"], reply.status)
        # As Quart-Trio bounds sending a response (its RESPONSE_TIMEOUT, read per request).
        timeout = self._response_timeout()
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            await send(
                {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
            )
            # The last piece ends the response: no empty message after it (Quart sends one),
            # each message being a pass through the server's send path.
            *pieces, last = reply.pieces or (b"",)
            for piece in pieces:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": last, "more_body": False})


def _plain_scrape(scope: HTTPScope) -> str | None:
    """For a request the fast path answers, its Accept-Encoding (comma-joined); else None.

    A request with a body is left to Quart: it reads (and bounds) request bodies, and a body
    nobody reads would hold the connection. So is every HTTP/2 request: its body comes in
    frames that no header announces.
    """
    if (
        scope["method"] != "GET"
        or scope["path"] not in SCRAPE_PATHS
        or scope["query_string"]
        or scope["http_version"] not in ("1.1", "1.0")
    ):
        return None
    encodings = []
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            encodings.append(value.decode("latin-1"))
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None
    return ",".join(encodings)
