"""The whole agent, end to end: real sandbox directories, real shim sockets, real HTTP."""

from __future__ import annotations

import gzip
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pulse.agent import run_agent
from pulse.malloc import memory_trimmer
from pulse.sim.bodies import Flavour
from pulse.sim.fleet import SimSandbox, open_fleet
from pulse.sim.shim import Behaviour
from tests.helpers import agent_config, eventually, http_client, running_agent


async def sandboxes(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/sandboxes")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return {item["sandbox_id"]: item for item in response.json()}


def up_line(sandbox_id: str, metrics: str) -> str | None:
    for line in metrics.splitlines():
        if line.startswith("kata_pulse_sandbox_up{") and f'sandbox_id="{sandbox_id}"' in line:
            return line
    return None


async def has_data(client: httpx.AsyncClient, sandbox_id: str) -> bool:
    metrics = (await client.get("/metrics")).text
    line = up_line(sandbox_id, metrics)
    return line is not None and line.endswith(" 1") and f'name="{sandbox_id}"' in metrics


def task_names() -> list[str]:
    names = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


def collector_task_names() -> list[str]:
    return [name for name in task_names() if name.startswith("collector:")]


async def test_discovery_first_metrics_and_removal(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=1) as fleet:
        go_box = await fleet.add(Flavour.GO)
        rust_box = await fleet.add(Flavour.RUST)
        config = agent_config(fleet, sim_dir / "no-cri.sock", metrics_interval=30.0)
        async with running_agent(config) as agent, http_client(agent) as client:
            # Metrics of sandboxes present at start: at once, not after the 30 s interval.
            for box in (go_box, rust_box):
                with trio.fail_after(2):
                    await eventually(lambda box=box: has_data(client, box.sandbox_id))
            listed = await sandboxes(client)
            assert listed[go_box.sandbox_id]["root"] == str(fleet.go_root)
            assert listed[rust_box.sandbox_id]["root"] == str(fleet.rust_root)
            assert listed[go_box.sandbox_id]["state"] == "up"
            for key in ("pod_name", "namespace", "uid", "last_success", "last_error"):
                assert key in listed[go_box.sandbox_id]

            # New sandboxes under both roots, while running.
            new_go = await fleet.add(Flavour.GO)
            new_rust = await fleet.add(Flavour.RUST)
            for box in (new_go, new_rust):
                with trio.fail_after(2):
                    await eventually(lambda box=box: has_data(client, box.sandbox_id))
            assert len(collector_task_names()) == 4

            # Removal: the collector is cancelled and nothing of the sandbox stays.
            fleet.remove(go_box.sandbox_id)

            async def gone() -> bool:
                metrics = (await client.get("/metrics")).text
                return go_box.sandbox_id not in metrics and go_box.sandbox_id not in (
                    await sandboxes(client)
                )

            await eventually(gone)
            assert len(collector_task_names()) == 3
            assert go_box.sandbox_id not in (await client.get("/metrics/kata")).text


async def test_teardown_races_are_not_logged_as_errors(
    sim_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_fleet(sim_dir, seed=10) as fleet:
        boxes = [await fleet.add(Flavour.GO) for _ in range(6)]
        # Collections every 50 ms make a scrape during teardown likely.
        config = agent_config(fleet, sim_dir / "no-cri.sock", metrics_interval=0.05)
        async with running_agent(config) as agent, http_client(agent) as client:
            for box in boxes:
                with trio.fail_after(2):
                    await eventually(lambda box=box: has_data(client, box.sandbox_id))
            caplog.clear()
            async with trio.open_nursery() as nursery:
                for box in boxes:
                    nursery.start_soon(fleet.teardown, box.sandbox_id)
            with trio.fail_after(2):
                await eventually(lambda: _all_gone(client, boxes))
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "pulse.cri"]
    assert loud == [], [(r.getMessage(), getattr(r, "pulse_fields", {})) for r in loud]


async def _all_gone(client: httpx.AsyncClient, boxes: list[SimSandbox]) -> bool:
    return not set(await sandboxes(client)) & {box.sandbox_id for box in boxes}


async def test_root_created_after_start(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=2) as fleet:
        late_root = sim_dir / "l" / "kata"
        config = agent_config(fleet, sim_dir / "no-cri.sock", sandbox_dirs=(late_root,))
        async with running_agent(config) as agent, http_client(agent) as client:
            assert (await client.get("/readyz")).status_code == 200
            box = await fleet.add(Flavour.RUST, root=late_root)
            with trio.fail_after(3):
                await eventually(lambda: has_data(client, box.sandbox_id))


async def test_socket_appearing_after_the_directory(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=3) as fleet:
        config = agent_config(fleet, sim_dir / "no-cri.sock")
        async with running_agent(config) as agent, http_client(agent) as client:
            box = await fleet.add(Flavour.GO, with_socket=False)
            with trio.fail_after(2):
                await eventually(lambda: _state_is(client, box.sandbox_id, "pending", "down"))
            await trio.sleep(0.3)  # the directory exists for a while without a socket
            await fleet.start_shim(box)
            with trio.fail_after(2):
                await eventually(lambda: has_data(client, box.sandbox_id))


async def _state_is(client: httpx.AsyncClient, sandbox_id: str, *states: str) -> bool:
    item = (await sandboxes(client)).get(sandbox_id)
    return item is not None and item["state"] in states


async def test_hung_shim_never_delays_other_sandboxes(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=4) as fleet:
        hung = await fleet.add(Flavour.GO, behaviour=Behaviour.HANG)
        trickling = await fleet.add(Flavour.GO, behaviour=Behaviour.TRICKLE)
        healthy = [await fleet.add(Flavour.GO) for _ in range(3)]
        config = agent_config(fleet, sim_dir / "no-cri.sock", shim_timeout=20.0)
        async with running_agent(config) as agent, http_client(agent) as client:
            for box in healthy:
                # Well inside the hung shims' 20 s timeout.
                with trio.fail_after(2):
                    await eventually(lambda box=box: has_data(client, box.sandbox_id))
            listed = await sandboxes(client)
            assert listed[hung.sandbox_id]["state"] == "pending"
            assert listed[trickling.sandbox_id]["state"] == "pending"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour.GARBAGE, "unparseable"),
        (Behaviour.HUGE, "oversize"),
        (Behaviour.ERROR, "http_status"),
        (Behaviour.VANISH, "protocol"),
    ],
)
async def test_bad_shim_is_reported_and_does_not_disturb_others(
    sim_dir: Path, behaviour: Behaviour, reason: str
) -> None:
    async with open_fleet(sim_dir, seed=5) as fleet:
        bad = await fleet.add(Flavour.GO, behaviour=behaviour)
        good = await fleet.add(Flavour.GO)
        config = agent_config(fleet, sim_dir / "no-cri.sock", shim_max_body=4 * 1024 * 1024)
        async with running_agent(config) as agent, http_client(agent) as client:
            with trio.fail_after(3):
                await eventually(lambda: has_data(client, good.sandbox_id))
            with trio.fail_after(3):
                await eventually(lambda: _state_is(client, bad.sandbox_id, "down"))
            item = (await sandboxes(client))[bad.sandbox_id]
            assert item["last_error_reason"] == reason
            assert item["last_error"]
            metrics = (await client.get("/metrics")).text
            assert f'kata_pulse_scrape_failures_total{{reason="{reason}"}} 1' in metrics
            assert (up_line(bad.sandbox_id, metrics) or "").endswith(" 0")
            assert f'name="{bad.sandbox_id}"' not in metrics


