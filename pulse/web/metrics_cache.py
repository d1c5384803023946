"""Assembled /metrics bodies, shared by concurrent scrapers and refreshed behind their backs.

A body is assembled from the per-sandbox blocks the cache owner rendered at collection time, so
a response costs joins, not rendering. At hundreds of sandboxes the snapshot changes many times
a second (up to every PUBLISH_GAP, pulse/actors/cache.py), so a body is reused while newer
snapshots come: its data is up to a collection interval old anyway. Per key (route and query):

- A body of the request's layout is served at once. Once it is MAX_AGE old and newer values
  exist, the first request to notice starts one refresh in the background and, like every
  request until the refresh swaps its body in, gets the body it found. The refresh makes the
  forms (plain, gzip) asked for since the last build, in one pass, and no other: Prometheus
  asks only for gzip, so the 11 MB plain form of a 500-sandbox body is never held for it. A
  form asked for later is made from the other (compressed or inflated) once. Whatever the
  scrape load, a key costs about one build per MAX_AGE, and no request waits.
- Values never lag by more than MAX_STALE: a body that old is not served, the request waits for
  a fresh one. A lone scraper that comes back every 15 s gets fresh values, not those of its
  previous scrape.
- The layout never lags: a snapshot's layout changes when a sandbox comes or goes, gains or
  loses data, or is relabelled; a body of an older layout is never served, requests wait for a
  build of theirs, and a refresh of the older layout still in flight is cancelled.
- One build per key at a time, shared by every request that waits: a key holds at most the body
  being served and the one being built.

Builds run in the cache's own nursery while `serve` runs (the web app starts it in its nursery,
see create_app): a client that disconnects does not abort a build that others wait on, and
shutdown cancels them. Without it (an app that is not serving yet) a request builds in its own
task, and a body is never served past MAX_AGE.

A build's joins (pipeline.ASSEMBLY_PIECE at a time) and the inflation (INFLATE_SLICE) run on
the event loop in steps with a checkpoint between them. The compression runs in a worker
thread, a piece (up to COMPRESS_SLICE) at a time: zlib-ng lets go of the interpreter while it
deflates, so the loop goes on serving meanwhile. Measured at 500 sandboxes under gzip load,
that took the p99 latency from 19 to 24 ms down to 16 to 19 ms; the peak resident memory did
not grow (the thread's malloc arena only ever holds about one compressed body).

A response is the body and the small agent-wide tail (rendered per snapshot by the web app).
A plain one is sent as those two pieces, never concatenated (that would copy 11 MB per
response at 500 sandboxes). The gzip form is one gzip response (1.7 MB at 500) and a
compressor that has consumed the body but was not flushed: a new tail is compressed by a copy
of it and joined to the response's compressed body, once per tail, and the response is shared
by the requests that carry that tail. The compressed body is held only inside the response.

A build writes each form into a buffer the size of the key's previous one, taken at once: grown
by appending, a buffer is copied again and again on its way to 11 MB, and the copies left
behind stay resident until the next trim. With both (and measured in the agent at 500
sandboxes, three paired runs), the peak under gzip load went from 143 to 147 MiB down to 135 to
136, under plain load from 147 to 148 down to 134 to 143.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import partial

import trio
from zlib_ng import zlib_ng

from pulse.logs import get_logger
from pulse.snapshot import Snapshot

log = get_logger("web.assembly")

# zlib-ng rather than the standard library's zlib: at level 2 it compresses a 500-sandbox body
# (10.9 MB) in 45 ms instead of zlib's 80 ms at level 1, and to 1.70 MB instead of 1.87 MB. Its
# output is plain gzip; any client decompresses it.
GZIP_LEVEL = 2
GZIP_WBITS = 31  # the gzip container
MAX_AGE = 1.0  # seconds a body is served without starting a refresh while newer values exist
MAX_STALE = 5.0  # seconds a body may be served at all while newer values exist
# How long one step of a build holds the event loop. Trio runs every runnable task once per
# scheduling round, so a response is delayed by one step for each round it needs while a build
# runs: small steps spread a build's cost thin (at 500 sandboxes, about 5 ms of joins a
# second). Smaller steps cost nothing measurable in total time.
INFLATE_SLICE = 16 * 1024  # of compressed input: about 0.1 MB of output
# The most handed to the compressing thread at once: about 4 ms of compression, so that a
# cancelled build (it cannot stop the thread) ends soon.
COMPRESS_SLICE = 1024 * 1024

Body = tuple[bytes, ...]  # a response body as its pieces, in order
# Makes a key's body from a snapshot, piece by piece; empty pieces are allowed (checkpoints only).
Build = Callable[[Snapshot], Iterable[bytes]]


class AssemblyFailed(RuntimeError):
    """The build a request waited for raised (its traceback was logged by the build)."""


@dataclass(slots=True, eq=False)
class _GzipForm:
    """A body's gzip form, held as one response: the compressed body, then the end of the
    stream for the last tail.

    One copy of the compressed body, not two: the body's bytes are never kept apart from the
    response they start (at 500 sandboxes each copy is 1.7 MB, and a refresh holds the old form
    and the new one at once). A new tail costs one join of the compressed body's bytes and the
    new stream end, made by a copy of a compressor that has consumed the body (never flushed).
    Under load, responses that follow one snapshot carry the same tail (WebState.agent_tail),
    so that join is made at most once a tail.
    """

    response: bytes
    body_end: int  # where the compressed body ends in `response`
    tail: bytes
    compressor: zlib_ng._Compress

    @classmethod
    def of(cls, compressed: io.BytesIO, compressor: zlib_ng._Compress) -> _GzipForm:
        """From the compressor's output so far, written into `compressed` (a `_buffer`, closed
        here)."""
        body_end = compressed.tell()
        compressed.write(_finish(compressor, b""))
        with compressed:
            return cls(_written(compressed), body_end, b"", compressor)

    def with_tail(self, tail: bytes) -> bytes:
        """The whole gzip stream of the body and then `tail`."""
        if tail != self.tail:
            with memoryview(self.response) as response:
                self.response = b"".join(
                    (response[: self.body_end], _finish(self.compressor, tail))
                )
            self.tail = tail
        return self.response


def _finish(compressor: zlib_ng._Compress, tail: bytes) -> bytes:
    """What follows the compressor's output so far in the stream of its input and `tail`."""
    # zlib-ng's compressors have copy() like zlib's; its type stubs leave it out.
    finisher: zlib_ng._Compress = compressor.copy()  # type: ignore[attr-defined]
    return finisher.compress(tail) + finisher.flush()


