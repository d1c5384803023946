"""The client loop's timing: heartbeats, conflation, stalls, inbound limits (virtual time).

The loop talks to a transport made of two unbuffered Trio channels: a send completes only when
the test takes the message, exactly like a socket whose buffers are full, so the test decides
how fast the "client" reads.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from pulse.web.stream import (
    CLOSE_POLICY,
    CLOSE_STALLED,
    CLOSE_TOO_BIG,
    Close,
    RowEncoder,
    StreamFilter,
    StreamLimits,
    serve_client,
)

from .support import Publisher, make_view, sandbox_id

LIMITS = StreamLimits(heartbeat_seconds=15.0, stall_seconds=10.0)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class ChannelTransport:
    def __init__(self) -> None:
        self._to_client, self.from_server = trio.open_memory_channel[str](0)
        self.to_server, self._from_client = trio.open_memory_channel[str | bytes](0)

    async def send(self, data: str) -> None:
        await self._to_client.send(data)

    async def receive(self) -> str | bytes:
        return await self._from_client.receive()

    async def read(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.from_server.receive())
        return message


async def _run(
    transport: ChannelTransport,
    publisher: Publisher,
    outcome: list[Close],
    limits: StreamLimits = LIMITS,
    wanted: StreamFilter | None = None,
) -> None:
    close = await serve_client(
        transport, publisher.board, RowEncoder(), wanted or StreamFilter(), limits, 60.0
    )
    outcome.append(close)


async def test_heartbeat_only_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    publisher = Publisher([make_view(1)])
    transport = ChannelTransport()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, [])
        assert (await transport.read())["type"] == "snapshot"
        start = trio.current_time()
        beat = await transport.read()
        assert beat["type"] == "heartbeat"
        assert trio.current_time() - start == pytest.approx(LIMITS.heartbeat_seconds)

        # Updates every 10 s keep the line busy: no heartbeat in between.
        for step in range(5):
            await trio.sleep(10.0)
            publisher.touch(1, cpu_cores=float(step))
            assert (await transport.read())["type"] == "update"
        start = trio.current_time()
        assert (await transport.read())["type"] == "heartbeat"
        assert trio.current_time() - start == pytest.approx(LIMITS.heartbeat_seconds)
        nursery.cancel_scope.cancel()


async def test_slow_client_gets_latest_state_of_each_sandbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = Publisher([make_view(1, cpu=0.0), make_view(2, cpu=0.0)])
    transport = ChannelTransport()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, [])
        await transport.read()
        publisher.touch(1, cpu_cores=1.0)
        await trio.sleep(1.0)  # the stream is now blocked sending this update
        # While the client does not read, a hundred collections happen and one sandbox goes.
        for step in range(2, 102):
            publisher.touch(1, cpu_cores=float(step))
            publisher.touch(2, cpu_cores=float(step))
            await trio.sleep(0.05)
        publisher.put(make_view(3, cpu=9.0))
        publisher.drop(sandbox_id(2))
        await trio.sleep(1.0)

        first = await transport.read()
        assert first["sandbox"]["cpu_cores"] == 1.0  # the one that was already in flight
        # Then one batch from the latest snapshot: 200 collections and a removal collapse
        # into the latest state of each sandbox.
        rest = [await transport.read() for _ in range(3)]
        assert [(m["type"], m.get("sandbox", m)["sandbox_id"]) for m in rest] == [
            ("removed", sandbox_id(2)),
            ("update", sandbox_id(1)),
            ("added", sandbox_id(3)),
        ]
        assert rest[1]["sandbox"]["cpu_cores"] == 101.0
        assert {m["version"] for m in rest} == {publisher.version}
        with trio.move_on_after(LIMITS.heartbeat_seconds - 1) as quiet:
            await transport.read()
        assert quiet.cancelled_caught  # nothing else was queued
        nursery.cancel_scope.cancel()


async def test_removal_is_reported_to_a_slow_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = Publisher([make_view(1), make_view(2)])
    transport = ChannelTransport()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, [])
        await transport.read()
        publisher.touch(1, cpu_cores=5.0)
        await trio.sleep(1.0)
        publisher.drop(sandbox_id(2))
        publisher.touch(1, cpu_cores=6.0)
        await trio.sleep(1.0)
        messages = [await transport.read() for _ in range(3)]
        assert [m["type"] for m in messages] == ["update", "removed", "update"]
        assert messages[1]["sandbox_id"] == sandbox_id(2)
        assert messages[2]["sandbox"]["cpu_cores"] == 6.0
        nursery.cancel_scope.cancel()


async def test_client_that_stops_reading_is_closed_with_4008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = Publisher([make_view(1)])
    transport = ChannelTransport()
    outcome: list[Close] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, outcome)
        await transport.read()
        publisher.touch(1, cpu_cores=2.0)
        await trio.sleep(LIMITS.stall_seconds - 1)  # slow but within the bound
        await transport.read()
        assert not outcome
        publisher.touch(1, cpu_cores=3.0)
        await trio.sleep(LIMITS.stall_seconds + 1)
        await transport.read()  # the send completes, too late
    assert outcome == [Close(CLOSE_STALLED, outcome[0].reason)]
    assert "stopped reading" in outcome[0].reason


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        (["x" * 5000], CLOSE_TOO_BIG),
        (["ping"] * 50, CLOSE_POLICY),
        ([b"\x00" * 5000], CLOSE_TOO_BIG),
    ],
)
async def test_inbound_abuse_is_closed(
    autojump_clock: trio.testing.MockClock, messages: list[str | bytes], code: int
) -> None:
    publisher = Publisher([make_view(1)])
    transport = ChannelTransport()
    outcome: list[Close] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, outcome)
        await transport.read()
        for message in messages:
            with trio.move_on_after(1.0) as refused:
                await transport.to_server.send(message)
            if refused.cancelled_caught:
                break  # the stream no longer reads: it closed
    assert [c.code for c in outcome] == [code]


async def test_occasional_client_messages_are_tolerated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    publisher = Publisher([make_view(1)])
    transport = ChannelTransport()
    outcome: list[Close] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, transport, publisher, outcome)
        await transport.read()
        for _ in range(100):  # an application ping every 5 s for minutes
            await transport.to_server.send("ping")
            await trio.sleep(5.0)
            while True:
                with trio.move_on_after(0.01):
                    await transport.read()  # heartbeats
                    continue
                break
        assert outcome == []
        nursery.cancel_scope.cancel()
