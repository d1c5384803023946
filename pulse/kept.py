"""Shim bodies kept between collections, compressed.

The agent keeps each sandbox's last good body for the kata-monitor compatible output. Kept as
it came, that was the largest part of the agent's memory (about 95 kB a sandbox, 46 MB at 500).
LZ4 shrinks such a body about fivefold in a twentieth of a millisecond and restores it faster
still; zlib would shrink it further at seven times the CPU, paid at every collection, while
the bodies are only read when /metrics/kata is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import lz4.block


@dataclass(frozen=True, slots=True)
class KeptBody:
    compressed: bytes
    size: int  # of the body as received

    @classmethod
    def of(cls, body: bytes) -> KeptBody:
        compressed: bytes = lz4.block.compress(body, store_size=False)
        return cls(compressed, len(body))

    def raw(self) -> bytes:
        body: bytes = lz4.block.decompress(self.compressed, uncompressed_size=self.size)
        return body
