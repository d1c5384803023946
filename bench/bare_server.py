"""The throughput baseline: a bare Quart-Trio route on Hypercorn's trio worker, in its own process.

    python -m bench.bare_server BODY_FILE PORT [--gzip] [--asgi]

Serves the bytes of BODY_FILE (captured from the agent's /metrics in the same run) on
GET /metrics with the agent's content type (and Content-Encoding: gzip with --gzip), so the
ratio against the agent measures what the agent adds on top of its web stack. With --asgi, the
route is a bare ASGI function on Hypercorn, without Quart: the stricter baseline for the agent's
scrape fast path (pulse/web/scrape.py), which answers plain scrapes without Quart too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response
from quart_trio import QuartTrio

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(body: bytes, gzip: bool) -> QuartTrio:
    app = QuartTrio("bare")
    headers = {"Vary": "Accept-Encoding"}
    if gzip:
        headers["Content-Encoding"] = "gzip"

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(body, 200, content_type=PROMETHEUS_TEXT, headers=headers)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response("ready\n", 200, content_type="text/plain")

    return app


def create_asgi_app(body: bytes, gzip: bool) -> ASGIFramework:
    headers = [
        (b"content-type", PROMETHEUS_TEXT.encode()),
        (b"vary", b"Accept-Encoding"),
        (b"content-length", b"%d" % len(body)),
    ]
    if gzip:
        headers.append((b"content-encoding", b"gzip"))

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "http"
        status, content = (200, body) if scope["path"] == "/metrics" else (200, b"ready\n")
        answer = headers if content is body else [(b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--asgi", action="store_true", help="a bare ASGI route, no Quart")
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.include_server_header = False
    make = create_asgi_app if args.asgi else create_app
    trio.run(serve, make(args.body.read_bytes(), args.gzip), config)


if __name__ == "__main__":
    main()
