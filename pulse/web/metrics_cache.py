"""Assembled /metrics bodies, shared by concurrent scrapers and reused for up to a second.

A body is assembled from the per-sandbox blocks the cache owner rendered at collection time, so
a response costs joins, not rendering. At hundreds of sandboxes the snapshot changes many times
a second (every collection publishes one), so a body is reused until it is MAX_AGE old even if
newer snapshots exist: its data is up to a collection interval old anyway, and one more second
bounds the work to one assembly and one compression per second, whatever the scrape load. Only
values may lag: a sandbox coming or going, gaining or losing data, or being relabelled changes
the snapshot's layout, and a body of another layout is never reused.

The gzip form is a compressor that has consumed the assembled part but was not flushed; each
response copies it and compresses only the small agent-wide tail (whose request counters change
with every request). Megabytes are compressed in slices with a checkpoint between them, so the
event loop keeps serving while it runs (a worker thread would leave its allocations resident in
that thread's malloc arena).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import trio

from pulse.snapshot import Snapshot

GZIP_LEVEL = 1  # Prometheus bodies compress about 5x even at level 1; latency matters more
GZIP_WBITS = 31  # zlib's gzip container
MAX_AGE = 1.0  # seconds an assembled body may lag behind the newest snapshot
COMPRESS_SLICE = 512 * 1024  # about 3 ms of zlib at level 1: the longest the loop is held


@dataclass(slots=True, eq=False)
class Assembled:
    body: bytes
    version: int = 0
    layout: int = 0
    built_at: float = 0.0  # trio clock
    _compressed_head: bytes = field(default=b"", repr=False)
    _compressor: zlib._Compress | None = field(default=None, repr=False)
    _compressing: trio.Event | None = field(default=None, repr=False)

    def plain(self, tail: bytes = b"") -> bytes:
        return self.body + tail if tail else self.body

    async def gzipped(self, tail: bytes = b"") -> bytes:
        if self._compressor is None:
            if self._compressing is None:
                self._compressing = trio.Event()
                compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
                try:
                    parts = []
                    view = memoryview(self.body)
                    for start in range(0, len(view), COMPRESS_SLICE):
                        parts.append(compressor.compress(view[start : start + COMPRESS_SLICE]))
                        await trio.lowlevel.checkpoint()  # others run between slices
                    self._compressed_head, self._compressor = b"".join(parts), compressor
                finally:
                    compressing, self._compressing = self._compressing, None
                    compressing.set()
            else:
                await self._compressing.wait()
                return await self.gzipped(tail)
        finisher = self._compressor.copy()
        return self._compressed_head + finisher.compress(tail) + finisher.flush()


class AssemblyCache:
    """Assembled bodies by key (route and query), owned by the web app."""

    MAX_ENTRIES = 64  # bounds the memo when many distinct ?sandbox= queries arrive

    def __init__(self) -> None:
        self._memo: dict[Hashable, Assembled] = {}

    def get(
        self, snapshot: Snapshot, key: Hashable, build: Callable[[Snapshot], bytes]
    ) -> Assembled:
        """The body for `key`: reused while fresh enough, else built now.

        Built on the event loop (a build is joins, or for /metrics/kata parsing): a build in a
        worker thread would leave its allocations in that thread's malloc arena, which the
        process keeps resident long after.
        """
        assembled = self._memo.get(key)
        if assembled is not None and (
            assembled.version == snapshot.version
            or (
                assembled.layout == snapshot.layout
                and trio.current_time() - assembled.built_at < MAX_AGE
            )
        ):
            return assembled
        assembled = Assembled(
            build(snapshot), snapshot.version, snapshot.layout, trio.current_time()
        )
        if len(self._memo) >= self.MAX_ENTRIES:
            self._memo.clear()
        self._memo[key] = assembled
        return assembled
