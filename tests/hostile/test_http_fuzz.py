"""The HTTP API under arbitrary requests: never a 5xx, never a hang; oversized headers and
bodies are refused. The agent runs as `kata-pulse demo` (the real agent on simulated sandboxes
and a simulated CRI) in its own process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.support import free_port

REQUEST_LIMIT = 5.0  # seconds; a response slower than this counts as a hang
PATHS = [
    "/",
    "/metrics",
    "/metrics/cadvisor",
    "/metrics/kata",
    "/sandboxes",
    "/healthz",
    "/readyz",
    "/ws",
    "/static/dashboard.js",
    "/dashboard.js",
    "/nope",
    "/metrics/",
    "//metrics",
    "/metrics/../sandboxes",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/metrics%00",
]
QUERY_KEYS = ["sandbox", "filter_family", "namespace", "format", "", "a" * 300]
text = st.text(max_size=200)
ids = st.one_of(text, st.sampled_from(["..", "../../etc", "a/b", "x" * 129, "\x00", "0" * 64]))


@pytest.fixture(scope="module")
def agent() -> Iterator[str]:
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pulse", "demo", "--sandboxes", "3", "--churn-secs", "0",
            "--seed", "1", "--listen-address", f"127.0.0.1:{port}", "--log-level", "warning",
        ],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None
            try:
                if httpx.get(f"{url}/metrics", timeout=1).text.count("container_cpu_usage") >= 3:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url
        assert process.poll() is None, "the agent died"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        log.seek(0)
        output = log.read().decode(errors="replace")
        assert "Traceback" not in output, output[-3000:]
    finally:
        process.kill()
        log.close()


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.status_code, response.text)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.one_of(st.sampled_from(PATHS), text.map(lambda t: "/" + t)),
    params=st.lists(st.tuples(st.sampled_from(QUERY_KEYS), ids), max_size=6),
    accept=st.sampled_from(["", "*/*", "text/html", "gzip", "x" * 1000]),
    encoding=st.sampled_from(["", "gzip", "gzip;q=0", "br, gzip;q=0.5", "*", ";;;"]),
)
def test_any_get_is_answered_without_a_server_error(
    agent: str, path: str, params: list[tuple[str, str]], accept: str, encoding: str
) -> None:
    headers = {"Accept": accept, "Accept-Encoding": encoding}
    try:
        url = httpx.URL(agent + path)
    except httpx.InvalidURL:
        return  # not a request a client can even send
    with httpx.Client(timeout=REQUEST_LIMIT) as client:
        _check(client.get(url, params=params, headers=headers))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]),
    path=st.sampled_from(PATHS),
    body=st.binary(max_size=2048),
)
def test_no_endpoint_accepts_a_write(agent: str, method: str, path: str, body: bytes) -> None:
    response = httpx.request(method, agent + path, content=body, timeout=REQUEST_LIMIT)
    _check(response)
    if method not in ("HEAD", "OPTIONS"):
        assert response.status_code in (404, 405, 413), (method, path, response.status_code)


def test_oversized_headers_are_refused(agent: str) -> None:
    with httpx.Client(timeout=REQUEST_LIMIT) as client:
        try:
            response = client.get(agent + "/metrics", headers={"X-Big": "x" * (64 * 1024)})
        except httpx.RemoteProtocolError:
            pass  # the connection was closed on it: refused as well
        else:
            assert response.status_code in (400, 413, 431)
    assert httpx.get(agent + "/healthz", timeout=REQUEST_LIMIT).status_code == 200


def test_oversized_body_is_refused(agent: str) -> None:
    with httpx.Client(timeout=REQUEST_LIMIT) as client:
        response = client.post(agent + "/metrics", content=b"x" * (8 * 1024 * 1024))
        assert response.status_code in (405, 413)
    # A new connection: Hypercorn leaves the refused body's connection waiting (see report).
    assert httpx.get(agent + "/healthz", timeout=REQUEST_LIMIT).status_code == 200


def test_a_body_that_never_comes_does_not_block_others(agent: str) -> None:
    host, port = agent.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=REQUEST_LIMIT) as stalled:
        stalled.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        stalled.sendall(b"x" * 1000)
        with httpx.Client(timeout=REQUEST_LIMIT) as client:
            assert client.get(agent + "/metrics").status_code == 200


def test_half_sent_headers_do_not_block_others(agent: str) -> None:
    host, port = agent.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(50):
            stalled = socket.create_connection((host, int(port)), timeout=REQUEST_LIMIT)
            stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(stalled)
        with httpx.Client(timeout=REQUEST_LIMIT) as client:
            assert client.get(agent + "/sandboxes").status_code == 200
    finally:
        for stalled in sockets:
            stalled.close()


def test_tmp_is_untouched_by_requests(agent: str) -> None:
    marker = Path(tempfile.gettempdir()) / "kata-pulse-must-not-exist"
    with httpx.Client(timeout=REQUEST_LIMIT) as client:
        for path in (f"/metrics?sandbox={marker}", f"/metrics/kata?sandbox=../../{marker.name}"):
            _check(client.get(agent + path))
    assert not marker.exists()
