"""The CRI syncer actor: keeps the cache owner's pod metadata in step with the runtime.

One sync = Version (once per connection) + ListPodSandbox + ListContainers +
ListContainerStats, plus PodSandboxStatus for sandboxes seen for the first time and image
look-ups for containers seen for the first time, so a periodic sync of an unchanged node costs
three cheap calls. The result goes to the cache owner as one CriSynced; a failure of a list
call as one CriSyncFailed (a failing ListContainerStats only leaves the stats out). The syncer
never gives up: it retries with capped backoff (kata-monitor stopped syncing for good after
one error, kata #12398).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Final, TypeVar

import trio

from pulse.config import Config
from pulse.cri.client import CriClient, CriError
from pulse.cri.convert import (
    SandboxDetails,
    build_snapshot,
    direct_image_name,
    image_ids,
    image_names_by_id,
    sandbox_details,
)
from pulse.cri.gen import runtime_v1_pb2 as pb
from pulse.cri.schedule import SyncTiming, sync_loop
from pulse.logs import get_logger
from pulse.model import CacheMessage, CriSnapshot, CriSynced, CriSyncFailed

log = get_logger("cri")

T = TypeVar("T")

# Concurrent per-object calls (PodSandboxStatus, ContainerStatus) during one sync.
PER_OBJECT_CONCURRENCY: Final = 8

# Answers after which asking the same object again is pointless until it changes.
_PERMANENT_CODES: Final = frozenset({"UNIMPLEMENTED", "INVALID_ARGUMENT", "PERMISSION_DENIED"})
_GONE_CODES: Final = frozenset({"NOT_FOUND"})


class CriSyncer:
    """The state one syncer keeps between syncs: caches of what never changes for an object."""

    def __init__(self, client: CriClient) -> None:
        self.client = client
        self._version: pb.VersionResponse | None = None
        self._details: dict[str, SandboxDetails] = {}
        self._images: dict[str, str] = {}  # container id -> human image name
        self._warned: set[str] = set()  # objects whose per-object failure was logged already
        self._stats_failing = False

    async def sync(self) -> CriSnapshot:
        """One complete sync; raises CriError if any list call fails."""
        if self._version is None:
            self._version = await self.client.version()
        version = self._version
        try:
            sandboxes = await self.client.list_pod_sandboxes()
            containers = await self.client.list_containers()
        except CriError as error:
            if error.code == "UNAVAILABLE":
                self._version = None  # maybe a different runtime (version) comes back
            raise
        stats = await self._container_stats()
        self._warned &= {sandbox.id for sandbox in sandboxes} | {c.id for c in containers}
        await self._fetch_details(sandboxes)
        await self._resolve_images(containers)
        # In a worker thread: joining the answers takes 10 to 20 ms at 500 pods, which on the
        # event loop would hold every response in flight that long; the thread hands the
        # interpreter back to the loop every switch interval (5 ms). Nothing changes the maps
        # meanwhile: the syncer waits for the thread, even when cancelled.
        return await trio.to_thread.run_sync(
            partial(
                build_snapshot,
                sandboxes,
                containers,
                stats,
                self._details,
                self._images,
                runtime_name=version.runtime_name,
                runtime_version=version.runtime_version,
            )
        )

    async def _container_stats(self) -> Sequence[pb.ContainerStats]:
        """Container stats, or none: their failure must not cost every pod its labels.

        With Kata, containerd answers ListContainerStats by asking every shim, so one sick
        sandbox can make the call time out while the metadata calls still work.
        """
        try:
            stats = await self.client.list_container_stats()
        except CriError as error:
            if not self._stats_failing:
                self._stats_failing = True
                log.warning("cri container stats unavailable, syncing without", error=error)
            return ()
        if self._stats_failing:
            self._stats_failing = False
            log.info("cri container stats available again")
        return stats

    def _warn_once(self, key: str, message: str, **fields: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, **fields)

    async def _fetch_details(self, sandboxes: Sequence[pb.PodSandbox]) -> None:
        listed = {sandbox.id for sandbox in sandboxes}
        for gone in self._details.keys() - listed:
            del self._details[gone]
        new = [sandbox.id for sandbox in sandboxes if sandbox.id not in self._details]
        await _for_each(new, self._fetch_one_details)

    async def _fetch_one_details(self, sandbox_id: str) -> None:
        try:
            status = await self.client.pod_sandbox_status(sandbox_id, verbose=True)
        except CriError as error:
            if error.code in _PERMANENT_CODES:
                self._details[sandbox_id] = SandboxDetails()
                self._warn_once(
                    sandbox_id, "cri sandbox status failed", sandbox_id=sandbox_id, error=error
                )
            elif error.code not in _GONE_CODES:
                log.debug(
                    "cri sandbox status failed, retrying next sync",
                    sandbox_id=sandbox_id,
                    error=error,
                )
            return
        # Cached even when empty: a runtime that does not report the cgroup will not start to.
        self._details[sandbox_id] = sandbox_details(status.info)

    async def _resolve_images(self, containers: Sequence[pb.Container]) -> None:
        listed = {container.id for container in containers}
        for gone in self._images.keys() - listed:
            del self._images[gone]
        pending: list[pb.Container] = []
        for container in containers:
            if container.id in self._images:
                continue
            name = direct_image_name(container.image)
            if name is not None:
                self._images[container.id] = name
            else:
                pending.append(container)
        if not pending:
            return
        # kubelet creates containers from the image ID: map IDs to tags with one ListImages.
        try:
            names = image_names_by_id(await self.client.list_images())
        except CriError as error:
            log.debug("cri image list failed, asking per container", error=error)
            names = {}
        unresolved: list[pb.Container] = []
        for container in pending:
            name = next((names[i] for i in image_ids(container) if i in names), None)
            if name is not None:
                self._images[container.id] = name
            else:
                unresolved.append(container)
        await _for_each(unresolved, self._resolve_by_status)

    async def _resolve_by_status(self, container: pb.Container) -> None:
        try:
            status = await self.client.container_status(container.id)
        except CriError as error:
            if error.code in _PERMANENT_CODES:
                self._images[container.id] = container.image.image
                self._warn_once(
                    container.id,
                    "cri container status failed",
                    container_id=container.id,
                    error=error,
                )
            elif error.code not in _GONE_CODES:
                log.debug(
                    "cri container status failed, retrying next sync",
                    container_id=container.id,
                    error=error,
                )
            return
        # Whatever this gives is the best there is; keep it for the container's lifetime.
        self._images[container.id] = direct_image_name(status.image) or container.image.image


async def _for_each(items: Iterable[T], action: Callable[[T], Awaitable[None]]) -> None:
    items = list(items)
    if not items:
        return
    limiter = trio.CapacityLimiter(PER_OBJECT_CONCURRENCY)

    async def limited(item: T) -> None:
        async with limiter:
            await action(item)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(limited, item)


class OutageLog:
    """Logs the start and the end of a CRI outage once each, however many attempts fail."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.down = False
        self.failed_attempts = 0

    def failed(self, error: str) -> None:
        self.failed_attempts += 1
        if not self.down:
            self.down = True
            log.warning("cri unavailable", endpoint=self.endpoint, error=error)
        else:
            log.debug(
                "cri still unavailable",
                endpoint=self.endpoint,
                error=error,
                attempts=self.failed_attempts,
            )

    def recovered(self) -> None:
        if self.down:
            log.info(
                "cri available again", endpoint=self.endpoint, failed_attempts=self.failed_attempts
            )
        self.down = False
        self.failed_attempts = 0


