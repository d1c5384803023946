"""The shim HTTP client against real simulated shims on real Unix sockets."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pulse.model import ScrapeFailure
from pulse.shim_client import ShimError, fetch
from pulse.sim.shim import Behaviour, SimulatedShim

BODY = b'kata_guest_load{item="load1"} 0.5\n' * 2000  # 70 kB: several chunks and reads


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[SimulatedShim]:
    server = SimulatedShim(tmp_path / "shim-monitor.sock", lambda: BODY)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_reads_whole_body_in_either_framing(shim: SimulatedShim, chunked: bool) -> None:
    shim.chunked = chunked
    assert await fetch(shim.socket_path, "/metrics", max_body=1 << 20) == BODY


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour.ERROR, ScrapeFailure.HTTP_STATUS),
        (Behaviour.HUGE, ScrapeFailure.OVERSIZE),
        (Behaviour.TRUNCATED, ScrapeFailure.PROTOCOL),
        (Behaviour.VANISH, ScrapeFailure.PROTOCOL),
    ],
)
async def test_failures_carry_their_reason(
    shim: SimulatedShim, behaviour: Behaviour, reason: ScrapeFailure
) -> None:
    shim.behaviour = behaviour
    with pytest.raises(ShimError) as caught:
        await fetch(shim.socket_path, "/metrics", max_body=1 << 20)
    assert caught.value.reason is reason


async def test_body_over_the_cap_is_refused_even_without_content_length(
    shim: SimulatedShim,
) -> None:
    shim.chunked = True
    with pytest.raises(ShimError) as caught:
        await fetch(shim.socket_path, "/metrics", max_body=len(BODY) - 1)
    assert caught.value.reason is ScrapeFailure.OVERSIZE


async def test_missing_socket_and_dead_socket(tmp_path: Path) -> None:
    with pytest.raises(ShimError) as caught:
        await fetch(tmp_path / "nope.sock", "/metrics", max_body=1024)
    assert caught.value.reason is ScrapeFailure.NO_SOCKET
    # A socket file nobody listens on: what a crashed shim leaves behind.
    dead = trio.socket.socket(trio.socket.AF_UNIX)
    await dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(ShimError) as caught:
        await fetch(tmp_path / "dead.sock", "/metrics", max_body=1024)
    assert caught.value.reason is ScrapeFailure.CONNECT


async def test_hung_shim_is_bounded_by_the_callers_cancel_scope(
    shim: SimulatedShim, autojump_clock: trio.testing.MockClock
) -> None:
    shim.behaviour = Behaviour.HANG
    with trio.move_on_after(3) as scope:
        await fetch(shim.socket_path, "/metrics", max_body=1024)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(3)


async def test_shim_closing_without_a_byte_is_a_connection_failure(tmp_path: Path) -> None:
    """What a shim being torn down mid-request looks like; not a malformed response."""

    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.aclose()

    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(tmp_path / "s.sock"))
    sock.listen(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, close_at_once, [trio.SocketListener(sock)])
        with pytest.raises(ShimError) as caught:
            await fetch(tmp_path / "s.sock", "/metrics", max_body=1024)
        assert caught.value.reason is ScrapeFailure.CONNECT
        nursery.cancel_scope.cancel()


async def test_deep_sandbox_roots_beyond_the_unix_socket_path_limit(tmp_path: Path) -> None:
    """A socket path over 107 bytes cannot be passed to connect(); the agent reaches it
    through the held-open sandbox directory instead."""
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    short = Path("/tmp") / f"kp-{os.getpid()}-deep.sock"
    await listener.bind(str(short))  # bound under a short name, then moved deep
    listener.listen(1)
    os.rename(short, directory / "shim-monitor.sock")
    assert len(str(directory / "shim-monitor.sock")) > 107

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, answer, [trio.SocketListener(listener)])
        assert await fetch(directory / "shim-monitor.sock", "/metrics", max_body=64) == b"ok\n"
        nursery.cancel_scope.cancel()


async def test_symlinked_sandbox_directory_or_socket_is_not_followed(
    shim: SimulatedShim, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    (elsewhere / "linked-dir").symlink_to(shim.socket_path.parent)
    (elsewhere / "real-dir").mkdir()
    (elsewhere / "real-dir" / "shim-monitor.sock").symlink_to(shim.socket_path)
    for path in (
        elsewhere / "linked-dir" / "shim-monitor.sock",
        elsewhere / "real-dir" / "shim-monitor.sock",
    ):
        with pytest.raises(ShimError) as caught:
            await fetch(path, "/metrics", max_body=1 << 20)
        assert caught.value.reason is ScrapeFailure.CONNECT
        assert "symlink" in caught.value.detail
    assert shim.requests == 0
