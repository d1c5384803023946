"""A real Prometheus server for a test, and a static exposition for it to scrape."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]  # __name__ included when the query keeps it
    value: float


@dataclass
class PrometheusServer:
    url: str
    log_path: Path
    client: httpx.AsyncClient

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def query(self, promql: str) -> list[Series]:
        response = await self.client.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {response.status_code} {body}")
        data = body["data"]
        if data["resultType"] != "vector":
            raise AssertionError(f"query {promql!r} gave a {data['resultType']}, not a vector")
        return [Series(item["metric"], float(item["value"][1])) for item in data["result"]]

    async def wait_ready(self, limit: float) -> None:
        with trio.move_on_after(limit):
            while True:
                try:
                    response = await self.client.get(f"{self.url}/-/ready")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        raise AssertionError(f"Prometheus not ready within {limit} s:\n{self.log_tail()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_prometheus(
    binary: Path, workdir: Path, config: dict[str, Any], *, ready_within: float = 20.0
) -> AsyncIterator[PrometheusServer]:
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / "prometheus.log"
    address = f"127.0.0.1:{free_port()}"
    command = [
        str(binary),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
    ]
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                server = PrometheusServer(f"http://{address}", log_path, client)
                await server.wait_ready(ready_within)
                yield server
        finally:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@contextmanager
def serving_exposition(body: str) -> Iterator[str]:
    """`body` served as a metrics page over HTTP on loopback; yields HOST:PORT."""
    payload = body.encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # Prometheus scrapes every second: keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
