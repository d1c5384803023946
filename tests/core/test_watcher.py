"""The watcher against real directories and real inotify events."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from pulse.actors.watcher import _Watcher, run_watcher
from pulse.inotify import Event, Inotify, Mask
from pulse.model import CacheMessage, InitialScanDone, RuntimeKind, SandboxAppeared, SandboxGone

SID_A = "a" * 64
SID_B = "b" * 64
SID_C = "c" * 64


async def _next(inbox: trio.MemoryReceiveChannel[CacheMessage]) -> CacheMessage:
    with trio.fail_after(3):
        return await inbox.receive()


async def _drain_scan(inbox: trio.MemoryReceiveChannel[CacheMessage]) -> list[CacheMessage]:
    messages = []
    while True:
        message = await _next(inbox)
        if isinstance(message, InitialScanDone):
            return messages
        messages.append(message)


async def test_initial_scan_finds_sandboxes_under_both_roots_and_ignores_junk(
    tmp_path: Path,
) -> None:
    go_root, rust_root = tmp_path / "vc" / "sbs", tmp_path / "kata"
    (go_root / SID_A).mkdir(parents=True)
    (rust_root / SID_B).mkdir(parents=True)
    (go_root / "not a sandbox id").mkdir()
    (go_root / ("f" * 64)).write_text("a file, not a directory")
    os.symlink(tmp_path, go_root / SID_C)  # a symlink never leads outside the root
    send, inbox = trio.open_memory_channel[CacheMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watcher, (go_root, rust_root), 30.0, send)
        found = await _drain_scan(inbox)
        nursery.cancel_scope.cancel()
    assert set(found) == {
        SandboxAppeared(SID_A, go_root, RuntimeKind.GO),
        SandboxAppeared(SID_B, rust_root, RuntimeKind.RUST),
    }


async def test_new_and_removed_sandboxes_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "vc" / "sbs"
    root.mkdir(parents=True)
    send, inbox = trio.open_memory_channel[CacheMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watcher, (root,), 30.0, send)
        assert await _drain_scan(inbox) == []
        (root / SID_A).mkdir()
        assert await _next(inbox) == SandboxAppeared(SID_A, root, RuntimeKind.GO)
        (root / "junk-file").write_text("")
        (root / ".hidden").mkdir()
        (root / SID_B).mkdir()
        # junk produced no message: the next one is about SID_B
        assert await _next(inbox) == SandboxAppeared(SID_B, root, RuntimeKind.GO)
        (root / SID_A).rmdir()
        assert await _next(inbox) == SandboxGone(SID_A, root)
        os.rename(root / SID_B, tmp_path / "moved-away")
        assert await _next(inbox) == SandboxGone(SID_B, root)
        nursery.cancel_scope.cancel()


async def test_root_created_after_start_is_picked_up(tmp_path: Path) -> None:
    root = tmp_path / "later" / "kata"
    send, inbox = trio.open_memory_channel[CacheMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watcher, (root,), 30.0, send)
        assert await _drain_scan(inbox) == []
        (root / SID_A).mkdir(parents=True)
        with trio.fail_after(1.5):
            message = await inbox.receive()
        assert message == SandboxAppeared(SID_A, root, RuntimeKind.RUST)
        # And it is watched from then on, by inotify.
        (root / SID_B).mkdir()
        assert await _next(inbox) == SandboxAppeared(SID_B, root, RuntimeKind.RUST)
        nursery.cancel_scope.cancel()


async def test_root_removed_and_recreated(tmp_path: Path) -> None:
    root = tmp_path / "kata"
    (root / SID_A).mkdir(parents=True)
    send, inbox = trio.open_memory_channel[CacheMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watcher, (root,), 30.0, send)
        assert await _drain_scan(inbox) == [SandboxAppeared(SID_A, root, RuntimeKind.RUST)]
        (root / SID_A).rmdir()
        assert await _next(inbox) == SandboxGone(SID_A, root)
        root.rmdir()
        root.mkdir()
        (root / SID_B).mkdir()
        assert await _next(inbox) == SandboxAppeared(SID_B, root, RuntimeKind.RUST)
        nursery.cancel_scope.cancel()


async def test_same_id_under_both_roots_is_one_sandbox(tmp_path: Path) -> None:
    go_root, rust_root = tmp_path / "vc" / "sbs", tmp_path / "kata"
    (go_root / SID_A).mkdir(parents=True)
    (rust_root / SID_A).mkdir(parents=True)
    send, inbox = trio.open_memory_channel[CacheMessage](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watcher, (go_root, rust_root), 30.0, send)
        assert await _drain_scan(inbox) == [SandboxAppeared(SID_A, go_root, RuntimeKind.GO)]
        # Leaving the first root moves it to the second; leaving both removes it.
        (go_root / SID_A).rmdir()
        assert await _next(inbox) == SandboxAppeared(SID_A, rust_root, RuntimeKind.RUST)
        (rust_root / SID_A).rmdir()
        assert await _next(inbox) == SandboxGone(SID_A, rust_root)
        nursery.cancel_scope.cancel()


def test_rescan_and_queue_overflow_resync_from_the_filesystem(tmp_path: Path) -> None:
    """What inotify cannot report (an overflowed queue) is recovered by listing the roots."""
    root = tmp_path / "vc" / "sbs"
    (root / SID_A).mkdir(parents=True)
    with Inotify() as inotify:
        watcher = _Watcher((root,), inotify)
        watcher.attach_missing_roots()
        assert watcher.take_outbox() == [SandboxAppeared(SID_A, root, RuntimeKind.GO)]
        # Changes whose events are never read: only a rescan can see them.
        (root / SID_A).rmdir()
        (root / SID_B).mkdir()
        watcher.rescan()
        assert watcher.take_outbox() == [
            SandboxGone(SID_A, root),
            SandboxAppeared(SID_B, root, RuntimeKind.GO),
        ]
        (root / SID_C).mkdir()
        watcher.handle(Event(-1, Mask.Q_OVERFLOW, ""))
        assert watcher.take_outbox() == [SandboxAppeared(SID_C, root, RuntimeKind.GO)]
