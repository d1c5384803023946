"""The scrape fast path (pulse/web/scrape.py) on the real app and Hypercorn: plain scrapes of
/metrics and /metrics/cadvisor are answered without Quart, exactly as Quart answers them;
every other request still goes through Quart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from pulse.config import Config
from pulse.snapshot import Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.metrics_cache import Assembled, AssemblyCache, AssemblyFailed, Build
from pulse.web.scrape import PROMETHEUS_TEXT, ScrapeFastPath, accepts_gzip
from tests.helpers import eventually

from .support import Publisher, make_view, sandbox_id, serve_loopback

GZIP = {"Accept-Encoding": "gzip"}


def _publisher() -> Publisher:
    views = []
    for n in (1, 2):
        line = f'container_memory_rss{{id="/kata/{sandbox_id(n)}"}} {n * 100}\n'.encode()
        views.append(make_view(n).with_changes(cadvisor={"container_memory_rss": line}))
    return Publisher(views)


@dataclass
class OneApp:
    """The agent's app on Hypercorn, asked either as the agent serves it (`fast`) or with its
    fast path taken off (`quart_only`: Quart answers everything). `through_quart` lists the
    requests Quart saw while the fast path was on."""

    client: httpx.AsyncClient
    app: QuartTrio
    fast_path: ScrapeFastPath
    through_quart: list[str]

    async def fast(self, method: str, target: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, target, **kwargs)

    async def quart_only(self, method: str, target: str, **kwargs: Any) -> httpx.Response:
        self.app.asgi_app = self.fast_path.inner  # type: ignore[method-assign]
        try:
            return await self.client.request(method, target, **kwargs)
        finally:
            self.app.asgi_app = self.fast_path  # type: ignore[method-assign]


@asynccontextmanager
async def served_app(publisher: Publisher, web: WebState) -> AsyncIterator[OneApp]:
    app = create_app(Config(listen_port=0), publisher.board, web)
    assert isinstance(app.asgi_app, ScrapeFastPath)
    fast_path = app.asgi_app
    through_quart: list[str] = []

    @app.before_request
    async def record() -> None:
        if app.asgi_app is fast_path:
            through_quart.append(f"{request.method} {request.full_path.rstrip('?')}")

    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: serve_loopback(app, task_status=task_status))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield OneApp(client, app, fast_path, through_quart)
        nursery.cancel_scope.cancel()


def _without_request_counts(body: bytes) -> list[bytes]:
    # The request counters in the tail differ between the two apps by the requests between.
    return [line for line in body.split(b"\n") if b"kata_pulse_http_requests_total{" not in line]


def _same_answer(fast: httpx.Response, quart: httpx.Response) -> None:
    assert fast.status_code == quart.status_code
    fast_headers = {k: v for k, v in fast.headers.items() if k != "date"}
    quart_headers = {k: v for k, v in quart.headers.items() if k != "date"}
    # Content-Length can differ with the tail (its request counters, and their compressed
    # size): each must be its own body's.
    for response, headers in ((fast, fast_headers), (quart, quart_headers)):
        length = int(headers.pop("content-length"))
        if response.request.method != "HEAD":
            assert length == response.num_bytes_downloaded
    assert fast_headers == quart_headers
    assert _without_request_counts(fast.content) == _without_request_counts(quart.content)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/metrics", GZIP),
        ("/metrics", {"Accept-Encoding": "identity"}),
        ("/metrics/cadvisor", {"Accept-Encoding": "deflate, gzip;q=0.5"}),
        ("/metrics/cadvisor", {"Accept-Encoding": "gzip;q=0"}),
    ],
)
async def test_plain_scrapes_skip_quart_and_get_quarts_answer(
    path: str, headers: dict[str, str]
) -> None:
    publisher, web = _publisher(), WebState()
    async with served_app(publisher, web) as served:
        for _ in range(2):  # a body built by one request, then a body served from the cache
            fast = await served.fast("GET", path, headers=headers)
            quart = await served.quart_only("GET", path, headers=headers)
            _same_answer(fast, quart)
        assert fast.status_code == 200
        assert sandbox_id(2).encode() in fast.content
        assert fast.content.endswith(b"kata_pulse_websocket_clients 0\n")  # the agent-wide tail
        assert served.through_quart == []
        # Counted as Quart counts them: by route and status.
        assert web.requests[(path, 200)] == 4


async def test_everything_else_still_goes_through_quart() -> None:
    publisher, web = _publisher(), WebState()
    one = sandbox_id(1)
    async with served_app(publisher, web) as served:
        requests = [
            ("HEAD", "/metrics", {}),
            ("GET", f"/metrics?sandbox={one}", GZIP),
            ("GET", "/metrics/cadvisor?sandbox=nope", {}),
            ("GET", f"/metrics/cadvisor?sandbox={sandbox_id(9)}", {}),
            ("GET", "/sandboxes", {}),
        ]
        for method, target, headers in requests:
            fast = await served.fast(method, target, headers=headers)
            quart = await served.quart_only(method, target, headers=headers)
            _same_answer(fast, quart)
        single = await served.fast("GET", f"/metrics?sandbox={one}", headers=GZIP)
        assert single.status_code == 200
        assert one.encode() in single.content and sandbox_id(2).encode() not in single.content
        with_body = await served.fast("GET", "/metrics", content=b"hello")
        assert with_body.status_code == 200
        chunked = await served.fast("GET", "/metrics", content=_pieces(b"hel", b"lo"))
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert chunked.status_code == 200
        posted = await served.fast("POST", "/metrics")
        assert posted.status_code == 405
        assert "GET" in posted.headers["allow"]
        assert served.through_quart == [
            *(f"{method} {target}" for method, target, _ in requests),
            f"GET /metrics?sandbox={one}",
            "GET /metrics",  # the request with a Content-Length body
            "GET /metrics",  # the chunked one
            "POST /metrics",
        ]


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    # A body of unknown length: httpx sends it chunked.
    for piece in pieces:
        yield piece


@dataclass
class Http2Answer:
    status: int | None
    headers: dict[bytes, bytes]
    body: bytes


async def http2_get(
    url: str, path: str, headers: dict[str, str], *, body_frames: int = 0
) -> Http2Answer:
    """One cleartext HTTP/2 GET (prior knowledge, as `curl --http2-prior-knowledge` sends it),
    with `body_frames` one-byte DATA frames after the headers; what came back in 5 s."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)]
    connection.send_headers(1, [*request, *headers.items()], end_stream=not body_frames)
    for index in range(body_frames):
        connection.send_data(1, b"x", end_stream=index == body_frames - 1)
    answer = Http2Answer(None, {}, b"")
    async with stream:
        await stream.send_all(connection.data_to_send())
        with trio.move_on_after(5):
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        answer.headers = dict(event.headers)
                        answer.status = int(answer.headers[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        answer.body += event.data
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return answer
                await stream.send_all(connection.data_to_send())
    return answer


async def test_http2_scrapes_go_through_quart() -> None:
    """An HTTP/2 request's body comes in frames no header announces; the fast path, which does
    not read bodies, leaves every HTTP/2 request to Quart."""
    publisher, web = _publisher(), WebState()
    async with served_app(publisher, web) as served:
        url = str(served.client.base_url)
        answer = await http2_get(url, "/metrics", {"accept-encoding": "identity"})
        assert answer.status == 200
        assert answer.headers[b"content-type"] == PROMETHEUS_TEXT.encode()
        assert int(answer.headers[b"content-length"]) == len(answer.body)
        assert answer.body.startswith(b"# HELP container_memory_rss")
        assert served.through_quart == ["GET /metrics"]


async def test_a_connection_that_breaks_the_servers_protocol_code_ends_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hypercorn 0.18 raises KeyError when an HTTP/2 request's body is still arriving after its
    response is complete (Hypercorn #329). That connection ends; the server serves on."""
    publisher, web = _publisher(), WebState()
    async with served_app(publisher, web) as served:
        url = str(served.client.base_url)
        answer = await http2_get(url, "/healthz", {}, body_frames=30)
        assert answer.status == 200

        async def contained() -> logging.LogRecord | None:
            # The connection's task may end after the client has its answer.
            message = "http connection ended by an error in the server's protocol handling"
            return next((r for r in caplog.records if r.getMessage() == message), None)

        record = await eventually(contained)
        assert "KeyError" in record.pulse_fields["error"]  # type: ignore[attr-defined]
        assert (await served.fast("GET", "/healthz")).status_code == 200
        assert (await http2_get(url, "/healthz", {})).status == 200


class _FailingAssembly(AssemblyCache):
    """An assembly whose builds all raise, as AssemblyCache.get reports a failed build."""

    async def get(
        self, snapshot: Snapshot, key: Hashable, build: Build, *, gzip: bool = False
    ) -> Assembled:
        raise AssemblyFailed(f"assembling {key!r} failed")


class _BrokenTail(WebState):
    """A web state whose agent-wide tail cannot be rendered: a bug, not a failed build."""

    def agent_tail(self, snapshot: Snapshot) -> bytes:
        raise RuntimeError("the tail broke")


@pytest.mark.parametrize(
    ("web", "message"),
    [
        (WebState(_FailingAssembly()), "error: assembling the metrics failed, see the agent's log"),
        (_BrokenTail(), "error: answering the scrape failed, see the agent's log"),
    ],
    ids=["failed build", "another error"],
)
async def test_a_failure_is_the_same_clear_500_on_both_paths(
    web: WebState, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with served_app(_publisher(), web) as served:
        for ask in (served.fast, served.quart_only):
            response = await ask("GET", "/metrics", headers=GZIP)
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("text/plain")
            assert response.text == message + "\n"
        assert served.through_quart == []
    assert web.requests[("/metrics", 500)] == 2
    if isinstance(web, _BrokenTail):
        logged = [r for r in caplog.records if r.getMessage() == "answering a scrape failed"]
        assert len(logged) == 2 and all(r.exc_info for r in logged)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", False),
        ("gzip", True),
        ("GZip", True),
        ("identity", False),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("br,gzip", True),
        ("x-gzip", False),
        ("gzip;q=0.00", False),
        ("gzip; Q=0", False),
        ("gzip;q=0.001", True),
        ("gzip;q=0, gzip", True),
        ("*", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected
