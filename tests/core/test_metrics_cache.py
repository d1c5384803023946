"""Assembled /metrics bodies: served at once while refreshed behind the requests' backs, values
lagging at most MAX_STALE, the layout never; one build per key at a time; nothing outlives the
cache's nursery."""

from __future__ import annotations

import gzip
import io
import random
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from zlib_ng import zlib_ng

from pulse.snapshot import AgentCounters, CriStatus, Snapshot
from pulse.web import metrics_cache
from pulse.web.metrics_cache import (
    COMPRESS_SLICE,
    MAX_AGE,
    MAX_STALE,
    Assembled,
    AssemblyCache,
    AssemblyFailed,
)
from tests.helpers import watching_assembly_tasks


def _snapshot(version: int, layout: int) -> Snapshot:
    return Snapshot(version, 0.0, True, {}, CriStatus("x"), AgentCounters(), layout=layout)


async def _text(assembled: Assembled) -> bytes:
    return await assembled.plain_body()


class Builds:
    """A build function that records what it built, and how many builds ran at once.

    Each body is `pieces` pieces (a scheduling round each) naming the snapshot it came from.
    """

    def __init__(self, pieces: int = 3, piece_bytes: int = 0, fail: frozenset[int] = frozenset()):
        self.pieces = pieces
        self.piece_bytes = piece_bytes
        self.fail = fail
        self.started: list[int] = []
        self.finished: list[int] = []
        self.running = 0
        self.most_running = 0

    @staticmethod
    def body(version: int, layout: int, pieces: int = 3, piece_bytes: int = 0) -> bytes:
        return b"".join(Builds._piece(version, layout, i, piece_bytes) for i in range(pieces))

    @staticmethod
    def _piece(version: int, layout: int, index: int, piece_bytes: int) -> bytes:
        line = f'body_version{{layout="{layout}",piece="{index}"}} {version}\n'.encode()
        return line * max(1, piece_bytes // len(line))

    def __call__(self, snapshot: Snapshot) -> Iterator[bytes]:
        self.started.append(snapshot.version)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            for index in range(self.pieces):
                if snapshot.version in self.fail and index == 1:
                    raise ValueError(f"cannot build version {snapshot.version}")
                yield self._piece(snapshot.version, snapshot.layout, index, self.piece_bytes)
            self.finished.append(snapshot.version)
        finally:
            self.running -= 1

    def expected(self, version: int, layout: int) -> bytes:
        return self.body(version, layout, self.pieces, self.piece_bytes)


@asynccontextmanager
async def serving(cache: AssemblyCache) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.serve)
        yield
        nursery.cancel_scope.cancel()


async def _rounds(count: int) -> None:
    for _ in range(count):
        await trio.lowlevel.checkpoint()


async def test_a_body_past_max_age_is_served_at_once_while_a_refresh_replaces_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=10)
    async with serving(cache):
        first = await cache.get(_snapshot(1, 1), "k", builds)  # nothing yet: waits for it
        assert await _text(first) == builds.expected(1, 1)
        await trio.sleep(MAX_AGE / 2)
        # Newer values, same layout, within MAX_AGE: shared, and no refresh.
        assert await cache.get(_snapshot(2, 1), "k", builds) is first
        await trio.testing.wait_all_tasks_blocked()
        assert builds.started == [1]

        await trio.sleep(MAX_AGE / 2)
        # Past MAX_AGE: the body found, at once (its refresh has not even begun)...
        assert await cache.get(_snapshot(3, 1), "k", builds) is first
        assert builds.started == [1]
        # ...and so for whoever comes while the refresh runs.
        await _rounds(2)
        assert builds.started == [1, 3] and builds.finished == [1]
        assert await cache.get(_snapshot(4, 1), "k", builds) is first
        await trio.testing.wait_all_tasks_blocked()
        assert builds.finished == [1, 3]
        refreshed = await cache.get(_snapshot(4, 1), "k", builds)
        assert refreshed.version == 3
        assert await _text(refreshed) == builds.expected(3, 1)
        # A refresh waits for MAX_AGE again, and never rebuilds the version it has.
        await trio.sleep(MAX_AGE)
        assert await cache.get(_snapshot(3, 1), "k", builds) is refreshed
        await trio.testing.wait_all_tasks_blocked()
        assert builds.started == [1, 3]


