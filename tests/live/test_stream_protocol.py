"""The /ws protocol over real sockets: the agent's web app on a board fed by the test."""

from __future__ import annotations

import httpx
import pytest
from trio_websocket import ConnectionRejected

from pulse.config import Config
from pulse.model import PodMeta

from .support import (
    Publisher,
    app_server,
    connect,
    make_view,
    next_message,
    next_of,
    sandbox_id,
    wait_until,
)

ROW_FIELDS = {
    "sandbox_id",
    "pod",
    "namespace",
    "state",
    "runtime",
    "runtime_handler",
    "cpu_cores",
    "memory_working_set_bytes",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
    "disk_read_bytes_per_second",
    "disk_write_bytes_per_second",
    "collected_at",
    "last_attempt",
    "last_error",
    "last_error_reason",
}


async def test_snapshot_on_connect_then_updates_additions_and_removals() -> None:
    publisher = Publisher([make_view(1, cpu=0.5), make_view(2, namespace="web")])
    async with app_server(publisher) as served, connect(served.ws_url) as ws:
        snapshot = await next_message(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["ready"] is True
        assert snapshot["version"] == publisher.version
        rows = {row["sandbox_id"]: row for row in snapshot["sandboxes"]}
        assert set(rows) == {sandbox_id(1), sandbox_id(2)}
        assert set(rows[sandbox_id(1)]) == ROW_FIELDS
        assert rows[sandbox_id(1)]["pod"] == "pod-1"
        assert rows[sandbox_id(1)]["cpu_cores"] == 0.5
        assert rows[sandbox_id(2)]["namespace"] == "web"
        assert rows[sandbox_id(2)]["network_transmit_bytes_per_second"] == 2000.0

        publisher.touch(1, cpu_cores=1.5, memory_working_set_bytes=100.0)
        update = await next_message(ws)
        assert update["type"] == "update"
        assert update["version"] == publisher.version
        assert update["sandbox"]["sandbox_id"] == sandbox_id(1)
        assert update["sandbox"]["cpu_cores"] == 1.5
        assert update["sandbox"]["memory_working_set_bytes"] == 100.0

        publisher.put(make_view(3, namespace="search"))
        added = await next_message(ws)
        assert added["type"] == "added"
        assert added["sandbox"]["sandbox_id"] == sandbox_id(3)
        assert added["sandbox"]["namespace"] == "search"

        publisher.drop(sandbox_id(2))
        removed = await next_message(ws)
        assert removed == {
            "type": "removed",
            "version": publisher.version,
            "time": removed["time"],
            "sandbox_id": sandbox_id(2),
            "pod": "pod-2",
            "namespace": "web",
        }


async def test_a_replaced_view_with_the_same_row_sends_nothing() -> None:
    publisher = Publisher([make_view(1), make_view(2)])
    async with app_server(publisher) as served, connect(served.ws_url) as ws:
        await next_of(ws, "snapshot")
        # The cache owner replaces a view on every CRI sync, collection or not; a row that
        # reads the same is not news.
        same = make_view(1)
        assert same is not publisher.board.current.sandboxes[sandbox_id(1)]
        publisher.put(same)
        publisher.touch(2, cpu_cores=0.75)
        message = await next_message(ws)
        assert message["type"] == "update"
        assert message["sandbox"]["sandbox_id"] == sandbox_id(2)


async def test_filters_by_sandbox_and_namespace() -> None:
    publisher = Publisher(
        [
            make_view(1, namespace="web"),
            make_view(2, namespace="web"),
            make_view(3, namespace="batch"),
            make_view(4, namespace=None),  # the CRI has not told its pod yet
        ]
    )
    async with app_server(publisher) as served:
        by_id = f"{served.ws_url}?sandbox={sandbox_id(1)}&sandbox={sandbox_id(3)}"
        by_namespace = f"{served.ws_url}?namespace=web"
        async with connect(by_id) as ids, connect(by_namespace) as web:
            first = await next_message(ids)
            assert {r["sandbox_id"] for r in first["sandboxes"]} == {sandbox_id(1), sandbox_id(3)}
            first = await next_message(web)
            assert {r["sandbox_id"] for r in first["sandboxes"]} == {sandbox_id(1), sandbox_id(2)}

            publisher.touch(2, cpu_cores=2.0)
            publisher.touch(3, cpu_cores=3.0)
            assert (await next_message(ids))["sandbox"]["sandbox_id"] == sandbox_id(3)
            assert (await next_message(web))["sandbox"]["sandbox_id"] == sandbox_id(2)

            # Sandbox 4's pod becomes known, in namespace web: it arrives for the web client.
            view = publisher.board.current.sandboxes[sandbox_id(4)]
            pod = PodMeta(sandbox_id(4), "late-pod", "web", "uid-4")
            publisher.put(view.with_changes(pod=pod))
            added = await next_message(web)
            assert added["type"] == "added"
            assert added["sandbox"]["pod"] == "late-pod"

            publisher.drop(sandbox_id(1))
            assert (await next_message(ids))["sandbox_id"] == sandbox_id(1)
            assert (await next_message(web))["sandbox_id"] == sandbox_id(1)


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("sandbox=../../etc", b"malformed sandbox id"),
        ("namespace=", b"namespace"),
    ],
)
async def test_bad_filters_are_refused_with_400(query: str, complaint: bytes) -> None:
    async with app_server(Publisher()) as served:
        with pytest.raises(ConnectionRejected) as refused:
            async with connect(f"{served.ws_url}?{query}"):
                pass
    assert refused.value.status_code == 400
    assert complaint in (refused.value.body or b"")


