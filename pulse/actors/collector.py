"""Collector actors: one task per sandbox scraping its shim, and the supervisor that owns them.

The supervisor runs every collector in its own nursery and keeps one cancel scope per sandbox.
The cache owner tells it which sandboxes to collect (StartCollecting / StopCollecting); stopping
cancels the collector's scope, so no collection of a gone sandbox outlives it.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from pulse.channels import send_promptly
from pulse.kept import KeptBody
from pulse.logs import get_logger
from pulse.model import (
    CacheMessage,
    ScrapeFailed,
    ScrapeFailure,
    ScrapeSucceeded,
    StartCollecting,
    StopCollecting,
    SupervisorMessage,
)
from pulse.pipeline import BodyDigest, digest_next
from pulse.shim_client import ShimConnection, ShimError

log = get_logger("collector")

SHIM_SOCKET = "shim-monitor.sock"
METRICS_PATH = "/metrics"
# A socket that is not there yet is retried quickly at first, so that metrics show up within
# about a second of the shim starting, then less often for a shim that never comes up.
SOCKET_RETRY_FIRST = 0.05
SOCKET_RETRY_MAX = 1.0
SOCKET_NOT_READY = frozenset({ScrapeFailure.NO_SOCKET, ScrapeFailure.CONNECT})
JITTER = 0.1  # each interval is stretched or shrunk by up to 10% so collections drift apart
# How often a clean body is validated line by line; in between only the guest families the
# conversion reads are parsed, and only the lines it reads are read, checked against the
# figures of the collection before (see digest_body). Longer than the default interval (60 s),
# so that the saving holds there too; the lines left unread only reach /metrics/kata, whose
# own parse skips bad lines meanwhile. A body with malformed lines is validated at every
# collection, so its errors stay counted and visible.
WHOLE_BODY_CHECK_EVERY = 300.0


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    interval: float
    timeout: float
    max_body: int
    disk_exclude: re.Pattern[str] | None = None


async def collect_once(
    sandbox_id: str,
    generation: int,
    connection: ShimConnection,
    settings: CollectorSettings,
    *,
    whole_body: bool = True,
    previous: BodyDigest | None = None,
) -> ScrapeSucceeded | ScrapeFailed:
    """Fetch and digest one shim body over the collector's connection; the digest is parsed
    here, in the collector's task. `whole_body=False` parses only the guest families, and with
    the `previous` collection's digest reads them where they were, or without validating (see
    digest_body)."""
    started = trio.current_time()
    body: bytes | None = None
    try:
        with trio.move_on_after(settings.timeout):
            body = await connection.get(METRICS_PATH, max_body=settings.max_body)
    except ShimError as err:
        elapsed = trio.current_time() - started
        return ScrapeFailed(sandbox_id, generation, time.time(), elapsed, err.reason, err.detail)
    if body is None:
        elapsed = trio.current_time() - started
        detail = f"no complete response within {settings.timeout:g}s"
        return ScrapeFailed(
            sandbox_id, generation, time.time(), elapsed, ScrapeFailure.TIMEOUT, detail
        )
    digest = digest_next(body, settings.disk_exclude, whole=whole_body, previous=previous)
    elapsed = trio.current_time() - started
    if not digest.has_samples:
        detail = digest.first_error or "no samples in the body"
        return ScrapeFailed(
            sandbox_id, generation, time.time(), elapsed, ScrapeFailure.UNPARSEABLE, detail
        )
    kept = KeptBody.of(body)
    return ScrapeSucceeded(sandbox_id, generation, time.time(), elapsed, kept, digest)


async def run_collector(
    sandbox_id: str,
    generation: int,
    socket_path: Path,
    settings: CollectorSettings,
    to_cache: trio.MemorySendChannel[CacheMessage],
    rng: random.Random,
) -> None:
    """Collect one sandbox until cancelled: at once, then every interval (with jitter)."""
    retry_delay = SOCKET_RETRY_FIRST
    reported: ScrapeFailure | None = None
    # The second collection lands at a random phase of the interval, so sandboxes discovered
    # together (at start, or in a burst) spread out instead of firing in lockstep forever.
    next_delay = rng.uniform(0.0, settings.interval)
    # The first collection reads only what the conversion needs, so that hundreds of sandboxes
    # found at start show up sooner; the second (at its random phase) checks the whole body.
    next_whole_check = trio.current_time() + next_delay
    previous: BodyDigest | None = None  # the last good collection's figures and layout
    # One connection for the collector's life, reused across collections; closed with it.
    async with ShimConnection(socket_path) as connection:
        while True:
            whole_body = trio.current_time() >= next_whole_check
            result = await collect_once(
                sandbox_id,
                generation,
                connection,
                settings,
                whole_body=whole_body,
                previous=previous,
            )
            if isinstance(result, ScrapeSucceeded):
                previous = result.digest
                if result.digest.whole:
                    clean = result.digest.malformed_lines == 0
                    next_whole_check = trio.current_time() + (
                        WHOLE_BODY_CHECK_EVERY if clean else 0.0
                    )
            if isinstance(result, ScrapeFailed) and not socket_path.parent.is_dir():
                # The sandbox is being torn down (kata #13735): not an error, and the watcher's
                # SandboxGone will cancel this collector in a moment.
                log.debug("scrape raced the sandbox's teardown", sandbox_id=sandbox_id)
                await trio.sleep(SOCKET_RETRY_MAX)
                continue
            if isinstance(result, ScrapeFailed) and result.reason in SOCKET_NOT_READY:
                # A shim that is starting (no socket, or bound but not listening yet) is retried
                # quickly; its failure is reported once per episode, not on every retry.
                if reported is not result.reason:
                    reported = result.reason
                    await to_cache.send(result)
                await trio.sleep(retry_delay)
                retry_delay = min(retry_delay * 2, SOCKET_RETRY_MAX)
                continue
            reported = None
            retry_delay = SOCKET_RETRY_FIRST
            # The sleep below is the checkpoint; a plain send would add a scheduling round.
            await send_promptly(to_cache, result)
            await trio.sleep(next_delay)
            next_delay = settings.interval * rng.uniform(1 - JITTER, 1 + JITTER)


async def run_supervisor(
    settings: CollectorSettings,
    commands: trio.MemoryReceiveChannel[SupervisorMessage],
    to_cache: trio.MemorySendChannel[CacheMessage],
    seed: int | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start and cancel collectors as the cache owner commands."""
    rng = random.Random(seed)
    scopes: dict[str, trio.CancelScope] = {}

    async def collector(command: StartCollecting, scope: trio.CancelScope) -> None:
        sandbox_id = command.sandbox_id
        with scope:
            await run_collector(
                sandbox_id, command.generation, command.socket_path, settings, to_cache, rng
            )
        # Only forget the scope if it is still ours: a restart may have replaced it already.
        if scopes.get(sandbox_id) is scope:
            del scopes[sandbox_id]

    async with trio.open_nursery() as nursery:
        task_status.started()
        async for command in commands:
            if isinstance(command, StartCollecting):
                previous = scopes.get(command.sandbox_id)
                if previous is not None:
                    previous.cancel()
                scope = trio.CancelScope()
                scopes[command.sandbox_id] = scope
                nursery.start_soon(
                    collector, command, scope, name=f"collector:{command.sandbox_id[:12]}"
                )
            elif isinstance(command, StopCollecting):
                stopped = scopes.pop(command.sandbox_id, None)
                if stopped is not None:
                    stopped.cancel()
        nursery.cancel_scope.cancel()