async def test_many_concurrent_requests_start_one_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=40)  # the refresh spans 40 scheduling rounds
    seen: dict[int, list[int]] = {}

    async def scraper(number: int) -> None:
        for request in range(60):
            version = 10 + number * 100 + request  # every request has newer values
            assembled = await cache.get(_snapshot(version, 1), "k", builds)
            seen.setdefault(number, []).append(assembled.version)
            await trio.lowlevel.checkpoint()

    async with serving(cache):
        await cache.get(_snapshot(1, 1), "k", builds)
        await trio.sleep(MAX_AGE)
        async with trio.open_nursery() as nursery:
            for number in range(20):
                nursery.start_soon(scraper, number)
        await trio.testing.wait_all_tasks_blocked()

    assert builds.most_running == 1
    assert len(builds.started) == 2, builds.started  # the first build and one refresh
    refreshed = builds.started[1]
    for versions in seen.values():
        # The old body until the refresh swapped its body in, then that one, never back.
        assert set(versions) <= {1, refreshed}
        assert versions == sorted(versions)
    assert any(1 in versions for versions in seen.values())
    assert any(refreshed in versions for versions in seen.values())


async def test_a_layout_change_waits_for_its_own_build_and_drops_the_old_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=20)
    with watching_assembly_tasks() as tasks:
        async with serving(cache):
            first = await cache.get(_snapshot(1, 1), "k", builds)
            # A sandbox came: even within MAX_AGE the request waits for a body of its layout.
            second = await cache.get(_snapshot(2, 2), "k", builds)
            assert (second.version, second.layout) == (2, 2)
            assert await _text(second) == builds.expected(2, 2) != await _text(first)

            await trio.sleep(MAX_AGE)
            assert await cache.get(_snapshot(3, 2), "k", builds) is second  # refresh starts
            await _rounds(5)
            assert builds.running == 1 and builds.started[-1] == 3  # mid-way
            # The layout changes while that refresh of layout 2 runs.
            third = await cache.get(_snapshot(4, 3), "k", builds)
            assert (third.version, third.layout) == (4, 3)
            assert await _text(third) == builds.expected(4, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert 3 not in builds.finished  # cancelled, not finished and swapped in
            assert builds.most_running == 1  # never two bodies in the making
            assert await cache.get(_snapshot(4, 3), "k", builds) is third
            # A request that took its snapshot before the change gets the newer body.
            assert await cache.get(_snapshot(3, 2), "k", builds) is third
    assert not tasks.alive


async def test_values_never_lag_more_than_max_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds()
    async with serving(cache):
        await cache.get(_snapshot(1, 1), "k", builds)
        await trio.sleep(MAX_STALE)
        # A lone scraper coming back after a long pause: fresh values, not its last scrape's.
        fresh = await cache.get(_snapshot(2, 1), "k", builds)
        assert fresh.version == 2
        assert builds.finished == [1, 2]
        # An unchanged snapshot never needs another body, however old.
        await trio.sleep(MAX_STALE * 10)
        assert await cache.get(_snapshot(2, 1), "k", builds) is fresh


async def test_gzip_after_a_refresh_is_the_refreshed_body_and_the_fresh_tail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=3, piece_bytes=COMPRESS_SLICE + 1000)  # several compress slices
    async with serving(cache):
        first = await cache.get(_snapshot(1, 1), "zipped", builds, gzip=True)
        assert gzip.decompress(b"".join(await first.gzipped(b"tail 1\n"))) == (
            builds.expected(1, 1) + b"tail 1\n"
        )
        plain_only = await cache.get(_snapshot(1, 1), "plain", builds)
        await trio.sleep(MAX_AGE)
        assert await cache.get(_snapshot(2, 1), "zipped", builds, gzip=True) is first
        assert await cache.get(_snapshot(2, 1), "plain", builds) is plain_only
        await cache.settled()  # the compressing thread is not a blocked task

        refreshed = await cache.get(_snapshot(3, 1), "zipped", builds)
        assert refreshed.version == 2
        # Compressed before the swap: gzip was asked for under this key since the last one,
        # and only gzip, so the plain form was not even made...
        assert refreshed.compressed and refreshed.body is None
        # ...and not under the other, whose refresh compressed nothing.
        assert not (await cache.get(_snapshot(3, 1), "plain", builds)).compressed
        for tail in (b"tail_a 1\n", b"tail_b 22\n"):
            unzipped = gzip.decompress(b"".join(await refreshed.gzipped(tail)))
            assert unzipped == builds.expected(2, 1) + tail == await _text(refreshed) + tail

        # Only plain scrapers left: the next refresh does not compress for nobody...
        await trio.sleep(MAX_AGE)
        assert await cache.get(_snapshot(4, 1), "zipped", builds) is refreshed
        await trio.testing.wait_all_tasks_blocked()
        plain_again = await cache.get(_snapshot(4, 1), "zipped", builds)
        assert plain_again.version == 4 and not plain_again.compressed
        # ...and a gzip scraper coming back gets its form made on demand, fresh tail and all.
        unzipped = gzip.decompress(b"".join(await plain_again.gzipped(b"t 3\n")))
        assert unzipped == builds.expected(4, 1) + b"t 3\n"


