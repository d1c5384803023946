"""The agent: every actor in one nursery tree, wired by memory channels.

watcher ──SandboxAppeared/Gone──▶ cache owner ◀──ScrapeSucceeded/Failed── collectors
CRI syncer ──CriSynced/Failed──▶ cache owner ──Start/StopCollecting──▶ supervisor
cache owner ──nudge──▶ CRI syncer            cache owner ──Snapshot──▶ board ──▶ web app
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from pulse.actors.cache import CacheOwner
from pulse.actors.collector import CollectorSettings, run_supervisor
from pulse.actors.watcher import run_watcher
from pulse.config import Config
from pulse.cri.syncer import run_cri_syncer
from pulse.logs import get_logger
from pulse.malloc import memory_trimmer, run_memory_trimmer
from pulse.model import CacheMessage, SupervisorMessage
from pulse.snapshot import AgentCounters, Board, CriStatus, Snapshot
from pulse.web.app import WebState
from pulse.web.server import serve_http

log = get_logger("agent")

# Collectors wait when the cache owner falls this far behind: backpressure, not unbounded memory.
CACHE_INBOX_SIZE = 1024
SUPERVISOR_QUEUE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class RunningAgent:
    """What a started agent tells its starter: where it listens and where its state is."""

    addresses: tuple[str, ...]
    board: Board[Snapshot]
    web: WebState

    @property
    def url(self) -> str:
        return self.addresses[0]


async def run_agent(
    config: Config,
    *,
    collector_seed: int | None = None,
    trim_memory: bool = False,
    task_status: trio.TaskStatus[RunningAgent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until cancelled; with `trim_memory`, hand freed memory back to the
    system periodically too (see pulse.malloc: a process-wide setting, so the caller's)."""
    started_at = time.time()
    board: Board[Snapshot] = Board(
        Snapshot(0, started_at, False, {}, CriStatus(str(config.runtime_endpoint)), AgentCounters())
    )
    web = WebState()
    to_cache, cache_inbox = trio.open_memory_channel[CacheMessage](CACHE_INBOX_SIZE)
    to_supervisor, supervisor_inbox = trio.open_memory_channel[SupervisorMessage](
        SUPERVISOR_QUEUE_SIZE
    )
    # One slot: nudges that arrive while one is pending are conflated into it.
    cri_nudges, cri_nudge_inbox = trio.open_memory_channel[None](1)
    owner = CacheOwner(config, board, to_supervisor, cri_nudges, started_at)
    owner.publish_initial()
    settings = CollectorSettings(
        config.metrics_interval, config.shim_timeout, config.shim_max_body, config.disk_exclude
    )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner.run, cache_inbox, name="cache-owner")
        trim = memory_trimmer() if trim_memory else None
        if trim is not None:
            nursery.start_soon(run_memory_trimmer, trim, name="memory-trimmer")
        # The listener comes up before the watcher: with hundreds of sandboxes present, their
        # first collections would otherwise hold up the server's start (and /readyz) behind
        # them. Until the initial scan is done /readyz says 503.
        addresses = await nursery.start(serve_http, config, board, web)
        async with to_cache:
            await nursery.start(
                run_supervisor, settings, supervisor_inbox, to_cache.clone(), collector_seed
            )
            await nursery.start(run_cri_syncer, config, to_cache.clone(), cri_nudge_inbox)
            await nursery.start(
                run_watcher, config.sandbox_dirs, config.rescan_interval, to_cache.clone()
            )
        log.info(
            "kata-pulse serving",
            listen=",".join(addresses),
            roots=":".join(map(str, config.sandbox_dirs)),
            cri=config.runtime_endpoint,
            interval=config.metrics_interval,
        )
        task_status.started(RunningAgent(tuple(addresses), board, web))