async def test_client_limit_refuses_clearly_and_frees_slots() -> None:
    config = Config(listen_port=0, ws_max_clients=2)
    async with app_server(Publisher([make_view(1)]), config) as served:
        async with connect(served.ws_url) as first:
            await next_message(first)
            async with connect(served.ws_url) as second:
                await next_message(second)
                assert served.web.websocket_clients == 2
                with pytest.raises(ConnectionRejected) as refused:
                    async with connect(served.ws_url):
                        pass
                assert refused.value.status_code == 503
                assert b"at most 2" in (refused.value.body or b"")
                assert served.web.websocket_clients == 2
            await wait_until(lambda: served.web.websocket_clients == 1)
            async with connect(served.ws_url) as third:
                assert (await next_message(third))["type"] == "snapshot"
        await wait_until(lambda: served.web.websocket_clients == 0)


async def test_origin_check() -> None:
    publisher = Publisher([make_view(1)])
    async with app_server(publisher) as served:
        # Not a browser: no Origin.
        async with connect(served.ws_url) as ws:
            assert (await next_message(ws))["type"] == "snapshot"
        # The dashboard served by this agent.
        async with connect(served.ws_url, origin=served.url) as ws:
            assert (await next_message(ws))["type"] == "snapshot"
        for foreign in (
            "http://evil.example",
            served.url.replace("127.0.0.1", "localhost"),
            "null",
        ):
            with pytest.raises(ConnectionRejected) as refused:
                async with connect(served.ws_url, origin=foreign):
                    pass
            assert refused.value.status_code == 403, foreign

    allowed = Config(listen_port=0, ws_allowed_origins=("https://grafana.example.com",))
    async with app_server(publisher, allowed) as served:
        async with connect(served.ws_url, origin="https://grafana.example.com") as ws:
            assert (await next_message(ws))["type"] == "snapshot"
        with pytest.raises(ConnectionRejected):
            async with connect(served.ws_url, origin="https://other.example.com"):
                pass

    anyone = Config(listen_port=0, ws_allowed_origins=("*",))
    async with (
        app_server(publisher, anyone) as served,
        connect(served.ws_url, origin="http://evil.example") as ws,
    ):
        assert (await next_message(ws))["type"] == "snapshot"


async def test_a_slow_reader_gets_the_latest_state_not_every_snapshot() -> None:
    publisher = Publisher([make_view(1, cpu=0.0)])
    async with app_server(publisher) as served, connect(served.ws_url) as ws:
        await next_message(ws)
        # Two hundred collections published before the stream's task runs again.
        for step in range(1, 201):
            publisher.touch(1, cpu_cores=float(step))
        seen = []
        while not seen or seen[-1] != 200.0:
            message = await next_of(ws, "update")
            seen.append(message["sandbox"]["cpu_cores"])
        # Conflation: the stream skipped snapshots it could not send in time, and never went
        # back in time.
        assert len(seen) < 200
        assert seen == sorted(seen)


async def test_page_and_assets_for_browsers_plain_index_for_others() -> None:
    async with (
        app_server(Publisher()) as served,
        httpx.AsyncClient(base_url=served.url) as http,
    ):
        page = await http.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="assets/dashboard.js"' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing external

        plain = await http.get("/", headers={"Accept": "*/*"})
        assert plain.headers["content-type"].startswith("text/plain")
        assert "/metrics" in plain.text
        assert plain.headers["vary"] == "Accept"

        script = await http.get("/assets/dashboard.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "new WebSocket" in script.text
        style = await http.get("/assets/dashboard.css")
        assert style.headers["content-type"].startswith("text/css")
        assert (await http.get("/assets/..%2Fstream.py")).status_code == 404
        assert (await http.get("/assets/index.html")).status_code == 404
