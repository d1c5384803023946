"""Hypercorn (trio worker) serving the app, started under the agent's nursery."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from pulse.config import Config
from pulse.logs import ROOT_LOGGER
from pulse.snapshot import Reader, Snapshot
from pulse.web.app import WebState, create_app

MAX_HEADER_BYTES = 16 * 1024


def hypercorn_config(config: Config) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [config.listen_address]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger(f"{ROOT_LOGGER}.http")
    hconfig.graceful_timeout = config.shutdown_timeout / 2
    hconfig.h11_max_incomplete_size = MAX_HEADER_BYTES
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
    app = create_app(config, board, web)
    await serve(app, hypercorn_config(config), task_status=task_status)
