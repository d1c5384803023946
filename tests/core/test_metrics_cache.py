"""Reuse of assembled /metrics bodies: values may lag a second, the layout never."""

from __future__ import annotations

import gzip

import trio
import trio.testing

from pulse.snapshot import AgentCounters, CriStatus, Snapshot
from pulse.web.metrics_cache import MAX_AGE, AssemblyCache


def _snapshot(version: int, layout: int) -> Snapshot:
    return Snapshot(version, 0.0, True, {}, CriStatus("x"), AgentCounters(), layout=layout)


async def test_values_may_lag_up_to_max_age_but_layout_changes_rebuild(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds: list[int] = []

    def build(snapshot: Snapshot) -> bytes:
        builds.append(snapshot.version)
        return f"v{snapshot.version}\n".encode()

    assert cache.get(_snapshot(1, 1), "k", build).body == b"v1\n"
    # New values, same layout, within MAX_AGE: the assembled body is shared.
    assert cache.get(_snapshot(2, 1), "k", build).body == b"v1\n"
    # A sandbox came or went: rebuilt at once.
    assert cache.get(_snapshot(3, 2), "k", build).body == b"v3\n"
    await trio.sleep(MAX_AGE)
    assert cache.get(_snapshot(4, 2), "k", build).body == b"v4\n"
    assert builds == [1, 3, 4]
    # Keys are separate bodies.
    assert cache.get(_snapshot(4, 2), "other", build).body == b"v4\n"


async def test_gzip_form_is_the_body_plus_the_fresh_tail() -> None:
    cache = AssemblyCache()
    body = b"".join(b"metric_%d 1\n" % i for i in range(200_000))  # several compress slices
    assembled = cache.get(_snapshot(1, 1), "k", lambda s: body)
    for tail in (b"tail_a 1\n", b"tail_b 2\n"):
        assert gzip.decompress(await assembled.gzipped(tail)) == body + tail
    assert assembled.plain(b"t\n") == body + b"t\n"