async def test_stopping_cancels_the_refresh_in_flight_and_leaves_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=50)
    with watching_assembly_tasks() as tasks:
        async with serving(cache):
            first = await cache.get(_snapshot(1, 1), "k", builds)
            await trio.sleep(MAX_AGE)
            await cache.get(_snapshot(2, 1), "k", builds)
            await _rounds(5)
            assert builds.running == 1 and tasks.alive  # the refresh, mid-way
            cache.stop()
            await trio.testing.wait_all_tasks_blocked()
            assert not tasks.alive
            assert builds.finished == [1]
            # Nothing was swapped in; from now on a request builds in its own task.
            assert await cache.get(_snapshot(1, 1), "k", builds) is first
            rebuilt = await cache.get(_snapshot(2, 1), "k", builds)
            assert rebuilt.version == 2
            assert len(tasks.spawned) == 2  # the first build and the refresh


async def test_cancelling_the_serving_task_cancels_its_builds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=50)
    with watching_assembly_tasks() as tasks:
        async with trio.open_nursery() as server:  # stands in for the web server's task
            await server.start(cache.serve)
            await cache.get(_snapshot(1, 1), "k", builds)
            await trio.sleep(MAX_AGE)
            await cache.get(_snapshot(2, 1), "k", builds)
            await _rounds(5)
            assert tasks.alive
            server.cancel_scope.cancel()
        assert not tasks.alive
        assert builds.finished == [1]
    # The cache can serve again (the next time the app serves), and refreshes again.
    async with serving(cache):
        assert (await cache.get(_snapshot(3, 1), "k", builds)).version == 1
        await trio.testing.wait_all_tasks_blocked()
        assert (await cache.get(_snapshot(3, 1), "k", builds)).version == 3


async def test_without_background_builds_a_request_rebuilds_past_max_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()  # not serving: an app that does not run yet
    builds = Builds()
    first = await cache.get(_snapshot(1, 1), "k", builds)
    assert await cache.get(_snapshot(2, 1), "k", builds) is first
    assert (await cache.get(_snapshot(3, 2), "k", builds)).version == 3  # layout: at once
    await trio.sleep(MAX_AGE)
    assert (await cache.get(_snapshot(4, 2), "k", builds)).version == 4
    assert builds.started == [1, 3, 4]
    # Keys are separate bodies.
    assert await _text(await cache.get(_snapshot(4, 2), "other", builds)) == builds.expected(4, 2)


