"""`kata-pulse top`: its model and frames, then the real program in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from pulse.top import (
    ALT_SCREEN_OFF,
    CURSOR_SHOW,
    TopModel,
    format_bytes,
    format_cores,
    render_frame,
    stream_url,
)

from .support import (
    Publisher,
    agent_with_fleet,
    app_server,
    make_view,
    sandbox_id,
    serve_app_until_cancelled,
    short_directory,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _row(n: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sandbox_id": sandbox_id(n),
        "pod": f"pod-{n}",
        "namespace": "default",
        "state": "up",
        "cpu_cores": 0.1 * n,
        "memory_working_set_bytes": 1024.0 * 1024 * (10 - n),
        "collected_at": 1000.0,
    }
    row.update(fields)
    return row


def _screen(frame: str) -> list[str]:
    return [ANSI.sub("", line) for line in frame.split("\r\n")]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://node:8090", "ws://node:8090/ws"),
        ("https://node", "wss://node/ws"),
        ("node:8090", "ws://node:8090/ws"),
        ("http://node:8090/", "ws://node:8090/ws"),
        ("http://proxy/agents/n1/", "ws://proxy/agents/n1/ws"),
        ("ws://node:8090/ws", "ws://node:8090/ws"),
        ("http://[::1]:8090", "ws://[::1]:8090/ws"),
    ],
)
def test_stream_url(given: str, expected: str) -> None:
    assert stream_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://node", "http://", "http://node:port", "http://node:70000"])
def test_stream_url_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        stream_url(bad)


def test_formats() -> None:
    assert format_cores(0.25) == "250m"
    assert format_cores(12.345) == "12.3"
    assert format_cores(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(300 * 1024 * 1024) == "300 MiB"


def test_model_follows_the_stream_and_sorts() -> None:
    model = TopModel("http://node:8090", "cpu")
    snapshot = {"type": "snapshot", "heartbeat_seconds": 5, "sandboxes": [_row(1), _row(2)]}
    assert model.apply(json.dumps(snapshot), 1.0)
    assert model.live and model.heartbeat_seconds == 5
    assert [r["pod"] for r in model.sorted_rows()] == ["pod-2", "pod-1"]  # most CPU first
    model.sort_by("memory")
    assert [r["pod"] for r in model.sorted_rows()] == ["pod-1", "pod-2"]
    model.sort_by("memory")  # again: reversed
    assert [r["pod"] for r in model.sorted_rows()] == ["pod-2", "pod-1"]
    assert model.apply(json.dumps({"type": "added", "sandbox": _row(3, pod="aaa")}), 2.0)
    model.sort_by("pod")
    assert [r["pod"] for r in model.sorted_rows()] == ["aaa", "pod-1", "pod-2"]
    update = {"type": "update", "sandbox": _row(1, cpu_cores=4.0)}
    assert model.apply(json.dumps(update), 3.0)
    assert model.rows[sandbox_id(1)]["cpu_cores"] == 4.0
    assert model.apply(json.dumps({"type": "removed", "sandbox_id": sandbox_id(2)}), 4.0)
    assert set(model.rows) == {sandbox_id(1), sandbox_id(3)}
    # Unknown or broken messages change nothing.
    assert not model.apply("not json", 5.0)
    assert not model.apply(json.dumps({"type": "update", "sandbox": {"pod": "x"}}), 5.0)
    assert not model.apply(json.dumps({"type": "future-thing"}), 5.0)
    assert set(model.rows) == {sandbox_id(1), sandbox_id(3)}


def test_frame_fits_the_terminal() -> None:
    model = TopModel("http://node:8090", "cpu")
    rows = [_row(n) for n in range(1, 9)]
    model.apply(json.dumps({"type": "snapshot", "sandboxes": rows}), 1.0)
    wide = _screen(render_frame(model, 140, 30, 1005.0))
    assert len(wide) == 30
    assert all(len(line) <= 140 for line in wide)
    header = next(line for line in wide if line.startswith("POD"))
    assert "CPU▼" in header and "DISK W" in header
    body = [line for line in wide if line.startswith("pod-")]
    assert [line.split()[0] for line in body] == [f"pod-{n}" for n in range(8, 0, -1)]
    assert "800m" in body[0] and "2.0 MiB" in body[0] and "5s" in body[0]
    assert "8 sandboxes: 8 up" in wide[1]

    small = _screen(render_frame(model, 60, 8, 1005.0))
    assert len(small) == 8
    assert all(len(line) <= 60 for line in small)
    assert "DISK" not in small[3]  # columns dropped to fit
    assert "(+5 more)" in small[-1]

    model.lost("connection lost - reconnecting in 3s")
    assert "reconnecting in 3s" in _screen(render_frame(model, 100, 20, 1005.0))[2]


# --- the program in a pseudo-terminal ---------------------------------------------------------

ROWS, COLUMNS = 30, 150
# The child makes the pty its controlling terminal, as a login shell's terminal is, so that
# Ctrl-C typed into it is a real SIGINT from the terminal driver.
LAUNCH = (
    "import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "sys.argv = ['kata-pulse', *sys.argv[1:]]; runpy.run_module('pulse', run_name='__main__')"
)


@dataclass
class Terminal:
    process: trio.Process
    master: trio.lowlevel.FdStream
    output: str = ""
    seen: list[str] = field(default_factory=list)

    async def expect(self, pattern: str, *, after: int = 0) -> int:
        """Wait until the screen output (ANSI removed) shows `pattern` beyond offset `after`."""
        with trio.fail_after(15):
            while True:
                plain = ANSI.sub("", self.output)
                found = plain.find(pattern, after)
                if found >= 0:
                    return found + len(pattern)
                try:
                    data = await self.master.receive_some(65536)
                except (OSError, trio.BrokenResourceError):  # EIO: the child closed the pty
                    data = b""
                if not data:
                    raise AssertionError(f"{pattern!r} never shown; screen:\n{plain[-3000:]}")
                self.output += data.decode("utf-8", "replace")

    async def press(self, keys: str) -> None:
        await self.master.send_all(keys.encode())

    async def wait_exit(self) -> int:
        with trio.fail_after(15):
            while True:  # keep draining so the child never blocks writing
                try:
                    data = await self.master.receive_some(65536)
                except (OSError, trio.BrokenResourceError):
                    data = b""
                if not data:
                    break
                self.output += data.decode("utf-8", "replace")
            return await self.process.wait()


@asynccontextmanager
async def top_in_pty(*args: str) -> AsyncIterator[Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    with short_directory() as cwd:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", LAUNCH, "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        os.close(slave)
        terminal = Terminal(process, trio.lowlevel.FdStream(master))
        try:
            yield terminal
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await terminal.master.aclose()


async def test_top_renders_rows_follows_updates_and_quits_on_q() -> None:
    publisher = Publisher(
        [make_view(1, cpu=0.3, pod_name="checkout-api"), make_view(2, cpu=0.1, pod_name="redis-0")]
    )
    async with app_server(publisher) as served, top_in_pty("--url", served.url) as term:
        at = await term.expect("checkout-api")
        await term.expect("redis-0")
        await term.expect("300m")
        # A collection changes the figures on screen, in place.
        publisher.touch(2, cpu_cores=2.5)
        at = await term.expect("2500m", after=at)
        # Sort keys.
        await term.press("p")
        at = await term.expect("POD▲", after=at)
        await term.press("m")
        at = await term.expect("MEMORY▼", after=at)
        # A sandbox that goes away leaves the screen.
        publisher.drop(sandbox_id(1))
        await term.expect("1 sandbox: 1 up", after=at)
        await term.press("q")
        assert await term.wait_exit() == 0
    assert term.output.rstrip().endswith(CURSOR_SHOW + ALT_SCREEN_OFF)  # terminal given back


async def test_top_on_the_agent_shows_the_simulated_fleet() -> None:
    async with agent_with_fleet(3) as live, top_in_pty("--url", live.url, "--sort", "pod") as term:
        for sandbox in live.fleet.sandboxes.values():
            await term.expect(sandbox.pod.name)
        await term.expect("3 sandboxes: 3 up")
        await term.press("q")
        assert await term.wait_exit() == 0


async def test_top_quits_on_ctrl_c() -> None:
    publisher = Publisher([make_view(1, pod_name="web-frontend")])
    async with app_server(publisher) as served, top_in_pty("--url", served.url) as term:
        await term.expect("web-frontend")
        await term.press("\x03")
        assert await term.wait_exit() == 0
    assert "Traceback" not in term.output
    assert term.output.rstrip().endswith(CURSOR_SHOW + ALT_SCREEN_OFF)


async def test_top_says_when_the_agent_cannot_be_reached() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more
    async with top_in_pty("--url", f"http://127.0.0.1:{port}") as term:
        await term.expect(f"cannot reach the agent at http://127.0.0.1:{port}")
        assert await term.wait_exit() == 1
    assert "Traceback" not in term.output


async def test_top_shows_a_lost_connection_and_comes_back() -> None:
    publisher = Publisher([make_view(1, pod_name="batch-job")])
    first_server = trio.CancelScope()

    async with trio.open_nursery() as nursery:
        first = await nursery.start(serve_app_until_cancelled, first_server, publisher)
        port = urlsplit(first.url).port
        assert port is not None
        async with top_in_pty("--url", first.url) as term:
            at = await term.expect("batch-job")
            first_server.cancel()  # the agent goes away
            at = await term.expect("reconnecting", after=at)
            publisher.put(make_view(2, pod_name="came-back"))
            async with app_server(publisher, port=port):  # and comes back on its port
                at = await term.expect("came-back", after=at)
                await term.press("q")
                assert await term.wait_exit() == 0
