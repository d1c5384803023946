"""The live view: the /ws stream and the dashboard page that reads it.

/ws sends a snapshot on connect, then per-sandbox updates, arrivals and departures.

Every client runs one loop: wait for a snapshot newer than the last one it sent, diff the two by
row, send the difference. Snapshots published while a client is still sending are skipped, so a
slow client gets the latest state of each sandbox instead of a backlog, and all a client holds
is the snapshot it last sent and the one batch it is sending. The rows themselves are encoded
once per sandbox view and shared by every client (`RowEncoder`); the per-interval rates in them
are computed by the cache owner, once per collection.

The wire protocol, close codes and limits are described in docs/stream.md.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import trio
from quart import Response, websocket
from werkzeug.datastructures import MultiDict

from pulse.config import Config
from pulse.ids import is_sandbox_id
from pulse.logs import get_logger
from pulse.snapshot import Reader, SandboxView, Snapshot
from pulse.web.negotiation import lists_any

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from pulse.web.app import WebState

log = get_logger("stream")

# Close codes (RFC 6455 private-use range 4000-4999 for ours).
CLOSE_STALLED = 4008  # the client did not read a message for longer than stall_seconds
CLOSE_POLICY = 1008  # the client sent more messages than the stream accepts
CLOSE_TOO_BIG = 1009  # the client sent a message larger than max_inbound_bytes

# A client that stops reading entirely leaves the server's socket write blocked, and Hypercorn
# shields socket writes from cancellation: only the kernel can end that write. TCP_USER_TIMEOUT
# on the listening socket (inherited by accepted ones) makes it drop a peer whose receive
# window stayed closed this long. It applies to every connection of the server, which is fine:
# no HTTP client of the agent legitimately stops reading for that long either.
STALLED_PEER_ABORT_SECONDS = 20.0

PLAIN_TEXT = "text/plain; charset=utf-8"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class StreamLimits:
    heartbeat_seconds: float = 15.0  # below the usual 30-60 s idle timeout of proxies
    stall_seconds: float = 10.0  # a message the client does not take within this is a stall
    max_inbound_bytes: int = 4096  # the stream needs nothing from clients; allow small pings
    inbound_burst: int = 20
    inbound_per_second: float = 2.0
    max_filter_values: int = 512


def abort_stalled_peers(sock: socket.socket, seconds: float = STALLED_PEER_ABORT_SECONDS) -> None:
    """Set TCP_USER_TIMEOUT on a TCP listening socket before it accepts (Linux)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(seconds * 1000))


class FilterError(ValueError):
    """A ?sandbox= or ?namespace= value the stream refuses; the message says which and why."""


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which sandboxes a client sees; an empty set means no restriction on that field."""

    sandbox_ids: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()

    def matches(self, view: SandboxView) -> bool:
        if self.sandbox_ids and view.sandbox_id not in self.sandbox_ids:
            return False
        if self.namespaces:
            return view.pod is not None and view.pod.namespace in self.namespaces
        return True


def parse_filter(args: MultiDict[str, str], limits: StreamLimits) -> StreamFilter:
    sandbox_ids = args.getlist("sandbox")
    namespaces = args.getlist("namespace")
    if len(sandbox_ids) + len(namespaces) > limits.max_filter_values:
        raise FilterError(f"at most {limits.max_filter_values} ?sandbox= and ?namespace= values")
    for sandbox_id in sandbox_ids:
        if not is_sandbox_id(sandbox_id):
            raise FilterError(f"malformed sandbox id in ?sandbox=: {sandbox_id[:80]!r}")
    for namespace in namespaces:
        if not namespace or len(namespace) > 253:
            raise FilterError("?namespace= must be a non-empty Kubernetes namespace name")
    return StreamFilter(frozenset(sandbox_ids), frozenset(namespaces))


def _scheme_host_port(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a handshake with this Origin header may open the stream.

    Browsers always send Origin on websocket handshakes, and a page can open a websocket to any
    host, so a page elsewhere could otherwise read the stream through a user's browser. Clients
    that send no Origin (kata-pulse top, curl, websocat) are not browsers and are let in.
    """
    allowed = tuple(allowed)
    if origin is None or "*" in allowed:
        return True
    parsed = _scheme_host_port(origin)
    if parsed is None:  # "null" (sandboxed frames, file://) and garbage
        return False
    if any(_scheme_host_port(entry) == parsed for entry in allowed):
        return True
    if not host:
        return False
    # Same origin: the page was served by this agent under the Host it is now connecting to.
    # The scheme is taken from the origin: a TLS-terminating proxy in front changes it.
    scheme = parsed[0]
    return _scheme_host_port(f"{scheme}://{host}") == parsed