async def test_concurrent_requests_with_no_body_share_one_build(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for serve in (True, False):
        cache = AssemblyCache()
        builds = Builds(pieces=10)
        results: list[Assembled] = []

        async def request(results: list[Assembled], cache: AssemblyCache, builds: Builds) -> None:
            results.append(await cache.get(_snapshot(1, 1), "k", builds))

        async with trio.open_nursery() as nursery:
            if serve:
                await nursery.start(cache.serve)
            async with trio.open_nursery() as requests:
                for _ in range(10):
                    requests.start_soon(request, results, cache, builds)
            nursery.cancel_scope.cancel()
        assert builds.started == [1], serve
        assert len(results) == 10 and all(r is results[0] for r in results), serve


async def test_a_failed_build_fails_its_waiters_and_a_failed_refresh_keeps_the_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(fail=frozenset({1, 3}))
    outcomes: list[str] = []

    async def request() -> None:
        try:
            await cache.get(_snapshot(1, 1), "k", builds)
            outcomes.append("body")
        except AssemblyFailed:
            outcomes.append("failed")

    async with serving(cache):
        async with trio.open_nursery() as requests:
            for _ in range(3):
                requests.start_soon(request)
        assert outcomes == ["failed"] * 3
        assert builds.started == [1]  # one build, its failure shared
        good = await cache.get(_snapshot(2, 1), "k", builds)  # a later request tries again
        await trio.sleep(MAX_AGE)
        assert await cache.get(_snapshot(3, 1), "k", builds) is good
        await trio.testing.wait_all_tasks_blocked()
        assert builds.started == [1, 2, 3]
        # The refresh of version 3 failed: the body stays, and the next one is tried.
        assert await cache.get(_snapshot(4, 1), "k", builds) is good
        await trio.testing.wait_all_tasks_blocked()
        assert (await cache.get(_snapshot(4, 1), "k", builds)).version == 4


async def test_gzip_form_is_the_body_plus_the_fresh_tail() -> None:
    cache = AssemblyCache()
    body = b"".join(b"metric_%d 1\n" % i for i in range(200_000))  # several compress slices
    assembled = await cache.get(_snapshot(1, 1), "k", lambda s: (body[:5], body[5:]))
    for tail in (b"tail_a 1\n", b"tail_b 2\n"):
        assert gzip.decompress(b"".join(await assembled.gzipped(tail))) == body + tail
    assert assembled.body == body  # the pieces, joined
    assert b"".join(await assembled.plain(b"t\n")) == body + b"t\n"
    empty = Assembled(b"")
    assert gzip.decompress(b"".join(await empty.gzipped(b"t 1\n"))) == b"t 1\n"


def test_max_age_beyond_max_stale_is_refused() -> None:
    with pytest.raises(ValueError, match="max_age"):
        AssemblyCache(max_age=2.0, max_stale=1.0)


async def test_a_gzip_response_is_made_once_per_tail_and_always_matches_the_tail() -> None:
    assembled = Assembled(b"".join(b"m %d\n" % i for i in range(5000)))
    tails = [b"t 1\n", b"t 1\n", b"t 2\n", b"t 1\n"]
    bodies = [await assembled.gzipped(tail) for tail in tails]
    for tail, body in zip(tails, bodies, strict=True):
        assert len(body) == 1  # one piece: one pass through the server's send path
        assert gzip.decompress(body[0]) == assembled.body + tail
    assert bodies[1][0] is bodies[0][0]  # the same tail again: shared, not made again
    assert bodies[3][0] is not bodies[0][0] and bodies[3] == bodies[0]


async def test_a_gzip_only_key_holds_no_plain_form_until_one_is_asked_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = AssemblyCache()
    builds = Builds(pieces=4, piece_bytes=COMPRESS_SLICE + 1000)
    async with serving(cache):
        zipped = await cache.get(_snapshot(1, 1), "k", builds, gzip=True)
        assert zipped.compressed and zipped.body is None
        # Plain requests on it get the form inflated from the gzip one: once, shared.
        plains: list[tuple[bytes, ...]] = []

        async def plain_request() -> None:
            assembled = await cache.get(_snapshot(1, 1), "k", builds)
            plains.append(await assembled.plain(b"t 1\n"))

        async with trio.open_nursery() as requests:
            for _ in range(5):
                requests.start_soon(plain_request)
        assert builds.started == [1]
        assert all(pieces[0] is plains[0][0] for pieces in plains)
        assert plains[0] == (builds.expected(1, 1), b"t 1\n")
        # Both forms were asked for: the refresh makes both, in its one pass.
        await cache.get(_snapshot(2, 1), "k", builds, gzip=True)
        await trio.sleep(MAX_AGE)
        assert await cache.get(_snapshot(3, 1), "k", builds, gzip=True) is zipped
        await cache.settled()
        both = await cache.get(_snapshot(3, 1), "k", builds, gzip=True)
        assert both.version == 3 and both.compressed and both.body == builds.expected(3, 1)
        assert gzip.decompress(b"".join(await both.gzipped(b"t 2\n"))) == both.body + b"t 2\n"


def test_an_assembled_body_needs_a_form() -> None:
    with pytest.raises(ValueError, match="plain or its gzip"):
        Assembled()


async def test_compression_runs_in_a_worker_thread_a_slice_at_most_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []  # (thread, input bytes) of every compress call

    class Recording:
        def __init__(self, compressor: zlib_ng._Compress) -> None:
            self._compressor = compressor

        def compress(self, data: memoryview) -> bytes:
            calls.append((threading.get_ident(), len(data)))
            return self._compressor.compress(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._compressor, name)

    original = metrics_cache._gzip_compressor
    monkeypatch.setattr(metrics_cache, "_gzip_compressor", lambda: Recording(original()))
    cache = AssemblyCache()
    builds = Builds(pieces=2, piece_bytes=2 * COMPRESS_SLICE + 1000)
    async with serving(cache):
        zipped = await cache.get(_snapshot(1, 1), "k", builds, gzip=True)
        unzipped = gzip.decompress(b"".join(await zipped.gzipped(b"tail\n")))
    assert unzipped == builds.expected(1, 1) + b"tail\n"
    loop_thread = threading.get_ident()
    assert len(calls) >= 6 and all(thread != loop_thread for thread, _ in calls)
    assert max(size for _, size in calls) <= COMPRESS_SLICE
    assert sum(size for _, size in calls) == len(builds.expected(1, 1))


def _gunzip_exactly(stream: bytes) -> bytes:
    """One whole gzip member and nothing after it: Go's gzip reader, Prometheus's, takes
    trailing bytes (NUL padding of a buffer, say) for another member and fails on them, where
    gzip.decompress skips them."""
    inflater = zlib.decompressobj(31)
    data = inflater.decompress(stream) + inflater.flush()
    assert inflater.eof and not inflater.unused_data, "bytes after the gzip member"
    return data


@pytest.mark.parametrize("expected_share", [0.0, 0.25, 1.0, 4.0])
@pytest.mark.parametrize(("plain", "gzipped"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("piece_count", [12, 0])
async def test_forms_are_exact_whatever_size_the_body_before_them_had(
    expected_share: float, plain: bool, gzipped: bool, piece_count: int
) -> None:
    """A build sizes its buffers from the key's body before it: a body smaller, as large, or
    larger than that one (empty too) comes out byte for byte, and the gzip form is one gzip
    stream of it, nothing after."""
    pieces = [b"sample_a %d\n" % i * 700 for i in range(piece_count)]
    wanted = b"".join(pieces)
    # Incompressible, so that the gzip form before is as large as its plain one.
    like_body = random.Random(7).randbytes(int(len(b"sample_a 1\n" * 700 * 12) * expected_share))
    like, _ = await metrics_cache._assemble([like_body], plain=True, gzip=False)
    assert like is not None
    before = Assembled(like)
    await before.compress()
    body, gzip_form = await metrics_cache._assemble(
        iter(pieces), plain=plain, gzip=gzipped, like=before
    )
    assert body == (wanted if plain else None)
    assert (gzip_form is not None) is gzipped
    if gzip_form is not None:
        assert _gunzip_exactly(gzip_form.with_tail(b"")) == wanted
        assert _gunzip_exactly(gzip_form.with_tail(b"t 1\n")) == wanted + b"t 1\n"
        assert _gunzip_exactly(gzip_form.with_tail(b"")) == wanted


async def test_a_refresh_sizes_its_buffers_from_the_body_it_replaces(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected: list[int] = []
    make_buffer = metrics_cache._buffer

    def recording_buffer(size: int) -> io.BytesIO:
        expected.append(size)
        return make_buffer(size)

    monkeypatch.setattr(metrics_cache, "_buffer", recording_buffer)
    cache = AssemblyCache()
    builds = Builds(pieces=3, piece_bytes=5000)
    async with serving(cache):
        first = await cache.get(_snapshot(1, 1), "k", builds, gzip=True)
        assert expected == [0]  # nothing to go by: the gzip form grows as it comes
        expected.clear()
        plain = await cache.get(_snapshot(1, 1), "k", builds)
        assert plain is first
        await first.plain_body()  # inflated from the gzip form: no buffer of ours
        assert expected == []
        await trio.sleep(MAX_AGE)
        await cache.get(_snapshot(2, 1), "k", builds, gzip=True)
        await cache.settled()
        refreshed = await cache.get(_snapshot(2, 1), "k", builds)
        assert refreshed.version == 2 and refreshed is not first
        # Both forms were asked for: each buffer is the size of the form it replaces.
        assert sorted(expected) == sorted([len(builds.expected(1, 1)), first.gzip_size])
        assert await refreshed.plain_body() == builds.expected(2, 1)
        (response,) = await refreshed.gzipped(b"t 2\n")
        assert _gunzip_exactly(response) == builds.expected(2, 1) + b"t 2\n"


async def test_a_plain_form_inflated_after_other_tails_is_the_body_alone() -> None:
    body = b"".join(b"m %d\n" % i for i in range(5000))
    gzip_only, gzip_form = await metrics_cache._assemble([body], plain=False, gzip=True)
    assert gzip_only is None and gzip_form is not None
    assembled = Assembled(None, 1, 1, 0.0, gzip_form)
    body_start = gzip_form.response[: gzip_form.body_end]
    for tail in (b"t 1\n", b"a longer tail 2\n"):
        assert _gunzip_exactly((await assembled.gzipped(tail))[0]) == body + tail
    assert await assembled.plain_body() == body
    # Each new tail is one join of the compressed body and the new end of the stream.
    (response,) = await assembled.gzipped(b"t 3\n")
    assert response[: gzip_form.body_end] == body_start
    assert assembled.gzip_size == len(response)


async def test_a_new_tail_while_the_plain_form_is_inflated_does_not_cut_the_body() -> None:
    # Lines that compress poorly, so that inflating takes several steps with checkpoints.
    body = b"".join(b"m_%d %d\n" % (i, (i * 7919) % 100003) for i in range(40000))
    _, gzip_form = await metrics_cache._assemble([body], plain=False, gzip=True)
    assert gzip_form is not None and len(gzip_form.response) > 2 * metrics_cache.INFLATE_SLICE
    assembled = Assembled(None, 1, 1, 0.0, gzip_form)
    inflated: list[bytes] = []

    async def inflate() -> None:
        inflated.append(await assembled.plain_body())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(inflate)
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        assert not inflated  # still inflating
        (response,) = await assembled.gzipped(b"a tail much longer than the one before\n")
    assert inflated == [body]
    assert _gunzip_exactly(response) == body + b"a tail much longer than the one before\n"
