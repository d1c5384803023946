"""The HTTP surface: a Quart-Trio app that only reads published snapshots (plain scrapes are
answered in front of it by the ASGI fast path, pulse/web/scrape.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from zlib_ng import zlib_ng

from pulse import __version__
from pulse.config import Config
from pulse.katamon import parse_filter_family
from pulse.pipeline import kata_pieces
from pulse.selfmetrics import WebCounters, render_agent_state, render_web
from pulse.snapshot import Reader, SandboxView, Snapshot
from pulse.web.metrics_cache import GZIP_LEVEL, GZIP_WBITS, Assembled, AssemblyCache, Body
from pulse.web.scrape import (
    PROMETHEUS_TEXT,
    Reply,
    ScrapeFastPath,
    accepts_gzip,
    cadvisor_reply,
    metrics_reply,
    sandbox_choice,
)
from pulse.web.stream import (
    dashboard_page,
    prefers_html,
    register_dashboard_assets,
    register_stream,
)

TAIL_MAX_AGE = 1.0  # seconds the agent-wide tail is reused while the snapshot stays the same

ENDPOINTS = (
    ("/metrics", "cAdvisor-compatible metrics of every Kata pod, plus kata_pulse_* (?sandbox=ID)"),
    ("/metrics/cadvisor", "the same, at kubelet's path"),
    ("/metrics/kata", "kata-monitor compatible raw metrics (?sandbox=ID, ?filter_family=a,b)"),
    ("/sandboxes", "JSON list of sandboxes with pod metadata and scrape health"),
    ("/healthz", "liveness: the process and its event loop respond"),
    ("/readyz", "readiness: the initial scan is done and the app is serving"),
    ("/ws", "websocket stream of live per-sandbox figures (docs/stream.md)"),
    ("/", "this index; a live dashboard when opened in a browser"),
)


class WebState:
    """State the web app owns: its request counters and its assembly memo."""

    def __init__(self, assembly: AssemblyCache | None = None) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.websocket_clients = 0
        self.assembly = assembly if assembly is not None else AssemblyCache()
        self._tail: tuple[int, float, bytes] = (-1, 0.0, b"")
        self.kata_renders = trio.CapacityLimiter(1)  # see _streamed_kata

    def count(self, handler: str, status: int) -> None:
        """One answered request, by route (its rule, or "other") and status."""
        key = (handler, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def counters(self) -> WebCounters:
        return WebCounters(dict(self.requests), self.websocket_clients)

    def agent_tail(self, snapshot: Snapshot) -> bytes:
        """The agent-wide kata_pulse_* lines, rendered once per snapshot and reused for up to
        TAIL_MAX_AGE while the snapshot stays the same.

        Under load hundreds of responses a second follow one snapshot: rendering the tail (it
        loops over every sandbox) and compressing it after the body for each of them was most
        of what a gzip response cost beyond sending it. The request counters in it lag by that
        much, like every other value in the body.
        """
        version, built_at, tail = self._tail
        now = trio.current_time()
        if version != snapshot.version or now - built_at >= TAIL_MAX_AGE:
            tail = render_agent_state(snapshot) + render_web(self.counters())
            self._tail = (snapshot.version, now, tail)
        return tail


def _text(body: str, status: int = 200) -> Response:
    return _response(Reply.text(body, status))


def _accept_encoding() -> str:
    return ",".join(request.headers.getlist("Accept-Encoding"))


def _response(reply: Reply) -> Response:
    headers = Headers([(name.decode(), value.decode()) for name, value in reply.headers])
    # Sent as its pieces: joining the body and the tail would copy megabytes per response.
    return Response(_stream(reply.pieces), reply.status, headers=headers)


async def _streamed_kata(
    snapshot: Snapshot, prefixes: tuple[str, ...], gzipped: bool, renders: trio.CapacityLimiter
) -> AsyncIterator[bytes]:
    """/metrics/kata, streamed a family at a time (chunked), never held whole.

    Whole, it is about 0.3 MB a sandbox (160 MB at 500) and building it held twice that, more
    than the agent's memory limit; streamed, a request holds the parsed bodies and about a
    megabyte of output. Not shared between requests like /metrics: the endpoint exists for
    compatibility and is scraped rarely. One render at a time (`renders`), so that concurrent
    requests cannot multiply the memory; a checkpoint between steps keeps the loop serving.
    """
    async with renders:
        compressor = None
        if gzipped:
            compressor = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, GZIP_WBITS)
        for piece in kata_pieces(snapshot, prefixes):
            await trio.lowlevel.checkpoint()
            if piece:
                yield compressor.compress(piece) if compressor is not None else piece
        if compressor is not None:
            yield compressor.flush()


async def _stream(pieces: Body) -> AsyncIterator[bytes]:
    # An async iterator: Quart runs a plain iterable's steps in worker threads.
    for piece in pieces:
        yield piece


def sandbox_json(view: SandboxView) -> dict[str, Any]:
    pod = view.pod
    return {
        "sandbox_id": view.sandbox_id,
        "pod_name": pod.name if pod else "",
        "namespace": pod.namespace if pod else "",
        "uid": pod.uid if pod else "",
        "runtime_handler": pod.runtime_handler if pod else "",
        "runtime": view.kind.value,
        "root": str(view.root),
        "state": view.state.value,
        "discovered_at": view.discovered_at,
        "last_success": view.last_success,
        "last_attempt": view.last_attempt,
        "last_duration_seconds": view.last_duration,
        "last_error": view.last_error,
        "last_error_reason": view.last_error_reason.value if view.last_error_reason else None,
        "scrapes_total": view.scrapes_total,
        "failures_total": view.failures_total,
        "malformed_lines": view.malformed_lines,
        "guest_cpu_time_unit": view.cpu_unit,
        "containers": [
            {
                "container_id": c.container_id,
                "name": c.name,
                "image": c.image,
                "state": c.state,
            }
            for c in (pod.containers if pod else ())
        ],
    }


def create_app(config: Config, board: Reader[Snapshot], web: WebState) -> QuartTrio:
    # static_folder=None: no /static route serving the working directory; the dashboard's
    # assets have their own route with a fixed list of files.
    app = QuartTrio("kata-pulse", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # no endpoint takes a body

    # Bodies are refreshed in the background (pulse/web/metrics_cache.py), in a nursery that
    # runs in the app's own: the one Quart-Trio opens in the ASGI lifespan task and exposes as
    # `app.nursery` (quart_trio/asgi.py, TrioASGILifespan) before it runs the startup hooks. It
    # lives exactly while the app serves, inside the server's task (Hypercorn's worker_serve),
    # so cancelling the server cancels the builds, and it comes with the app however the app is
    # served (the agent's server, the tests' servers) instead of every server having to open
    # one around it. Quart's shutdown only puts a deadline (BACKGROUND_TASK_SHUTDOWN_TIMEOUT,
    # 5 s) on that nursery, so after_serving cancels the builds at once: nothing outlives the
    # app, and nothing holds its shutdown.
    @app.before_serving
    async def start_background_assembly() -> None:
        await app.nursery.start(web.assembly.serve)

    @app.after_serving
    async def stop_background_assembly() -> None:
        web.assembly.stop()

    @app.after_request
    async def count_request(response: Response) -> Response:
        rule = request.url_rule
        web.count(rule.rule if rule is not None else "other", response.status_code)
        return response

    @app.get("/")
    async def index() -> Response:
        if prefers_html(request.headers.get("Accept", "")):
            return dashboard_page()
        lines = [f"kata-pulse {__version__}: Kata Containers metrics agent", ""]
        lines += [f"{path:<20} {what}" for path, what in ENDPOINTS]
        response = _text("\n".join(lines))
        response.headers["Vary"] = "Accept"
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        return _text("ok")

    @app.get("/readyz")
    async def readyz() -> Response:
        if not board.current.scan_done:
            return _text("not ready: initial sandbox scan not finished", 503)
        return _text("ready")

    async def cadvisor_metrics() -> Response:
        reply = await cadvisor_reply(
            web.assembly,
            web.agent_tail,
            board.current,
            request.args.getlist("sandbox"),
            _accept_encoding(),
        )
        return _response(reply)

    app.add_url_rule("/metrics", "metrics", cadvisor_metrics, methods=["GET"])
    app.add_url_rule("/metrics/cadvisor", "metrics_cadvisor", cadvisor_metrics, methods=["GET"])

    @app.get("/metrics/kata")
    async def kata_metrics() -> Response:
        snapshot = board.current
        sandbox_id, error = sandbox_choice(request.args.getlist("sandbox"), snapshot)
        if error is not None:
            return _response(error)
        gzipped = accepts_gzip(_accept_encoding())
        if sandbox_id is not None:
            kept = snapshot.sandboxes[sandbox_id].raw_body
            if kept is None:
                return _text(f"error: no fresh data for sandbox {sandbox_id}", 503)
            assembled = Assembled(kept.raw())
            pieces = await (assembled.gzipped() if gzipped else assembled.plain())
            return _response(metrics_reply(pieces, gzipped))
        prefixes = parse_filter_family(",".join(request.args.getlist("filter_family")))
        headers = {"Vary": "Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        body = _streamed_kata(snapshot, prefixes, gzipped, web.kata_renders)
        return Response(body, 200, content_type=PROMETHEUS_TEXT, headers=headers)

    @app.get("/sandboxes")
    async def sandboxes() -> Response:
        snapshot = board.current
        body = json.dumps([sandbox_json(view) for view in snapshot.sandboxes.values()], indent=1)
        return Response(body + "\n", 200, content_type="application/json")

    register_dashboard_assets(app)
    register_stream(app, config, board, web)
    app.asgi_app = ScrapeFastPath(  # type: ignore[method-assign]  # Quart's documented way
        app.asgi_app,
        board,
        web.assembly,
        web.agent_tail,
        web.count,
        lambda: app.config["RESPONSE_TIMEOUT"],
    )
    return app