def sandbox_row(view: SandboxView) -> dict[str, Any]:
    pod = view.pod
    live = view.live
    return {
        "sandbox_id": view.sandbox_id,
        "pod": pod.name if pod else "",
        "namespace": pod.namespace if pod else "",
        "state": view.state.value,
        "runtime": view.kind.value,
        "runtime_handler": pod.runtime_handler if pod else "",
        "cpu_cores": live.cpu_cores,
        "memory_working_set_bytes": live.memory_working_set_bytes,
        "network_receive_bytes_per_second": live.network_receive_bytes_per_second,
        "network_transmit_bytes_per_second": live.network_transmit_bytes_per_second,
        "disk_read_bytes_per_second": live.disk_read_bytes_per_second,
        "disk_write_bytes_per_second": live.disk_write_bytes_per_second,
        "collected_at": view.last_success,
        "last_attempt": view.last_attempt,
        "last_error": view.last_error,
        "last_error_reason": view.last_error_reason.value if view.last_error_reason else None,
    }


def _encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class RowEncoder:
    """Encoded rows, kept per sandbox view: a view is encoded once however many clients watch.

    Views are immutable and the cache owner replaces a view whenever anything in it changes, so
    an identical object has an identical row.
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[SandboxView, str]] = {}
        self._pruned_version = -1

    def rows(self, snapshot: Snapshot, wanted: StreamFilter) -> dict[str, str]:
        if snapshot.version > self._pruned_version:
            self._pruned_version = snapshot.version
            for gone in self._rows.keys() - snapshot.sandboxes.keys():
                del self._rows[gone]
        selected: dict[str, str] = {}
        for sandbox_id, view in snapshot.sandboxes.items():
            if not wanted.matches(view):
                continue
            known = self._rows.get(sandbox_id)
            if known is not None and known[0] is view:
                selected[sandbox_id] = known[1]
                continue
            row = _encode(sandbox_row(view))
            self._rows[sandbox_id] = (view, row)
            selected[sandbox_id] = row
        return selected


def _header(kind: str, version: int, now: float) -> str:
    return f'{{"type":"{kind}","version":{version},"time":{_encode(round(now, 3))}'


def snapshot_message(
    snapshot: Snapshot, rows: Mapping[str, str], now: float, interval: float, heartbeat: float
) -> str:
    return (
        _header("snapshot", snapshot.version, now)
        + f',"ready":{_encode(snapshot.scan_done)}'
        + f',"interval_seconds":{_encode(interval)},"heartbeat_seconds":{_encode(heartbeat)}'
        + f',"sandboxes":[{",".join(rows.values())}]}}'
    )


def heartbeat_message(version: int, now: float) -> str:
    return _header("heartbeat", version, now) + "}"


def diff_messages(
    old: Mapping[str, str],
    new: Mapping[str, str],
    removed_views: Mapping[str, SandboxView],
    version: int,
    now: float,
) -> list[str]:
    """What a client that has seen `old` must be told to see `new`: removals first."""
    messages: list[str] = []
    head = {kind: _header(kind, version, now) for kind in ("removed", "added", "update")}
    for sandbox_id in old.keys() - new.keys():
        view = removed_views.get(sandbox_id)
        pod = view.pod if view is not None else None
        messages.append(
            head["removed"]
            + f',"sandbox_id":{_encode(sandbox_id)}'
            + f',"pod":{_encode(pod.name if pod else "")}'
            + f',"namespace":{_encode(pod.namespace if pod else "")}}}'
        )
    for sandbox_id, row in new.items():
        previous = old.get(sandbox_id)
        if previous is None:
            messages.append(head["added"] + f',"sandbox":{row}}}')
        elif previous != row:
            messages.append(head["update"] + f',"sandbox":{row}}}')
    return messages


class Transport(Protocol):
    """The part of a websocket the stream uses (Quart's `websocket` has it)."""

    async def send(self, data: str) -> None: ...

    async def receive(self) -> str | bytes: ...


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


class _Stalled(Exception):
    pass


async def _send_all(client: Transport, messages: Iterable[str], limits: StreamLimits) -> None:
    for message in messages:
        # A send only blocks once the socket buffers on both ends are full, i.e. when the
        # client has stopped reading. The send itself cannot be abandoned (the server shields
        # socket writes), so the stall is judged when it completes; a client that never reads
        # again is cut off by the kernel (TCP_USER_TIMEOUT on the listening socket).
        started = trio.current_time()
        await client.send(message)
        if trio.current_time() - started > limits.stall_seconds:
            raise _Stalled


async def push_updates(
    client: Transport,
    board: Reader[Snapshot],
    encoder: RowEncoder,
    wanted: StreamFilter,
    limits: StreamLimits,
    interval: float,
) -> Close:
    """Send the snapshot, then differences, until the client stalls."""
    try:
        sent = board.current
        sent_rows = encoder.rows(sent, wanted)
        await _send_all(
            client,
            [snapshot_message(sent, sent_rows, time.time(), interval, limits.heartbeat_seconds)],
            limits,
        )
        last_send = trio.current_time()
        while True:
            messages: list[str] = []
            with trio.move_on_at(last_send + limits.heartbeat_seconds):
                while not messages:
                    latest = await board.wait_newer(sent)
                    latest_rows = encoder.rows(latest, wanted)
                    messages = diff_messages(
                        sent_rows, latest_rows, sent.sandboxes, latest.version, time.time()
                    )
                    sent, sent_rows = latest, latest_rows
            if not messages:
                messages = [heartbeat_message(sent.version, time.time())]
            await _send_all(client, messages, limits)
            last_send = trio.current_time()
    except _Stalled:
        return Close(CLOSE_STALLED, f"client stopped reading for over {limits.stall_seconds:g} s")


async def guard_inbound(client: Transport, limits: StreamLimits) -> Close:
    """Read and drop what the client sends, so it cannot queue up; close a flooding client."""
    tokens = float(limits.inbound_burst)
    refilled = trio.current_time()
    while True:
        message = await client.receive()
        size = len(message.encode() if isinstance(message, str) else message)
        if size > limits.max_inbound_bytes:
            return Close(
                CLOSE_TOO_BIG,
                f"messages to the stream are limited to {limits.max_inbound_bytes} bytes",
            )
        now = trio.current_time()
        tokens = min(limits.inbound_burst, tokens + (now - refilled) * limits.inbound_per_second)
        refilled = now
        if tokens < 1:
            return Close(CLOSE_POLICY, "too many messages from the client")
        tokens -= 1


async def serve_client(
    client: Transport,
    board: Reader[Snapshot],
    encoder: RowEncoder,
    wanted: StreamFilter,
    limits: StreamLimits,
    interval: float,
) -> Close:
    """Stream to one accepted client until it stalls or misbehaves; say how to close it."""
    outcome: list[Close] = []
    async with trio.open_nursery() as nursery:

        async def inbound() -> None:
            outcome.append(await guard_inbound(client, limits))
            nursery.cancel_scope.cancel()

        async def outbound() -> None:
            outcome.append(await push_updates(client, board, encoder, wanted, limits, interval))
            nursery.cancel_scope.cancel()

        nursery.start_soon(inbound)
        nursery.start_soon(outbound)
    return outcome[0]


def _refuse(status: int, text: str) -> Response:
    return Response(text + "\n", status, content_type=PLAIN_TEXT)


def register_stream(
    app: QuartTrio,
    config: Config,
    board: Reader[Snapshot],
    web: WebState,
    limits: StreamLimits | None = None,
) -> None:
    """Add the /ws route to the app."""
    limits = limits or StreamLimits()
    encoder = RowEncoder()

    @app.websocket("/ws")
    async def stream() -> Response | None:
        origin = websocket.headers.get("Origin")
        if not origin_allowed(origin, websocket.headers.get("Host"), config.ws_allowed_origins):
            shown = (origin or "")[:200]
            log.info("websocket refused", reason="origin", origin=shown)
            return _refuse(403, f"origin not allowed: {shown} (see --ws-allowed-origin)")
        try:
            wanted = parse_filter(websocket.args, limits)
        except FilterError as err:
            return _refuse(400, f"error: {err}")
        if web.websocket_clients >= config.ws_max_clients:
            log.debug("websocket refused", reason="max_clients", limit=config.ws_max_clients)
            return _refuse(
                503, f"too many live clients: at most {config.ws_max_clients} at once, retry later"
            )
        web.websocket_clients += 1  # no await since the check: the check and count are atomic
        try:
            await websocket.accept()
            close = await serve_client(
                websocket, board, encoder, wanted, limits, config.metrics_interval
            )
            log.info("websocket closed", code=close.code, reason=close.reason)
            await websocket.close(close.code, close.reason)
        finally:
            web.websocket_clients -= 1
        return None


# --- the dashboard ------------------------------------------------------------------------------

DASHBOARD_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Everything comes from the agent: the page works on an air-gapped node, and a page that only
# talks to its own origin cannot be turned into a reader of the stream for another site.
_DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _static(name: str) -> bytes:
    return resources.files("pulse.web").joinpath("static", name).read_bytes()


def prefers_html(accept: str) -> bool:
    """Whether an Accept header asks for HTML (browsers do; curl and Prometheus do not)."""
    return lists_any(accept, ("text/html", "application/xhtml+xml"))


def dashboard_page() -> Response:
    response = Response(_static("index.html"), 200, content_type="text/html; charset=utf-8")
    response.headers.update(_DASHBOARD_HEADERS)
    response.headers["Vary"] = "Accept"
    return response


def register_dashboard_assets(app: QuartTrio) -> None:
    """Serve the dashboard's script and style sheet under /assets/ (a fixed list, no paths)."""
    assets = {name: (_static(name), kind) for name, kind in DASHBOARD_ASSETS.items()}

    @app.get("/assets/<name>")
    async def dashboard_asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return Response("not found\n", 404, content_type=PLAIN_TEXT)
        response = Response(found[0], 200, content_type=found[1])
        response.headers.update(_DASHBOARD_HEADERS)
        return response
