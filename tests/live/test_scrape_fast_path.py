"""The scrape fast path (pulse/web/scrape.py) on the real app and Hypercorn: plain scrapes of
/metrics and /metrics/cadvisor are answered without Quart, exactly as Quart answers them;
every other request still goes through Quart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from pulse.config import Config
from pulse.snapshot import Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.metrics_cache import Assembled, AssemblyCache, AssemblyFailed, Build
from pulse.web.scrape import ScrapeFastPath, accepts_gzip

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
    if fast.headers.get("content-encoding") == "gzip":
        # Content-Length differs with the tail's compressed size; the encoding must not.
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
        posted = await served.fast("POST", "/metrics")
        assert posted.status_code == 405
        assert "GET" in posted.headers["allow"]
        assert served.through_quart == [
            *(f"{method} {target}" for method, target, _ in requests),
            f"GET /metrics?sandbox={one}",
            "GET /metrics",  # the request with a body
            "POST /metrics",
        ]


class _FailingAssembly(AssemblyCache):
    """An assembly whose builds all raise, as AssemblyCache.get reports a failed build."""

    async def get(
        self, snapshot: Snapshot, key: Hashable, build: Build, *, gzip: bool = False
    ) -> Assembled:
        raise AssemblyFailed(f"assembling {key!r} failed")


async def test_a_failed_build_is_a_clear_500_on_both_paths() -> None:
    publisher, web = _publisher(), WebState(_FailingAssembly())
    async with served_app(publisher, web) as served:
        for ask in (served.fast, served.quart_only):
            response = await ask("GET", "/metrics", headers=GZIP)
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("text/plain")
            assert response.text == "error: assembling the metrics failed, see the agent's log\n"
    assert web.requests[("/metrics", 500)] == 2


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
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected
