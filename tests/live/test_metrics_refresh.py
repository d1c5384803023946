"""/metrics through the real app on Hypercorn: bodies served at once while refreshed in the app's
nursery, nothing of it left when the server stops; and the pieces the app assembles are the
pipeline's bodies byte for byte."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from pulse import katamon
from pulse.config import Config
from pulse.expo.parser import parse
from pulse.expo.text import assemble, assemble_pieces
from pulse.model import Labels
from pulse.pipeline import (
    OUTPUT_HEADERS,
    cadvisor_pieces,
    kata_pieces,
)
from pulse.snapshot import AgentCounters, Board, CriStatus, SandboxView, Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.metrics_cache import AssemblyCache
from tests.helpers import eventually, watching_assembly_tasks

from .support import agent_with_fleet, make_view, sandbox_id, serve_loopback

GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


def _view(n: int, rss: int) -> SandboxView:
    line = f'container_memory_rss{{id="/kata/{sandbox_id(n)}"}} {rss}\n'.encode()
    return make_view(n).with_changes(cadvisor={"container_memory_rss": line})


def _snapshot(version: int, layout: int, *views: SandboxView) -> Snapshot:
    return Snapshot(
        version,
        1_700_000_000.0,
        True,
        {view.sandbox_id: view for view in sorted(views, key=lambda v: v.sandbox_id)},
        CriStatus("/run/containerd/containerd.sock", up=True),
        AgentCounters(),
        layout=layout,
    )


@dataclass
class Server:
    url: str
    app_nursery: trio.Nursery


@asynccontextmanager
async def served(board: Board[Snapshot], web: WebState) -> AsyncIterator[Server]:
    app = create_app(Config(listen_port=0), board, web)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: serve_loopback(app, task_status=task_status))
        try:
            yield Server(url, app.nursery)
        finally:
            nursery.cancel_scope.cancel()


def _cadvisor_text(snapshot: Snapshot) -> bytes:
    """What /metrics starts with, by the one-piece assembler (not the pieces under test)."""
    views = snapshot.sandboxes.values()
    return assemble(OUTPUT_HEADERS, [block for v in views for block in (v.cadvisor, v.own)])


async def test_a_changed_value_is_served_late_once_and_refreshed_in_the_apps_nursery() -> None:
    # max_age=0: every request that finds newer values starts a refresh, so that the test does
    # not have to wait for a second to pass.
    web = WebState(AssemblyCache(max_age=0.0))
    board = Board(_snapshot(1, 1, _view(1, 100)))
    with watching_assembly_tasks() as tasks:
        async with (
            served(board, web) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            first = await client.get("/metrics", headers=PLAIN)
            assert first.text.startswith(_cadvisor_text(board.current).decode())
            assert int(first.headers["content-length"]) == len(first.content)
            zipped = await client.get("/metrics", headers=GZIP)
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.text.startswith(_cadvisor_text(board.current).decode())
            assert "kata_pulse_http_requests_total" in zipped.text  # the fresh tail, after it

            board.publish(_snapshot(2, 1, _view(1, 200)))  # new values, same layout
            stale = await client.get("/metrics", headers=GZIP)
            assert " 100\n" in stale.text and " 200\n" not in stale.text

            async def refreshed() -> bool:
                return " 200\n" in (await client.get("/metrics", headers=GZIP)).text

            await eventually(refreshed)
            plain = await client.get("/metrics", headers=PLAIN)
            assert plain.text.startswith(_cadvisor_text(board.current).decode())

            # A sandbox comes: the very next request shows it, whatever the bodies' age.
            board.publish(_snapshot(3, 2, _view(1, 200), _view(2, 300)))
            after = await client.get("/metrics", headers=GZIP)
            assert sandbox_id(2) in after.text
            assert after.text.startswith(_cadvisor_text(board.current).decode())

            # Every build ran in the cache's nursery, itself in the app's.
            assert len(tasks.spawned) >= 3
            for task in tasks.spawned:
                serving_task = task.parent_nursery.parent_task  # type: ignore[union-attr]
                assert serving_task.parent_nursery is server.app_nursery
    assert not tasks.alive


async def test_server_shutdown_leaves_no_build_behind() -> None:
    # Megabytes to assemble and compress: the refresh takes many scheduling rounds, and the
    # server stops as soon as it has started.
    views = [_view(n, n).with_changes(own=_big_block(n)) for n in range(1, 200)]
    web = WebState(AssemblyCache(max_age=0.0))
    board = Board(_snapshot(1, 1, *views))
    with watching_assembly_tasks() as tasks:
        async with (
            served(board, web) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            first_snapshot = board.current
            first = await client.get("/metrics", headers=GZIP)
            assert first.text.startswith(_cadvisor_text(first_snapshot).decode())
            newer = [_view(n, n + 1000).with_changes(own=_big_block(n)) for n in range(1, 200)]
            board.publish(_snapshot(2, 1, *newer))
            stale = await client.get("/metrics", headers=GZIP)
            assert stale.text.startswith(_cadvisor_text(first_snapshot).decode())
            assert len(tasks.spawned) == 2  # the first build, and the refresh
    assert not tasks.alive


def _big_block(n: int) -> dict[str, bytes]:
    line = f'kata_pulse_test_bytes{{sandbox_id="{sandbox_id(n)}",part="%d"}} 1\n'
    return {"kata_pulse_test_bytes": "".join(line % i for i in range(400)).encode()}


async def test_the_apps_pieces_are_the_pipelines_bodies() -> None:
    async with agent_with_fleet(3) as live:

        def complete() -> Snapshot | None:
            snapshot = live.agent.board.current
            views = snapshot.sandboxes.values()
            ready = len(views) == 3 and all(v.raw_body and v.cadvisor for v in views)
            return snapshot if ready else None

        async def probe() -> Snapshot | None:
            return complete()

        snapshot = await eventually(probe)
    one = next(iter(snapshot.sandboxes))
    assert b"".join(cadvisor_pieces(snapshot)) == _cadvisor_text(snapshot)
    one_only = dataclasses.replace(snapshot, sandboxes={one: snapshot.sandboxes[one]})
    assert b"".join(cadvisor_pieces(snapshot, one)) == _cadvisor_text(one_only)
    rendered = [
        katamon.KataBlock(parse(view.raw_body.raw().decode()), Labels.of(sid, view.pod))
        for sid, view in snapshot.sandboxes.items()
        if view.raw_body is not None
    ]
    for prefixes in ((), ("kata_guest",), ("kata_shim", "kata_hypervisor")):
        expected = katamon.assemble_kata(rendered, prefixes)
        assert b"".join(kata_pieces(snapshot, prefixes)) == expected
    # Small pieces: the same bytes, cut at line boundaries into pieces near the size asked.
    blocks = [block for view in snapshot.sandboxes.values() for block in (view.cadvisor, view.own)]
    whole = assemble(OUTPUT_HEADERS, blocks)
    longest_chunk = max(len(chunk) for block in blocks for chunk in block.values())
    longest_header = max(map(len, OUTPUT_HEADERS.values()))
    for piece_size in (1, 500, 4096, 16 * 1024):
        pieces = list(assemble_pieces(OUTPUT_HEADERS, blocks, piece_size))
        assert b"".join(pieces) == whole
        assert all(piece.endswith(b"\n") for piece in pieces)
        assert all(len(piece) >= piece_size for piece in pieces[:-1])
        assert max(map(len, pieces)) < piece_size + longest_chunk + longest_header
