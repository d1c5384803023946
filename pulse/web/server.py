"""Hypercorn (trio worker) serving the app, started under the agent's nursery."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from pulse.config import Config
from pulse.logs import ROOT_LOGGER
from pulse.snapshot import Reader, Snapshot
from pulse.web.app import WebState, create_app
from pulse.web.stream import abort_stalled_peers

MAX_HEADER_BYTES = 16 * 1024
# Clients send nothing useful over /ws (the stream closes with 1009 past 4 KiB); a frame past
# this is dropped by Hypercorn unread, so at most this much is buffered per client (its default
# would be 16 MiB).
MAX_WEBSOCKET_MESSAGE_BYTES = 1024 * 1024


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
    app = wrap_app(create_app(config, board, web), hconfig.wsgi_max_body_size, None)
    await worker_serve(app, hconfig, sockets=sockets, task_status=task_status)
