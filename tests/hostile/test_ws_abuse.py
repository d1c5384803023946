"""Abusive websocket clients of the real agent: huge frames and message floods are cut off
with their close codes, and a well-behaved client keeps its stream meanwhile. (Clients that
never read are covered in tests/live/test_stream_backpressure.py.)"""

from __future__ import annotations

import contextlib

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from pulse.web.server import MAX_WEBSOCKET_MESSAGE_BYTES
from pulse.web.stream import CLOSE_POLICY, CLOSE_TOO_BIG, StreamLimits
from tests.live.support import agent_with_fleet, connect, next_message, next_of

LIMITS = StreamLimits()
ABNORMAL = 1006


async def _closed_with(ws: WebSocketConnection) -> int | None:
    """Read until the server closes; its close code."""
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code
    return None


async def huge_frame(url: str, codes: list[int | None]) -> None:
    async with connect(url, max_message_size=1 << 24) as ws:
        await next_message(ws)
        with contextlib.suppress(ConnectionClosed):
            # Over the stream's own limit, under the server's frame limit (which drops a bigger
            # frame unread: trio-websocket's sender then never finishes).
            await ws.send_message("x" * (MAX_WEBSOCKET_MESSAGE_BYTES // 2))
        codes.append(await _closed_with(ws))


async def flood(url: str, codes: list[int | None]) -> None:
    async with connect(url) as ws:
        await next_message(ws)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(10 * LIMITS.inbound_burst):
                await ws.send_message("ping")
        codes.append(await _closed_with(ws))


async def test_huge_frames_and_floods_are_cut_off_and_others_keep_streaming() -> None:
    async with agent_with_fleet(3, interval=0.2) as live, connect(live.ws_url) as good:
        assert (await next_message(good))["type"] == "snapshot"
        huge: list[int | None] = []
        flooded: list[int | None] = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(huge_frame, live.ws_url, huge)
                nursery.start_soon(flood, live.ws_url, flooded)
        # A flooder still has messages in flight when the server closes: the kernel may
        # then reset the connection before the close frame is read (1006).
        assert sorted(huge) == [CLOSE_TOO_BIG] * 5, huge
        assert set(flooded) <= {CLOSE_POLICY, ABNORMAL} and len(flooded) == 5, flooded
        # The good client still gets updates, and the agent still answers.
        assert (await next_of(good, "update"))["type"] == "update"
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            metrics = (await client.get("/metrics")).text
            assert "kata_pulse_websocket_clients 1" in metrics
