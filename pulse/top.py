"""`kata-pulse top`: a terminal live view of one agent, fed by its /ws stream.

It connects before touching the terminal, so an unreachable agent gives one plain error line
and exit code 1. Once connected it takes over the screen (alternate screen, no echo) until q,
Ctrl-C or SIGTERM, and puts the terminal back however it ends. Rendering is plain ANSI: a frame
is the whole screen, drawn from the top left, each line cleared to its end.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2

CONNECT_TIMEOUT = 5.0
RETRY_MIN = 1.0
RETRY_MAX = 15.0
FRAME_INTERVAL = 0.2  # at most five frames a second, however fast updates come
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "cpu": lambda r: r.get("cpu_cores") or 0.0,
    "memory": lambda r: r.get("memory_working_set_bytes") or 0.0,
    "net": lambda r: (
        (r.get("network_receive_bytes_per_second") or 0.0)
        + (r.get("network_transmit_bytes_per_second") or 0.0)
    ),
    "pod": lambda r: (r.get("pod") or "", r.get("sandbox_id", "")),
    "namespace": lambda r: (r.get("namespace") or "", r.get("pod") or ""),
}
TEXT_SORTS = ("pod", "namespace")
KEY_SORTS = {"c": "cpu", "m": "memory", "n": "net", "p": "pod", "s": "namespace"}
HELP = "q quit  c cpu  m memory  n net  p pod  s namespace  r reverse"

# ANSI: only what every terminal emulator since the VT100 understands.
ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
CURSOR_HIDE = "\x1b[?25l"
CURSOR_SHOW = "\x1b[?25h"
HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
REVERSE = "\x1b[7m"
RESET = "\x1b[0m"
STATE_COLOURS = {"up": "\x1b[32m", "degraded": "\x1b[33m", "down": "\x1b[31m"}
RED = "\x1b[31m"


def stream_url(url: str) -> str:
    """The /ws URL of an agent given as http(s)://HOST:PORT[/prefix], ws(s)://... or HOST:PORT."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected an agent URL like http://HOST:8090, got {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((schemes[parts.scheme], parts.netloc, path, "", ""))


# --- formatting ------------------------------------------------------------------------------

_IEC = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    number = float(value)
    unit = 0
    while abs(number) >= 1024 and unit < len(_IEC) - 1:
        number /= 1024
        unit += 1
    return (
        f"{number:.0f} {_IEC[unit]}" if unit == 0 or number >= 100 else f"{number:.1f} {_IEC[unit]}"
    )


def format_rate(value: float | None) -> str:
    return "-" if value is None else format_bytes(value) + "/s"


