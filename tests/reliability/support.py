"""Shared plumbing of the fault suite: the agent as a separate process, and what /proc says
about a process (resident memory, open descriptors).

Running the agent as its own process lets a test measure the agent alone: the simulated shims
and CRI stay in the test process, so their sockets and buffers never count against it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

START_LIMIT = 30.0  # a generous bound for the interpreter to import and bind: not a speed test
_UP_LINE = re.compile(r'^kata_pulse_sandbox_up\{[^}]*sandbox_id="([^"]+)"[^}]*\} 1$', re.M)
_CPU_LINE = re.compile(r"^container_cpu_usage_seconds_total\{([^}]*)\}", re.M)
_CPU_ID = re.compile(r'(?:^|,)id="/kata/([^"]+)"')
_CPU_POD = re.compile(r'(?:^|,)pod="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status_kib(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS: resident now, VmHWM: resident at peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def served_sandboxes(metrics: str, pod_names: Mapping[str, str]) -> set[str]:
    """Sandboxes whose data a /metrics body carries: `kata_pulse_sandbox_up` 1 and a CPU series.

    Before the CRI named a sandbox its series carry `id="/kata/<sandbox id>"`, afterwards the
    pod's cgroup and `pod="<name>"`; `pod_names` maps sandbox ids to pod names.
    """
    ids: set[str] = set()
    pods: set[str] = set()
    for labels in _CPU_LINE.findall(metrics):
        ids.update(_CPU_ID.findall(labels))
        pods.update(_CPU_POD.findall(labels))
    return {
        sandbox_id
        for sandbox_id in _UP_LINE.findall(metrics)
        if sandbox_id in ids or pod_names.get(sandbox_id) in pods
    }


@dataclass(frozen=True, slots=True)
class AgentProcess:
    process: trio.Process
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_ready(url: str, process: trio.Process, log_path: Path) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        with trio.fail_after(START_LIMIT):
            while True:
                assert process.returncode is None, "the agent exited; see its log " + str(log_path)
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


@asynccontextmanager
async def agent_process(
    roots: Sequence[Path], cri_socket: Path, log_path: Path, *extra: str
) -> AsyncIterator[AgentProcess]:
    """`python -m pulse` on a free loopback port, ready; killed if a test leaves it running."""
    port = free_port()
    argv = [sys.executable, "-m", "pulse", "--listen-address", f"127.0.0.1:{port}"]
    for root in roots:
        argv += ["--sandbox-dir", str(root)]
    argv += ["--runtime-endpoint", str(cri_socket), *extra]
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(argv, stderr=log_file, stdout=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process, log_path)
        yield AgentProcess(process, url, log_path)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
