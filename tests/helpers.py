"""Shared test plumbing: a real agent on a real port, real simulated sandboxes, polling waits."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from pulse.agent import RunningAgent, run_agent
from pulse.config import Config
from pulse.sim.fleet import SimulatedFleet

T = TypeVar("T")


def agent_config(fleet: SimulatedFleet, cri_socket: Path, **overrides: Any) -> Config:
    base = Config(
        listen_host="127.0.0.1",
        listen_port=0,
        sandbox_dirs=fleet.roots,
        runtime_endpoint=cri_socket,
        metrics_interval=30.0,
        shim_timeout=1.0,
    )
    return dataclasses.replace(base, **overrides)


@asynccontextmanager
async def running_agent(config: Config) -> AsyncIterator[RunningAgent]:
    async with trio.open_nursery() as nursery:
        agent: RunningAgent = await nursery.start(run_agent, config)
        try:
            yield agent
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_client(agent: RunningAgent) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=agent.url, timeout=10) as client:
        yield client


WAIT_LIMIT = 10.0  # a generous bound for waits whose duration is not what a test is about


async def eventually(probe: Callable[[], Awaitable[T | None]], *, every: float = 0.02) -> T:
    """Poll `probe` until it returns something other than None or False.

    Bounded by WAIT_LIMIT; a test that asserts a tighter bound wraps the call in its own
    `trio.fail_after`.
    """
    with trio.fail_after(WAIT_LIMIT):
        while True:
            result = await probe()
            if result is not None and result is not False:
                return result
            await trio.sleep(every)


class AssemblyTasks(trio.abc.Instrument):
    """Every body-assembly task (named "assemble ...") spawned, and those still alive."""

    def __init__(self) -> None:
        self.spawned: list[trio.lowlevel.Task] = []
        self.alive: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith("assemble"):
            self.spawned.append(task)
            self.alive.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.alive.discard(task)


@contextmanager
def watching_assembly_tasks() -> Iterator[AssemblyTasks]:
    tasks = AssemblyTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        yield tasks
    finally:
        trio.lowlevel.remove_instrument(tasks)
