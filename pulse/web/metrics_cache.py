"""Assembled /metrics bodies, reused for as long as the snapshot they came from is current.

A body is assembled from the per-sandbox blocks the cache owner rendered at collection time, so
a response costs joins, not rendering. The gzip form is kept as a compressor that has consumed
the assembled part but not been flushed: each response copies it and compresses only the small
agent-wide tail (whose request counters change with every request).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from pulse.snapshot import Snapshot

GZIP_LEVEL = 1  # Prometheus bodies compress about 10x even at level 1; latency matters more
GZIP_WBITS = 31  # zlib's gzip container


@dataclass(slots=True)
class Assembled:
    body: bytes
    _compressed_head: bytes | None = field(default=None, repr=False)
    _compressor: zlib._Compress | None = field(default=None, repr=False)

    def plain(self, tail: bytes = b"") -> bytes:
        return self.body + tail if tail else self.body

    def gzipped(self, tail: bytes = b"") -> bytes:
        if self._compressor is None:
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
            self._compressed_head = compressor.compress(self.body)
            self._compressor = compressor
        assert self._compressed_head is not None
        finisher = self._compressor.copy()
        return self._compressed_head + finisher.compress(tail) + finisher.flush()


class AssemblyCache:
    """Memo of assembled bodies for the current snapshot version; owned by the web app."""

    MAX_ENTRIES = 64  # bounds the memo when many distinct ?sandbox= queries hit one version

    def __init__(self) -> None:
        self._version = -1
        self._memo: dict[Hashable, Assembled] = {}

    def get(
        self, snapshot: Snapshot, key: Hashable, build: Callable[[Snapshot], bytes]
    ) -> Assembled:
        if snapshot.version != self._version:
            self._version = snapshot.version
            self._memo.clear()
        assembled = self._memo.get(key)
        if assembled is None:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            assembled = Assembled(build(snapshot))
            self._memo[key] = assembled
        return assembled
