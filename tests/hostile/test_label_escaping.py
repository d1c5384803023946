"""Label values from the CRI and from a shim body, with quotes, backslashes, newlines and
non-ASCII, come out escaped: promtool parses every output, and the values survive intact."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pulse.expo.text import escape_label_value
from pulse.sim.bodies import Flavour
from pulse.sim.cri import SimulatedCri
from pulse.sim.fleet import open_fleet
from tests.helpers import agent_config, eventually, running_agent

PROMTOOL = Path("/usr/bin/promtool")
HOSTILE = 'we"ird\\va\nlue, naïve ☃ }{="'
HOSTILE_DEVICE = 'vd"a\\b\nñ'
HOSTILE_INTERFACE = 'eth"0\\\n✓'

pytestmark = pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool not installed")


def promtool_parses(body: bytes) -> None:
    """promtool's parser accepts the body (lint findings about naming are not parse errors)."""
    result = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert "parsing error" not in output and "error while linting" not in output, output[:2000]
    assert result.returncode in (0, 3), output[:2000]  # 3: lint findings only


def label_values(body: str) -> set[str]:
    return {
        value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        for value in sample.labels.values()
    }


async def test_hostile_label_values_are_escaped_in_every_output(sim_dir: Path) -> None:
    with SimulatedCri(sim_dir / "cri.sock") as cri:
        async with open_fleet(sim_dir, cri=cri, seed=41) as fleet:
            box = await fleet.add(Flavour.GO)
            container = dataclasses.replace(
                box.pod.containers[0], name=HOSTILE, image=f"registry/{HOSTILE}:1"
            )
            cri.set_pod(
                dataclasses.replace(
                    box.pod, name=HOSTILE, namespace=HOSTILE, containers=(container,)
                )
            )
            render = box.shim.body

            def hostile_body() -> bytes:
                # The shim escapes as the format requires; the agent must unescape and
                # escape again, not pass raw bytes through or double-escape.
                return (
                    render()
                    .replace(b'disk="vda"', f'disk="{escape_label_value(HOSTILE_DEVICE)}"'.encode())
                    .replace(
                        b'interface="eth0"',
                        f'interface="{escape_label_value(HOSTILE_INTERFACE)}"'.encode(),
                    )
                )

            box.shim.body = hostile_body
            config = agent_config(fleet, cri.socket_path, metrics_interval=0.3)
            async with (
                running_agent(config) as agent,
                httpx.AsyncClient(base_url=agent.url, timeout=10) as client,
            ):

                async def named_and_collected() -> str | None:
                    text = (await client.get("/metrics")).text
                    return (
                        text
                        if escape_label_value(HOSTILE) in text and "container_cpu" in text
                        else None
                    )

                metrics = await eventually(named_and_collected)
                kata = (await client.get("/metrics/kata")).content
                listed = (await client.get("/sandboxes")).json()

    for body in (metrics.encode(), kata):
        await trio.to_thread.run_sync(promtool_parses, body)
    # The values are intact after a round trip through another parser.
    values = label_values(metrics)
    assert HOSTILE in values
    assert HOSTILE_INTERFACE in values
    assert f"/dev/{HOSTILE_DEVICE}" in values
    kata_values = label_values(kata.decode())
    assert {HOSTILE, HOSTILE_DEVICE, HOSTILE_INTERFACE} <= kata_values
    assert listed[0]["pod_name"] == HOSTILE
