"""The agent as an operator runs it: a process that starts, serves, and stops on a signal."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("agent did not become ready")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_agent_cleanly_and_promptly(tmp_path: Path, signum: int) -> None:
    port = _free_port()
    root = tmp_path / "sbs"
    (root / ("a" * 64)).mkdir(parents=True)
    env = {**os.environ, "KATA_PULSE_LISTEN": f"127.0.0.1:{port}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse",
            "--sandbox-dir",
            str(root),
            "--runtime-endpoint",
            str(tmp_path / "cri.sock"),
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signum)
        started = time.monotonic()
        returncode = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert returncode == 0, stderr
    assert elapsed < 2.0, f"shutdown took {elapsed:.2f}s"  # the documented bound
    assert "shutting down" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_demo_serves_real_output(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse",
            "demo",
            "--sandboxes",
            "3",
            "--listen-address",
            f"127.0.0.1:{port}",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = httpx.get(f"{url}/metrics", timeout=2).text
            if body.count("container_memory_working_set_bytes{") >= 3 and re.search(
                r'pod="[^"]', body
            ):
                break
            time.sleep(0.1)
        assert body.count("container_cpu_usage_seconds_total{") >= 3
        listed = httpx.get(f"{url}/sandboxes", timeout=2).json()
        assert len(listed) == 3
        assert all(item["pod_name"] for item in listed), listed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
