"""The throughput baseline: a bare Quart-Trio route on Hypercorn's trio worker, in its own process.

    python -m bench.bare_server BODY_FILE PORT [--gzip]

Serves the bytes of BODY_FILE (captured from the agent's /metrics in the same run) on
GET /metrics with the agent's content type (and Content-Encoding: gzip with --gzip), so the
ratio against the agent measures what the agent adds on top of its web stack.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.include_server_header = False
    app = create_app(args.body.read_bytes(), args.gzip)
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
