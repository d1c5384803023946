"""Channel helpers shared by the actors."""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


async def send_promptly(channel: trio.MemorySendChannel[T], message: T) -> None:
    """Send without yielding to other tasks while the channel has room; wait only when full.

    A plain `send` is a schedule point even when there is room. Where one actor sends a burst
    (500 sandboxes found at start), yielding after every message lets the work each message
    starts run first, so the end of the burst arrives late: here the burst goes out whole,
    and backpressure still applies once the channel is full.
    """
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        await channel.send(message)