async def test_last_good_data_is_kept_until_stale_then_dropped(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=6) as fleet:
        box = await fleet.add(Flavour.GO)
        # stale after 2 x 0.3 + 0.2 = 0.8 s
        config = agent_config(
            fleet, sim_dir / "no-cri.sock", metrics_interval=0.3, shim_timeout=0.2
        )
        async with running_agent(config) as agent, http_client(agent) as client:
            with trio.fail_after(2):
                await eventually(lambda: has_data(client, box.sandbox_id))
            box.shim.behaviour = Behaviour.ERROR
            with trio.fail_after(2):
                await eventually(lambda: _state_is(client, box.sandbox_id, "degraded"))
            assert await has_data(client, box.sandbox_id)  # still served while fresh
            with trio.fail_after(3):
                await eventually(lambda: _state_is(client, box.sandbox_id, "down"))
            # Losing data changes the layout: no reused body may still show it.
            assert not await has_data(client, box.sandbox_id)
            box.shim.behaviour = Behaviour.HEALTHY
            with trio.fail_after(2):
                await eventually(lambda: has_data(client, box.sandbox_id))


async def test_metrics_endpoints_formats_and_queries(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=7) as fleet:
        boxes = [await fleet.add(Flavour.GO) for _ in range(2)]
        config = agent_config(fleet, sim_dir / "no-cri.sock")
        async with running_agent(config) as agent, http_client(agent) as client:
            for box in boxes:
                with trio.fail_after(2):
                    await eventually(lambda box=box: has_data(client, box.sandbox_id))
            plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
            assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "content-encoding" not in plain.headers
            assert plain.text.count("# TYPE container_cpu_usage_seconds_total ") == 1

            zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.headers["vary"] == "Accept-Encoding"
            same_version = await client.get(
                "/metrics/cadvisor", headers={"Accept-Encoding": "gzip"}
            )
            body = same_version.text
            assert body.count("# TYPE container_memory_working_set_bytes ") == 1

            one = await client.get("/metrics", params={"sandbox": boxes[0].sandbox_id})
            assert one.status_code == 200
            assert boxes[0].sandbox_id in one.text and boxes[1].sandbox_id not in one.text

            unknown = await client.get("/metrics", params={"sandbox": "f" * 64})
            assert unknown.status_code == 404
            assert unknown.text.count("\n") == 1 and "unknown sandbox" in unknown.text
            for bad_id in ("../../etc", "a/b", "x" * 200, ""):
                malformed = await client.get("/metrics", params={"sandbox": bad_id})
                assert malformed.status_code == 400, bad_id
                assert malformed.text.count("\n") == 1

            kata = (await client.get("/metrics/kata")).text
            assert kata.count("# TYPE kata_guest_meminfo gauge") == 1
            assert f'sandbox_id="{boxes[0].sandbox_id}"' in kata
            raw_one = await client.get("/metrics/kata", params={"sandbox": boxes[1].sandbox_id})
            assert raw_one.text.startswith("# HELP") and "sandbox_id=" not in raw_one.text

            assert (await client.get("/healthz")).text == "ok\n"
            assert (await client.get("/readyz")).status_code == 200
            index = await client.get("/", headers={"Accept": "text/plain"})
            assert "/metrics" in index.text and "/sandboxes" in index.text


