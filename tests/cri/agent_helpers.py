"""Run the whole agent against a CRI and read its HTTP endpoints, for the CRI tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from pulse.agent import RunningAgent, run_agent
from pulse.config import Config


@dataclass
class AgentUnderTest:
    agent: RunningAgent
    http: httpx.AsyncClient

    async def sandboxes(self) -> dict[str, dict[str, Any]]:
        response = await self.http.get("/sandboxes")
        response.raise_for_status()
        return {row["sandbox_id"]: row for row in json.loads(response.text)}

    async def metrics(self) -> str:
        response = await self.http.get("/metrics")
        response.raise_for_status()
        return response.text

    async def wait_for(self, probe: Callable[[AgentUnderTest], Any], limit: float = 20.0) -> Any:
        """Poll `probe` (an async function of self) until it returns something truthy."""
        last: Any = None
        with trio.move_on_after(limit):
            while True:
                last = await probe(self)
                if last:
                    return last
                await trio.sleep(0.05)
        raise AssertionError(f"condition not met within {limit}s; last probe gave {last!r}")


@contextlib.asynccontextmanager
async def running_agent(
    *, runtime_endpoint: Path, sandbox_dirs: tuple[Path, ...], **overrides: Any
) -> AsyncIterator[AgentUnderTest]:
    settings: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "runtime_endpoint": runtime_endpoint,
        "sandbox_dirs": sandbox_dirs,
        "metrics_interval": 0.5,
        "cri_sync_interval": 0.5,
        "cri_timeout": 1.0,
        "rescan_interval": 1.0,
    }
    settings.update(overrides)
    config = Config(**settings)
    async with trio.open_nursery() as nursery:
        agent: RunningAgent = await nursery.start(run_agent, config)
        async with httpx.AsyncClient(base_url=agent.url, timeout=10) as http:
            yield AgentUnderTest(agent, http)
        nursery.cancel_scope.cancel()


def row_with_pod(sandbox_id: str, name: str) -> Any:
    async def probe(agent: AgentUnderTest) -> dict[str, Any] | None:
        row = (await agent.sandboxes()).get(sandbox_id)
        return row if row is not None and row["pod_name"] == name else None

    return probe


def metrics_with(name: str | None = None, **labels: str) -> Any:
    async def probe(agent: AgentUnderTest) -> list[str]:
        return sample_lines(await agent.metrics(), name, **labels)

    return probe


def sample_lines(text: str, name: str | None = None, **labels: str) -> list[str]:
    """Sample lines (no comments) of metric `name` (any, if None) carrying every label."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if name is not None and metric != name:
            continue
        if all(label in line for label in wanted):
            found.append(line)
    return found


def sample_value(line: str) -> float:
    return float(line.rsplit("}", 1)[-1].split()[0])