def format_cores(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{round(value * 1000)}m" if value < 10 else f"{value:.1f}"  # millicores, like kubectl


def format_age(collected_at: float | None, now: float) -> str:
    if collected_at is None:
        return "never"
    seconds = max(0.0, now - collected_at)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# --- the model ---------------------------------------------------------------------------------


class TopModel:
    """What the screen shows: the sandboxes as the stream last told, and the link's state."""

    def __init__(self, url: str, sort: str) -> None:
        self.url = url
        self.sort = sort if sort in SORT_KEYS else "cpu"
        self.descending = self.sort not in TEXT_SORTS
        self.rows: dict[str, dict[str, Any]] = {}
        self.live = False
        self.status = "connecting"
        self.heartbeat_seconds = 15.0
        self.last_message = 0.0

    def apply(self, text: str | bytes, now: float) -> bool:
        """Take one stream message; False if it was not one this view understands."""
        try:
            message = json.loads(text)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        self.last_message = now
        kind = message.get("type")
        if kind == "snapshot":
            rows = message.get("sandboxes")
            if not isinstance(rows, list):
                return False
            self.rows = {r["sandbox_id"]: r for r in rows if _is_row(r)}
            self.heartbeat_seconds = _number(message.get("heartbeat_seconds")) or 15.0
            self.live, self.status = True, "live"
        elif kind in ("update", "added"):
            row = message.get("sandbox")
            if not isinstance(row, dict) or not _is_row(row):
                return False
            self.rows[row["sandbox_id"]] = row
        elif kind == "removed":
            self.rows.pop(str(message.get("sandbox_id")), None)
        elif kind != "heartbeat":
            return False
        return True

    def lost(self, why: str) -> None:
        self.live = False
        self.status = why

    def sort_by(self, key: str) -> None:
        if key == self.sort:
            self.descending = not self.descending
        else:
            self.sort = key
            self.descending = key not in TEXT_SORTS

    def sorted_rows(self) -> list[dict[str, Any]]:
        key = SORT_KEYS[self.sort]
        by_id = sorted(self.rows.values(), key=lambda r: str(r["sandbox_id"]))
        return sorted(by_id, key=key, reverse=self.descending)


def _is_row(row: object) -> bool:
    return isinstance(row, dict) and isinstance(row.get("sandbox_id"), str)


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int
    sort: str | None
    cell: Callable[[dict[str, Any], float], str]
    numeric: bool = True


COLUMNS = (
    Column("NAMESPACE", 16, "namespace", lambda r, _: r.get("namespace") or "-", False),
    Column("STATE", 12, None, lambda r, _: str(r.get("state", "?")), False),
    Column("CPU", 8, "cpu", lambda r, _: format_cores(_number(r.get("cpu_cores")))),
    Column(
        "MEMORY",
        11,
        "memory",
        lambda r, _: format_bytes(_number(r.get("memory_working_set_bytes"))),
    ),
    Column(
        "NET RX",
        12,
        "net",
        lambda r, _: format_rate(_number(r.get("network_receive_bytes_per_second"))),
    ),
    Column(
        "NET TX",
        12,
        None,
        lambda r, _: format_rate(_number(r.get("network_transmit_bytes_per_second"))),
    ),
    Column(
        "DISK R", 12, None, lambda r, _: format_rate(_number(r.get("disk_read_bytes_per_second")))
    ),
    Column(
        "DISK W", 12, None, lambda r, _: format_rate(_number(r.get("disk_write_bytes_per_second")))
    ),
    Column("AGE", 6, None, lambda r, now: format_age(_number(r.get("collected_at")), now)),
)
POD_MIN_WIDTH = 16


def _fit(text: str, width: int, numeric: bool) -> str:
    if len(text) > width:
        text = text[: max(0, width - 1)] + "…" if width > 1 else text[:width]
    return text.rjust(width) if numeric else text.ljust(width)


def _columns_for(width: int) -> tuple[Column, ...]:
    """Drop columns from the right until the rest and a usable pod column fit."""
    columns: tuple[Column, ...] = COLUMNS
    while columns and POD_MIN_WIDTH + sum(c.width + 1 for c in columns) > width:
        columns = columns[:-1]
    return columns


def render_frame(model: TopModel, width: int, height: int, now: float) -> str:
    """The whole screen for one moment, as ANSI text."""
    width = max(width, 20)
    height = max(height, 5)
    rows = model.sorted_rows()
    states = [str(r.get("state")) for r in rows]
    up, degraded = states.count("up"), states.count("degraded")
    cpu = sum(_number(r.get("cpu_cores")) or 0.0 for r in rows)
    memory = sum(_number(r.get("memory_working_set_bytes")) or 0.0 for r in rows)
    clock = time.strftime("%H:%M:%S", time.localtime(now))

    lines: list[str] = []
    title = f"kata-pulse top  {model.url}"
    lines.append(BOLD + _fit(title, width - len(clock) - 1, False) + " " + clock + RESET)
    lines.append(
        _fit(
            f"{len(rows)} sandbox{'' if len(rows) == 1 else 'es'}: {up} up, {degraded} degraded,"
            f" {len(rows) - up - degraded}"
            f" other   CPU {cpu:.2f} cores   memory {format_bytes(memory)}",
            width,
            False,
        )
    )
    status = _fit(model.status, width, False)
    lines.append(status if model.live else RED + BOLD + status + RESET)

    columns = _columns_for(width)
    pod_width = width - sum(c.width + 1 for c in columns)
    arrow = "▼" if model.descending else "▲"

    def heading(title: str, sort: str | None, size: int, numeric: bool) -> str:
        return _fit(title + (arrow if sort == model.sort else ""), size, numeric)

    header = heading("POD", "pod", pod_width, False) + "".join(
        " " + heading(c.title, c.sort, c.width, c.numeric) for c in columns
    )
    lines.append(REVERSE + header + RESET)

    room = height - len(lines) - 1
    for row in rows[: max(0, room)]:
        state = str(row.get("state", "?"))
        cells = [_fit(str(row.get("pod") or row["sandbox_id"][:12]), pod_width, False)]
        for column in columns:
            text = _fit(column.cell(row, now), column.width, column.numeric)
            if column.title == "STATE" and state in STATE_COLOURS:
                text = STATE_COLOURS[state] + text + RESET
            cells.append(text)
        line = " ".join(cells)
        lines.append(line if model.live else DIM + line + RESET)
    if not rows:
        lines.append(DIM + _fit("no sandboxes on this node", width, False) + RESET)
    hidden = len(rows) - max(0, room)
    footer = (f"(+{hidden} more)  " if hidden > 0 else "") + HELP
    lines += [""] * (height - 1 - len(lines))
    lines.append(DIM + _fit(footer, width, False) + RESET)
    return (
        HOME + "".join(line + CLEAR_LINE + "\r\n" for line in lines[:-1]) + lines[-1] + CLEAR_BELOW
    )


# --- terminal ----------------------------------------------------------------------------------


class Terminal:
    """The screen and keyboard; restores both on leaving `session`."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self._stdin = stdin
        self._stdout = stdout

    @property
    def interactive(self) -> bool:
        return self._stdin.isatty()

    @contextmanager
    def session(self) -> Iterator[None]:
        saved = None
        if self.interactive:
            fd = self._stdin.fileno()
            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still sends SIGINT
        self._stdout.write(ALT_SCREEN_ON + CURSOR_HIDE)
        self._stdout.flush()
        try:
            yield
        finally:
            self._stdout.write(RESET + CURSOR_SHOW + ALT_SCREEN_OFF)
            self._stdout.flush()
            if saved is not None:
                termios.tcsetattr(self._stdin.fileno(), termios.TCSADRAIN, saved)

    def size(self) -> tuple[int, int]:
        columns, lines = shutil.get_terminal_size((100, 30))
        return columns, lines

    def draw(self, frame: str) -> None:
        self._stdout.write(frame)
        self._stdout.flush()

    def key_stream(self) -> trio.lowlevel.FdStream | None:
        if not self.interactive:
            return None
        return trio.lowlevel.FdStream(os.dup(self._stdin.fileno()))


# --- the program ---------------------------------------------------------------------------------


def _root_cause(err: BaseException) -> BaseException:
    """The innermost cause: trio wraps a refused connect in an OSError from an exception group."""
    while True:
        if isinstance(err, BaseExceptionGroup) and err.exceptions:
            err = err.exceptions[0]
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            return err


def describe_failure(err: BaseException) -> str:
    if isinstance(err, ConnectionRejected):
        body = (err.body or b"").decode("utf-8", "replace").strip()
        detail = f": {body}" if body else ""
        return f"the agent refused the connection (HTTP {err.status_code}{detail})"
    if isinstance(err, ConnectionClosed):
        reason = err.reason
        if reason is None:
            return "connection lost"
        detail = f": {reason.reason}" if reason.reason else ""
        return f"connection closed by the agent ({reason.code}{detail})"
    if isinstance(err, trio.TooSlowError):
        return "no answer from the agent"
    root = _root_cause(err)
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    if root is err and isinstance(err, HandshakeError):
        return "websocket handshake failed"
    return str(root) or type(root).__name__


async def _connect(nursery: trio.Nursery, url: str) -> WebSocketConnection:
    with trio.fail_after(CONNECT_TIMEOUT):
        return await connect_websocket_url(nursery, url, max_message_size=MAX_MESSAGE_BYTES)


class _Session:
    def __init__(self, model: TopModel, terminal: Terminal, url: str) -> None:
        self.model = model
        self.terminal = terminal
        self.url = url
        self._nudge_in, self._nudge_out = trio.open_memory_channel[None](1)

    def changed(self) -> None:
        with suppress(trio.WouldBlock):
            self._nudge_in.send_nowait(None)  # one pending redraw covers any number of changes

    async def draw_forever(self) -> None:
        while True:
            width, height = self.terminal.size()
            self.terminal.draw(render_frame(self.model, width, height, time.time()))
            with trio.move_on_after(1.0):  # ages and the clock move on between messages
                await self._nudge_out.receive()
            await trio.sleep(FRAME_INTERVAL)

    async def follow(self, nursery: trio.Nursery, first: WebSocketConnection) -> None:
        connection: WebSocketConnection | None = first
        delay = RETRY_MIN
        while True:
            if connection is not None:
                try:
                    await self._receive(connection)
                except (ConnectionClosed, trio.TooSlowError) as err:
                    self.model.lost(describe_failure(err))
                finally:
                    with trio.move_on_after(1.0) as cleanup:
                        cleanup.shield = True
                        await connection.aclose()
                delay = RETRY_MIN
            why = self.model.status
            deadline = trio.current_time() + delay
            while (left := deadline - trio.current_time()) > 0:
                self.model.lost(f"{why} - reconnecting in {math.ceil(left)}s")
                self.changed()
                await trio.sleep(min(1.0, left))
            self.model.lost(f"{why} - reconnecting")
            self.changed()
            try:
                connection = await _connect(nursery, self.url)
            except (HandshakeError, OSError, trio.TooSlowError) as err:
                connection = None
                self.model.lost(f"cannot reach the agent: {describe_failure(err)}")
                delay = min(RETRY_MAX, delay * 2)

    async def _receive(self, connection: WebSocketConnection) -> None:
        while True:
            # The agent sends at least a heartbeat every heartbeat_seconds.
            with trio.fail_after(self.model.heartbeat_seconds * 2.5):
                message = await connection.get_message()
            self.model.apply(message, time.time())
            self.changed()

    async def keys(self, keyboard: trio.abc.ReceiveStream, quit: Callable[[], None]) -> None:
        while data := await keyboard.receive_some(64):
            for key in data.decode("utf-8", "ignore"):
                if key in "qQ":
                    quit()
                    return
                if key in KEY_SORTS:
                    self.model.sort_by(KEY_SORTS[key])
                elif key == "r":
                    self.model.descending = not self.model.descending
                else:
                    continue
                self.changed()

    async def resizes(self) -> None:
        with trio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                self.changed()


async def _top(url: str, shown_url: str, sort: str, terminal: Terminal) -> int:
    async with trio.open_nursery() as nursery:
        try:
            first = await _connect(nursery, url)
        except (HandshakeError, OSError, trio.TooSlowError) as err:
            print(
                f"kata-pulse top: cannot reach the agent at {shown_url}: {describe_failure(err)}",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        session = _Session(TopModel(shown_url, sort), terminal, url)
        with terminal.session(), trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as stop:
            async with trio.open_nursery() as views:
                views.start_soon(session.follow, nursery, first)
                views.start_soon(session.draw_forever)
                views.start_soon(session.resizes)
                keyboard = terminal.key_stream()
                if keyboard is not None:
                    views.start_soon(_with_keys, session, keyboard, views.cancel_scope.cancel)
                async for _ in stop:
                    break
                views.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return EXIT_OK


async def _with_keys(
    session: _Session, keyboard: trio.lowlevel.FdStream, quit: Callable[[], None]
) -> None:
    async with keyboard:
        await session.keys(keyboard, quit)


def run_top(url: str, sort: str) -> int:
    """`kata-pulse top`: 0 on q, Ctrl-C or SIGTERM; 1 if the agent cannot be reached."""
    try:
        ws_url = stream_url(url)
    except ValueError as err:
        print(f"kata-pulse top: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return trio.run(_top, ws_url, url, sort, Terminal(sys.stdin, sys.stdout))
    except KeyboardInterrupt:  # Ctrl-C while still connecting, before the view handles it
        return 130