async def run_cri_syncer(
    config: Config,
    to_cache: trio.MemorySendChannel[CacheMessage],
    nudges: trio.MemoryReceiveChannel[None],
    *,
    client: CriClient | None = None,
    timing: SyncTiming | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The actor: sync at start, after nudges (new sandboxes) and every cri_sync_interval.

    Started with `await nursery.start(run_cri_syncer, config, send, nudges)`; it is ready at
    once (it does not wait for the runtime) and runs until cancelled or until the cache owner
    closes its channel.
    """
    timing = timing or SyncTiming.for_interval(config.cri_sync_interval)
    client = client or CriClient.from_config(config)
    syncer = CriSyncer(client)
    outage = OutageLog(str(client.socket_path))

    async def sync_and_report() -> bool:
        started = time.perf_counter()
        message: CacheMessage
        try:
            snapshot = await syncer.sync()
        except CriError as error:
            outage.failed(str(error))
            message = CriSyncFailed(str(error), time.time(), time.perf_counter() - started)
        except Exception as error:  # a bug must not end metadata for the agent's lifetime
            log.error("cri sync crashed", exc_info=True)
            outage.failed(repr(error))
            message = CriSyncFailed(repr(error), time.time(), time.perf_counter() - started)
        else:
            outage.recovered()
            log.debug("cri synced", pods=len(snapshot.pods))
            message = CriSynced(snapshot, time.time(), time.perf_counter() - started)
        await to_cache.send(message)
        return isinstance(message, CriSynced)

    log.info(
        "cri syncer started",
        endpoint=str(client.socket_path),
        interval=timing.interval,
        timeout=client.timeout,
    )
    async with client:
        task_status.started()
        try:
            await sync_loop(sync_and_report, nudges, timing)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("cri syncer stopping: cache channel closed")