async def test_gzip_body_on_the_wire_decompresses_to_the_plain_body(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=8) as fleet:
        box = await fleet.add(Flavour.GO)
        config = agent_config(fleet, sim_dir / "no-cri.sock")
        async with running_agent(config) as agent, http_client(agent) as client:
            with trio.fail_after(2):
                await eventually(lambda: has_data(client, box.sandbox_id))
            path = f"/metrics?sandbox={box.sandbox_id}"  # no per-request tail: bodies comparable
            async with client.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as wire:
                compressed = b"".join([part async for part in wire.aiter_raw()])
            plain = (await client.get(path, headers={"Accept-Encoding": "identity"})).content
            assert gzip.decompress(compressed) == plain


async def test_sandboxes_json_is_an_array_with_the_rust_agent_keys(sim_dir: Path) -> None:
    async with open_fleet(sim_dir, seed=9) as fleet:
        box = await fleet.add(Flavour.FIRECRACKER)
        config = agent_config(fleet, sim_dir / "no-cri.sock")
        async with running_agent(config) as agent, http_client(agent) as client:
            with trio.fail_after(2):
                await eventually(lambda: _state_is(client, box.sandbox_id, "up"))
            data = json.loads((await client.get("/sandboxes")).text)
            assert isinstance(data, list) and len(data) == 1
            assert {"sandbox_id", "pod_name", "namespace", "uid"} <= set(data[0])


@pytest.mark.skipif(memory_trimmer() is None, reason="no malloc_trim in this C library")
@pytest.mark.parametrize("trim_memory", [True, False])
async def test_the_memory_trimmer_runs_only_when_asked(sim_dir: Path, trim_memory: bool) -> None:
    # The command line asks for it when tune_malloc took (the process's malloc is the agent's).
    async with open_fleet(sim_dir, seed=1) as fleet:
        config = agent_config(fleet, sim_dir / "no-cri.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_agent, config, trim_memory=trim_memory))
            assert ("memory-trimmer" in task_names()) is trim_memory
            nursery.cancel_scope.cancel()
