"""Linux inotify, awaited through Trio's I/O loop (no thread, no polling)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio


class Mask(enum.IntFlag):
    CREATE = 0x00000100
    DELETE = 0x00000200
    DELETE_SELF = 0x00000400
    MOVE_SELF = 0x00000800
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    ATTRIB = 0x00000004
    UNMOUNT = 0x00002000
    Q_OVERFLOW = 0x00004000
    IGNORED = 0x00008000
    ONLYDIR = 0x01000000
    ISDIR = 0x40000000


_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT_HEADER = struct.Struct("iIII")


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: Mask
    name: str


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def parse_events(buffer: bytes) -> Iterator[Event]:
    offset = 0
    while offset + _EVENT_HEADER.size <= len(buffer):
        wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, offset)
        offset += _EVENT_HEADER.size
        raw_name = buffer[offset : offset + length].rstrip(b"\0")
        offset += length
        yield Event(wd, Mask(mask), os.fsdecode(raw_name))


class Inotify:
    """One inotify instance. Close it when done (it is a context manager)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd: int = fd

    def add_watch(self, path: Path, mask: Mask) -> int:
        wd: int = self._libc.inotify_add_watch(self._fd, os.fsencode(path), int(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}", str(path))
        return wd

    def remove_watch(self, wd: int) -> None:
        # EINVAL: the kernel already dropped the watch (its directory is gone); that is fine.
        if self._libc.inotify_rm_watch(self._fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    async def read_events(self) -> list[Event]:
        """Wait until at least one event is queued, then return every queued event."""
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                continue
            return list(parse_events(data))

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            # Wake any task still waiting on it; outside a Trio run there is none.
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
