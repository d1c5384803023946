"""Hypercorn (trio worker) serving the app, started under the agent's nursery."""

from __future__ import annotations

import logging

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from pulse.config import Config
from pulse.logs import ROOT_LOGGER, get_logger
from pulse.snapshot import Reader, Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.stream import abort_stalled_peers

log = get_logger("http")

MAX_HEADER_BYTES = 16 * 1024
# Clients send nothing useful over /ws (the stream closes with 1009 past 4 KiB); a frame past
# this is dropped by Hypercorn unread, so at most this much is buffered per client (its default
# would be 16 MiB).
MAX_WEBSOCKET_MESSAGE_BYTES = 1024 * 1024


class ContainedTCPServer(TCPServer):
    """Hypercorn's per-connection server, except that an error in one connection ends only it.

    Hypercorn lets an exception from its protocol code out of the connection's task, into the
    nursery of the whole server: the listener and every other connection end with it, and
    with them the agent. One is known and unfixed in Hypercorn 0.18: a cleartext HTTP/2
    request whose body is still arriving when its response is complete raises KeyError in
    the h2 protocol (Hypercorn issue #329; fixes proposed in #312 and #334). Anybody who can
    reach the port can send one. Cancellation still goes through.
    """

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as error:  # the connection is closed already (TCPServer.run's finally)
            log.warning(
                "http connection ended by an error in the server's protocol handling",
                error=repr(error),
            )


def contain_connection_errors() -> None:
    """Make Hypercorn's trio worker serve each connection with ContainedTCPServer.

    worker_serve builds its connection handler from the name TCPServer in its own module, so
    that name is what is replaced; it is the one such patch in the agent (ARCHITECTURE.md).
    """
    names = vars(hypercorn.trio.run)
    current = names.get("TCPServer")
    if current is not ContainedTCPServer:
        if current is not TCPServer:
            raise RuntimeError(f"unexpected connection server in Hypercorn: {current!r}")
        names["TCPServer"] = ContainedTCPServer


async def serve_app(
    app: QuartTrio,
    hconfig: HypercornConfig,
    sockets: Sockets,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's trio worker serving `app` on `sockets` (listening already), each connection
    contained (ContainedTCPServer)."""
    contain_connection_errors()
    wrapped = wrap_app(app, hconfig.wsgi_max_body_size, None)
    await worker_serve(wrapped, hconfig, sockets=sockets, task_status=task_status)


def hypercorn_config(config: Config) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [config.listen_address]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger(f"{ROOT_LOGGER}.http")
    hconfig.graceful_timeout = config.shutdown_timeout / 2
    hconfig.h11_max_incomplete_size = MAX_HEADER_BYTES
    hconfig.websocket_max_message_size = MAX_WEBSOCKET_MESSAGE_BYTES
    hconfig.keep_alive_timeout = 75  # longer than Prometheus' idle connection reuse
    hconfig.include_server_header = False
    return hconfig


async def serve_http(
    config: Config,
    board: Reader[Snapshot],
    web: WebState,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started` gets the bound addresses (port 0 resolved)."""
    hconfig = hypercorn_config(config)
    # The listening sockets are made here rather than by Hypercorn so that they carry
    # TCP_USER_TIMEOUT: Hypercorn shields its socket writes from cancellation, so only the
    # kernel can end a write to a peer that stopped reading.
    sockets = hconfig.create_sockets()
    for sock in sockets.insecure_sockets:
        abort_stalled_peers(sock)
        sock.listen(hconfig.backlog)
    await serve_app(create_app(config, board, web), hconfig, sockets, task_status=task_status)