@dataclass(slots=True, eq=False)
class Assembled:
    """One body, in the forms asked for so far, and the snapshot it was built from.

    A build makes the forms its key was asked for since the last one (Prometheus only ever
    asks for gzip, so at 500 sandboxes 1.7 MB are kept instead of 12.7); a form asked for
    later is made from the other one, once, and shared.
    """

    body: bytes | None = None  # the plain form
    version: int = 0
    layout: int = 0
    built_at: float = 0.0  # trio clock
    _gzip: _GzipForm | None = field(default=None, repr=False)
    _converting: trio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.body is None and self._gzip is None:
            raise ValueError("an assembled body needs its plain or its gzip form")

    @property
    def compressed(self) -> bool:
        """Whether the gzip form is ready (a gzip response then costs only the tail)."""
        return self._gzip is not None

    @property
    def plain_size(self) -> int:
        """Bytes of the plain form, 0 without one."""
        return len(self.body) if self.body is not None else 0

    @property
    def gzip_size(self) -> int:
        """Bytes of the gzip response last made, 0 without a gzip form."""
        return len(self._gzip.response) if self._gzip is not None else 0

    async def plain(self, tail: bytes = b"") -> Body:
        body = await self.plain_body()
        return (body, tail) if tail else (body,)

    async def plain_body(self) -> bytes:
        await self._convert(to_gzip=False)
        assert self.body is not None
        return self.body

    async def gzipped(self, tail: bytes = b"") -> Body:
        """The gzip response, as one piece: a second piece would cost every response a pass
        through the server's send path."""
        await self._convert(to_gzip=True)
        assert self._gzip is not None
        return (self._gzip.with_tail(tail),)

    async def compress(self) -> None:
        await self._convert(to_gzip=True)

    async def _convert(self, *, to_gzip: bool) -> None:
        # Made once and shared: concurrent callers wait for the conversion in progress, and
        # if its caller is cancelled, the next one starts over.
        while (self._gzip if to_gzip else self.body) is None:
            if self._converting is not None:
                await self._converting.wait()
                continue
            self._converting = trio.Event()
            try:
                if to_gzip:
                    assert self.body is not None
                    self._gzip = await _compress(self.body)
                else:
                    assert self._gzip is not None
                    self.body = await _inflate(self._gzip)
            finally:
                converting, self._converting = self._converting, None
                converting.set()


def _gzip_compressor() -> zlib_ng._Compress:
    return zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, GZIP_WBITS)


