"""/ws of the real agent watching simulated sandboxes through a simulated CRI."""

from __future__ import annotations

import pytest
from trio_websocket import ConnectionRejected

from pulse.sim.bodies import Flavour

from .support import agent_with_fleet, connect, next_message, next_of, wait_until

FIGURES = (
    "cpu_cores",
    "memory_working_set_bytes",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
    "disk_read_bytes_per_second",
    "disk_write_bytes_per_second",
)


async def test_stream_follows_the_fleet() -> None:
    async with agent_with_fleet(3) as live, connect(live.ws_url) as ws:
        pods = {sid: sandbox.pod for sid, sandbox in live.fleet.sandboxes.items()}
        snapshot = await next_message(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["interval_seconds"] == 0.2
        known = {row["sandbox_id"] for row in snapshot["sandboxes"]}
        # Sandboxes the initial scan had not reported yet arrive as additions.
        while known != set(pods):
            message = await next_of(ws, "added")
            known.add(message["sandbox"]["sandbox_id"])

        # Collections: every sandbox gets its pod and, from its second collection, rates.
        complete: dict[str, dict[str, object]] = {}
        while set(complete) != set(pods):
            row = (await next_of(ws, "update", "added"))["sandbox"]
            if all(isinstance(row[f], int | float) for f in FIGURES):
                complete[row["sandbox_id"]] = row
        for sid, row in complete.items():
            assert row["pod"] == pods[sid].name
            assert row["namespace"] == pods[sid].namespace
            assert row["state"] == "up"
            assert row["cpu_cores"] >= 0  # type: ignore[operator]
            assert row["memory_working_set_bytes"] > 0  # type: ignore[operator]

        # A later collection brings a later row.
        some = next(iter(pods))
        while True:
            row = (await next_of(ws, "update"))["sandbox"]
            if row["sandbox_id"] == some:
                assert row["collected_at"] > complete[some]["collected_at"]  # type: ignore[operator]
                break

        newcomer = await live.fleet.add(Flavour.RUST)
        while True:
            message = await next_of(ws, "added")
            if message["sandbox"]["sandbox_id"] == newcomer.sandbox_id:
                assert message["sandbox"]["runtime"] == "rust"
                break

        live.fleet.remove(some)
        removed = await next_of(ws, "removed")
        assert removed["sandbox_id"] == some
        assert removed["pod"] == pods[some].name


async def test_namespace_filter_against_the_agent() -> None:
    async with agent_with_fleet(6, seed=11) as live:
        namespaces = {s.pod.namespace for s in live.fleet.sandboxes.values()}
        chosen = sorted(namespaces)[0]
        expected = {sid for sid, s in live.fleet.sandboxes.items() if s.pod.namespace == chosen}
        async with connect(f"{live.ws_url}?namespace={chosen}") as ws:
            seen: set[str] = set()
            snapshot = await next_message(ws)
            seen |= {r["sandbox_id"] for r in snapshot["sandboxes"]}
            while seen != expected:
                message = await next_of(ws, "added", "update")
                assert message["sandbox"]["namespace"] == chosen
                seen.add(message["sandbox"]["sandbox_id"])
            for _ in range(10):
                message = await next_of(ws, "update", "added")
                assert message["sandbox"]["sandbox_id"] in expected


async def test_client_limit_and_origin_on_the_agent() -> None:
    async with agent_with_fleet(1, ws_max_clients=1) as live:
        async with connect(live.ws_url) as first:
            await next_message(first)
            assert live.agent.web.websocket_clients == 1
            with pytest.raises(ConnectionRejected) as refused:
                async with connect(live.ws_url):
                    pass
            assert refused.value.status_code == 503
        await wait_until(lambda: live.agent.web.websocket_clients == 0)
        with pytest.raises(ConnectionRejected) as refused:
            async with connect(live.ws_url, origin="http://evil.example"):
                pass
        assert refused.value.status_code == 403
        async with connect(live.ws_url, origin=live.url) as same_origin:
            assert (await next_message(same_origin))["type"] == "snapshot"
