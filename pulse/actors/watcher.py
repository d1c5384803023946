"""The watcher actor: which sandboxes exist, under which roots.

inotify is the primary source of truth. A slow periodic rescan catches anything inotify cannot
report (an overflowed queue, a root replaced behind our back). A root that does not exist yet is
found through a watch on its nearest existing ancestor, backed by a once-a-second check.

The watcher sends the cache owner one message per change: SandboxAppeared when an id is first
seen under any root (or moves to another root), SandboxGone when it is under no root any more.
The same id under both roots is one sandbox; the root listed first in the config wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import trio

from pulse.channels import send_promptly
from pulse.ids import is_sandbox_id
from pulse.inotify import Event, Inotify, Mask
from pulse.logs import get_logger
from pulse.model import (
    CacheMessage,
    InitialScanDone,
    RuntimeKind,
    SandboxAppeared,
    SandboxGone,
)

log = get_logger("watcher")

ROOT_MASK = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
ANCESTOR_MASK = Mask.CREATE | Mask.MOVED_TO | Mask.ONLYDIR
ROOT_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.UNMOUNT
MISSING_ROOT_CHECK_INTERVAL = 1.0


def runtime_kind(root: Path) -> RuntimeKind:
    """runtime-rs keeps sandboxes under .../kata; the Go runtime under .../vc/sbs."""
    return RuntimeKind.RUST if root.name == "kata" else RuntimeKind.GO


def list_sandboxes(root: Path) -> set[str]:
    """Ids of the sandbox directories directly below root; symlinks and files are ignored."""
    found: set[str] = set()
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    log.debug("ignored entry: not a directory", root=root, name=entry.name)
                elif not is_sandbox_id(entry.name):
                    log.debug("ignored entry: not a sandbox id", root=root, name=entry.name)
                else:
                    found.add(entry.name)
    except FileNotFoundError:
        pass
    return found


def nearest_existing_ancestor(path: Path) -> Path:
    for candidate in path.parents:
        if candidate.is_dir():
            return candidate
    return Path("/")


class _Watcher:
    """State private to the watcher task; nothing outside this module sees it."""

    def __init__(self, roots: tuple[Path, ...], inotify: Inotify) -> None:
        self.roots = roots
        self.inotify = inotify
        self.root_wds: dict[int, Path] = {}
        self.ancestor_wds: dict[int, Path] = {}
        self.missing: set[Path] = set(roots)
        # sandbox id -> the roots it is under, in config order; the first one is the one used.
        self.present: dict[str, list[Path]] = {}
        self.outbox: list[CacheMessage] = []

    # --- state changes, each queuing the messages it implies ---

    def _primary(self, sandbox_id: str) -> Path | None:
        roots = self.present.get(sandbox_id)
        return roots[0] if roots else None

    def add(self, sandbox_id: str, root: Path) -> None:
        before = self._primary(sandbox_id)
        roots = self.present.setdefault(sandbox_id, [])
        if root in roots:
            return
        roots.append(root)
        roots.sort(key=self.roots.index)
        if roots[0] != before:
            log.debug("sandbox appeared", sandbox_id=sandbox_id, root=root)
            self.outbox.append(SandboxAppeared(sandbox_id, roots[0], runtime_kind(roots[0])))

    def discard(self, sandbox_id: str, root: Path) -> None:
        roots = self.present.get(sandbox_id)
        if not roots or root not in roots:
            return
        before = roots[0]
        roots.remove(root)
        if not roots:
            del self.present[sandbox_id]
            log.debug("sandbox gone", sandbox_id=sandbox_id, root=root)
            self.outbox.append(SandboxGone(sandbox_id, root))
        elif roots[0] != before:
            self.outbox.append(SandboxAppeared(sandbox_id, roots[0], runtime_kind(roots[0])))

    def sync_root(self, root: Path, found: Iterable[str]) -> None:
        found = set(found)
        for sandbox_id in [s for s, roots in self.present.items() if root in roots]:
            if sandbox_id not in found:
                self.discard(sandbox_id, root)
        for sandbox_id in sorted(found):
            self.add(sandbox_id, root)

    # --- roots coming and going ---

    def attach_missing_roots(self) -> None:
        for root in [r for r in self.roots if r in self.missing]:
            try:
                wd = self.inotify.add_watch(root, ROOT_MASK)
            except (FileNotFoundError, NotADirectoryError):
                self._watch_ancestor(root)
                continue
            except OSError as err:
                log.warning("cannot watch sandbox root", root=root, error=err)
                continue
            self.root_wds[wd] = root
            self.missing.discard(root)
            log.info("watching sandbox root", root=root)
            # Watch first, then list: a sandbox created in between is seen twice, never missed.
            self.sync_root(root, list_sandboxes(root))
        if not self.missing:
            for wd in list(self.ancestor_wds):
                self.inotify.remove_watch(wd)
            self.ancestor_wds.clear()

    def _watch_ancestor(self, root: Path) -> None:
        ancestor = nearest_existing_ancestor(root)
        if ancestor in self.ancestor_wds.values():
            return
        try:
            wd = self.inotify.add_watch(ancestor, ANCESTOR_MASK)
        except OSError as err:
            log.debug("cannot watch ancestor of missing root", root=root, error=err)
            return
        self.ancestor_wds[wd] = ancestor
        log.info("sandbox root missing, waiting for it", root=root, watching=ancestor)

    def root_lost(self, wd: int) -> None:
        root = self.root_wds.pop(wd)
        self.missing.add(root)
        log.info("sandbox root gone", root=root)
        self.sync_root(root, ())

    def rescan(self) -> None:
        for wd, root in list(self.root_wds.items()):
            if root.is_dir():
                self.sync_root(root, list_sandboxes(root))
            else:
                self.inotify.remove_watch(wd)
                self.root_lost(wd)
        self.attach_missing_roots()

    def handle(self, event: Event) -> None:
        if event.mask & Mask.Q_OVERFLOW:
            log.warning("inotify queue overflowed, rescanning")
            self.rescan()
            return
        if event.wd in self.ancestor_wds:
            if event.mask & Mask.IGNORED:
                self.ancestor_wds.pop(event.wd)
            self.attach_missing_roots()
            return
        root = self.root_wds.get(event.wd)
        if root is None:
            return
        if event.mask & ROOT_GONE and not event.name:
            self.root_lost(event.wd)
            self.attach_missing_roots()
        elif event.mask & (Mask.CREATE | Mask.MOVED_TO):
            if not event.mask & Mask.ISDIR:
                log.debug("ignored entry: not a directory", root=root, name=event.name)
            elif not is_sandbox_id(event.name):
                log.debug("ignored entry: not a sandbox id", root=root, name=event.name)
            else:
                self.add(event.name, root)
        elif event.mask & (Mask.DELETE | Mask.MOVED_FROM):
            self.discard(event.name, root)

    def take_outbox(self) -> list[CacheMessage]:
        messages, self.outbox = self.outbox, []
        return messages


async def run_watcher(
    roots: tuple[Path, ...],
    rescan_interval: float,
    to_cache: trio.MemorySendChannel[CacheMessage],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Report sandboxes under `roots` to the cache owner until cancelled."""
    with Inotify() as inotify:
        watcher = _Watcher(roots, inotify)
        watcher.attach_missing_roots()
        for message in watcher.take_outbox():
            await send_promptly(to_cache, message)
        await send_promptly(to_cache, InitialScanDone())
        log.info(
            "initial scan done", roots=":".join(map(str, roots)), sandboxes=len(watcher.present)
        )
        task_status.started()

        next_rescan = trio.current_time() + rescan_interval
        next_missing_check = trio.current_time() + MISSING_ROOT_CHECK_INTERVAL
        while True:
            deadline = next_rescan
            if watcher.missing:
                deadline = min(deadline, next_missing_check)
            events: list[Event] = []
            with trio.move_on_at(deadline):
                events = await inotify.read_events()
            for event in events:
                watcher.handle(event)
            now = trio.current_time()
            if now >= next_rescan:
                watcher.rescan()
                next_rescan = now + rescan_interval
            if watcher.missing and now >= next_missing_check:
                watcher.attach_missing_roots()
                next_missing_check = now + MISSING_ROOT_CHECK_INTERVAL
            for message in watcher.take_outbox():
                await to_cache.send(message)