async def _compress(body: bytes) -> _GzipForm:
    compressor = _gzip_compressor()
    compressed = _buffer(len(body) // 4)  # a /metrics body shrinks about sixfold: room to spare
    await _feed(compressor, body, compressed)
    return _GzipForm.of(compressed, compressor)


async def _feed(compressor: zlib_ng._Compress, data: bytes, compressed: io.BytesIO) -> None:
    """Compress `data` a slice at a time in a worker thread, appending the output to
    `compressed`. zlib-ng lets go of the interpreter while it deflates, so the event loop
    serves on meanwhile (on another CPU where there is one)."""
    view = memoryview(data)
    for start in range(0, len(view), COMPRESS_SLICE):
        output = await trio.to_thread.run_sync(
            compressor.compress, view[start : start + COMPRESS_SLICE]
        )
        compressed.write(output)


async def _inflate(gzip_form: _GzipForm) -> bytes:
    decompressor = zlib_ng.decompressobj(GZIP_WBITS)
    body = io.BytesIO()
    # The stream inflates to the body and then its tail: cut at the body's end. (Taken together:
    # a request may give the form a new tail while this one waits at a checkpoint.)
    response, tail = gzip_form.response, gzip_form.tail
    with memoryview(response) as stream:
        for start in range(0, len(stream), INFLATE_SLICE):
            body.write(decompressor.decompress(stream[start : start + INFLATE_SLICE]))
            await trio.lowlevel.checkpoint()
    body.write(decompressor.flush())
    body.truncate(body.tell() - len(tail))
    return body.getvalue()


async def _assemble(
    pieces: Iterable[bytes], *, plain: bool, gzip: bool, like: Assembled | None = None
) -> tuple[bytes | None, _GzipForm | None]:
    """One pass over the pieces, into the forms asked for. `like`, the key's body before
    this one, gives the sizes to expect."""
    # The plain form is written into one buffer rather than joined from a list of pieces: a
    # join holds the pieces and the body at once (at 500 sandboxes, 11 MB more at the peak,
    # while the body being served is also held). It is kept and sent as one piece: every
    # piece of a response is a send of its own, and every send a point where the response can
    # be kept waiting by other work (measured at 500 sandboxes: 12 pieces a response cost a
    # tenth of the plain throughput).
    body = _buffer(like.plain_size if like is not None else 0) if plain else None
    compressed = _buffer(like.gzip_size if gzip and like is not None else 0)  # empty unless gzip
    compressor = _gzip_compressor() if gzip else None
    for piece in pieces:  # each piece is made while the loop is ours
        if body is not None:
            body.write(piece)
        if compressor is not None:
            await _feed(compressor, piece, compressed)
        await trio.lowlevel.checkpoint()
    gzip_form = _GzipForm.of(compressed, compressor) if compressor is not None else None
    if body is None:
        return None, gzip_form
    with body:
        return _written(body), gzip_form


def _buffer(expected: int) -> io.BytesIO:
    """A buffer to write about `expected` bytes into, taken from the allocator at once.

    Grown by appending instead, a buffer is reallocated each time it outgrows itself (by an
    eighth, tens of times on its way to 11 MB). On the heap, below pulse.malloc's threshold
    for mappings of their own, each step may copy it and leave the smaller copy behind as free
    memory that stays resident until the next trim. Measured with the agent's malloc settings,
    building an 11 MB body four times over: a peak 3 MiB lower. Bytes beyond what is written
    are cut off by `_written`; a body larger than expected grows as before.

    The price: BytesIO fills the buffer with zeros, one step of 4 to 6 ms for 11 MB without a
    checkpoint, once a build (growing took 6 to 10 ms in all, in smaller steps).
    """
    buffer = io.BytesIO()
    if expected > 0:
        buffer.seek(expected - 1)
        buffer.write(b"\0")
        buffer.seek(0)
    return buffer


def _written(buffer: io.BytesIO) -> bytes:
    """What was written into a `_buffer`: cut at the writing position, handed over whole
    (BytesIO gives its own buffer away without a copy when it is read out whole)."""
    buffer.truncate()
    return buffer.getvalue()


@dataclass(slots=True, eq=False)
class _Build:
    """A build in flight: what it builds, and how waiters learn that it ended."""

    version: int
    layout: int
    done: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    failed: bool = False

    def serves(self, snapshot: Snapshot) -> bool:
        """Whether its body will do for a request that took `snapshot`."""
        return self.version >= snapshot.version or self.layout == snapshot.layout


@dataclass(slots=True, eq=False)
class _Slot:
    current: Assembled | None = None
    building: _Build | None = None
    # The forms asked for since the last build started: the next build makes those (plain if
    # neither), so that a refresh swaps in a body ready for the encodings in use and makes no
    # form for nobody (at 500 sandboxes, compressing is 45 ms a second, and a plain form that
    # no scraper reads is 11 MB).
    gzip_asked: bool = False
    plain_asked: bool = False


class AssemblyCache:
    """Assembled bodies by key (route and query), owned by the web app."""

    MAX_ENTRIES = 64  # bounds the memo when many distinct ?sandbox= queries arrive

    def __init__(self, *, max_age: float = MAX_AGE, max_stale: float = MAX_STALE) -> None:
        if not 0 <= max_age <= max_stale:
            raise ValueError(f"need 0 <= max_age <= max_stale, got {max_age}, {max_stale}")
        self._max_age = max_age
        self._max_stale = max_stale
        self._slots: dict[Hashable, _Slot] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run builds in the background until cancelled or `stop`ped."""
        if self._nursery is not None:
            raise RuntimeError("this assembly cache is already serving")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                if self._nursery is nursery:
                    self._nursery = None

    async def settled(self) -> None:
        """Wait until no build is in flight, including builds that start meanwhile.

        A build waiting on the compressing thread counts as blocked to Trio, so waiting for all
        tasks to block (as tests on the mock clock do) does not mean the builds are done."""
        while in_flight := [slot.building for slot in self._slots.values() if slot.building]:
            for build in in_flight:
                await build.done.wait()

    def stop(self) -> None:
        """Cancel the builds in flight; from now on requests build in their own task."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            self._nursery = None

    async def get(
        self, snapshot: Snapshot, key: Hashable, build: Build, *, gzip: bool = False
    ) -> Assembled:
        """The body for `key` to answer a request that took `snapshot` (compressed if `gzip`)."""
        slot = self._slot(key)
        while True:
            # (Again after every wait: a build that started may have taken the flags.)
            if gzip:
                slot.gzip_asked = True
            else:
                slot.plain_asked = True
            current = slot.current
            if current is not None and self._servable(current, snapshot):
                if (
                    slot.building is None
                    and self._nursery is not None
                    and self._due(current, snapshot)
                ):
                    self._start(self._nursery, key, slot, snapshot, build, refresh=True)
                if gzip:
                    await current.compress()
                return current
            in_flight = slot.building
            if in_flight is not None and not in_flight.serves(snapshot):
                # Its layout is already out of date: waiting would only delay the build of ours,
                # and two builds would hold two bodies.
                in_flight.cancel_scope.cancel()
                await in_flight.done.wait()
                continue
            if in_flight is None:
                if self._nursery is None:
                    in_flight = slot.building = _Build(snapshot.version, snapshot.layout)
                    await self._build(key, slot, in_flight, snapshot, build, refresh=False)
                else:
                    in_flight = self._start(
                        self._nursery, key, slot, snapshot, build, refresh=False
                    )
            await in_flight.done.wait()
            if in_flight.failed:
                raise AssemblyFailed(f"assembling {key!r} failed")

    def _servable(self, assembled: Assembled, snapshot: Snapshot) -> bool:
        if assembled.version >= snapshot.version:
            return True
        # Without background builds a body is refreshed by the request that finds it old.
        limit = self._max_stale if self._nursery is not None else self._max_age
        return (
            assembled.layout == snapshot.layout and trio.current_time() - assembled.built_at < limit
        )

    def _due(self, assembled: Assembled, snapshot: Snapshot) -> bool:
        return (
            assembled.version < snapshot.version
            and trio.current_time() - assembled.built_at >= self._max_age
        )

    def _start(
        self,
        nursery: trio.Nursery,
        key: Hashable,
        slot: _Slot,
        snapshot: Snapshot,
        build: Build,
        *,
        refresh: bool,
    ) -> _Build:
        record = slot.building = _Build(snapshot.version, snapshot.layout)
        nursery.start_soon(
            partial(self._build, key, slot, record, snapshot, build, refresh=refresh),
            name=f"assemble {key!r}",
        )
        return record

    async def _build(
        self,
        key: Hashable,
        slot: _Slot,
        record: _Build,
        snapshot: Snapshot,
        build: Build,
        *,
        refresh: bool,
    ) -> None:
        try:
            with record.cancel_scope:
                # The forms asked for since the last build; the first requests of the next
                # build's forms are those that come from now on.
                gzip, plain = slot.gzip_asked, slot.plain_asked or not slot.gzip_asked
                slot.gzip_asked = slot.plain_asked = False
                body, gzip_form = await _assemble(
                    build(snapshot), plain=plain, gzip=gzip, like=slot.current
                )
                assembled = Assembled(
                    body, snapshot.version, snapshot.layout, trio.current_time(), gzip_form
                )
                current = slot.current
                # (Builds start only for snapshots newer than the body: kept as the invariant.)
                if current is None or assembled.version > current.version:
                    slot.current = assembled
        except Exception:
            record.failed = True
            log.error(
                "assembling a metrics body failed",
                key=key,
                version=snapshot.version,
                refresh=refresh,
                exc_info=True,
            )
        finally:
            if slot.building is record:
                slot.building = None
            record.done.set()

    def _slot(self, key: Hashable) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self.MAX_ENTRIES:
                # Forget idle keys; a key with a build in flight has requests waiting on it.
                self._slots = {k: s for k, s in self._slots.items() if s.building is not None}
            slot = self._slots[key] = _Slot()
        return slot
