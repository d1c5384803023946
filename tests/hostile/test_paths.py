"""Names from the filesystem and from query strings never become paths outside a sandbox root,
and a symlink in a sandbox root is never followed out of it."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.ids import MAX_SANDBOX_ID_LENGTH, is_sandbox_id
from pulse.sim.bodies import Flavour
from pulse.sim.fleet import SHIM_SOCKET, open_fleet
from pulse.sim.shim import SimulatedShim
from tests.helpers import agent_config, eventually, running_agent

ROOT = Path("/run/vc/sbs")
PATHLIKE = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(["..", ".", "/", "\x00", "a", "0", "-", "_", "%2e", "\\"]), max_size=40
    ).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(PATHLIKE)
def test_an_accepted_id_names_exactly_one_entry_of_the_root(name: str) -> None:
    if not is_sandbox_id(name):
        return
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
    assert not name.startswith(".") and len(name) <= MAX_SANDBOX_ID_LENGTH
    assert (ROOT / name).parent == ROOT
    assert os.path.normpath(ROOT / name) == str(ROOT / name)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["..", "../..", "a/../b", "/etc/passwd", "a\x00b", "x" * 129, ".a", ""]))
def test_the_classics_are_refused(name: str) -> None:
    assert not is_sandbox_id(name)


async def _listed(client: httpx.AsyncClient) -> set[str]:
    return {item["sandbox_id"] for item in (await client.get("/sandboxes")).json()}


async def test_odd_names_and_symlinks_in_a_sandbox_root(sim_dir: Path) -> None:
    outside = sim_dir / "out"
    outside.mkdir()
    async with open_fleet(sim_dir, seed=51) as fleet:
        # A live shim outside every root, that a symlink would lead to.
        lure = SimulatedShim(outside / SHIM_SOCKET, lambda: b"# lure\nlure 1\n")
        async with trio.open_nursery() as nursery:
            await nursery.start(lure.serve)
            good = await fleet.add(Flavour.GO)
            root = fleet.go_root
            for name in (".hidden", "...", "a b", "x" * 200, "évil", "a\nb", "-lead", "a\\b"):
                (root / name).mkdir()
            (root / ("f" * 64)).write_text("a file, not a directory")
            # A sandbox entry that is a symlink to a directory outside the root.
            (root / ("e" * 64)).symlink_to(outside, target_is_directory=True)
            # A sandbox directory whose socket is a symlink to the shim outside.
            redirected = root / ("d" * 64)
            redirected.mkdir()
            (redirected / SHIM_SOCKET).symlink_to(outside / SHIM_SOCKET)

            config = agent_config(fleet, sim_dir / "no-cri.sock", metrics_interval=0.2)
            async with (
                running_agent(config) as agent,
                httpx.AsyncClient(base_url=agent.url, timeout=10) as client,
            ):

                async def good_is_up() -> bool:
                    items = (await client.get("/sandboxes")).json()
                    return any(
                        i["sandbox_id"] == good.sandbox_id and i["state"] == "up" for i in items
                    )

                await eventually(good_is_up)
                # A sandbox created while running, the same ways.
                late = root / ("c" * 64)
                late.mkdir()
                (late / SHIM_SOCKET).symlink_to(outside / SHIM_SOCKET)
                (root / ("b" * 64)).symlink_to(outside, target_is_directory=True)
                await eventually(lambda: _contains(client, "c" * 64))
                await trio.sleep(1.0)  # several collection intervals for the symlinks to be tried
                listed = await _listed(client)
                items = {i["sandbox_id"]: i for i in (await client.get("/sandboxes")).json()}
                metrics = (await client.get("/metrics/kata")).text
            nursery.cancel_scope.cancel()

    assert listed == {good.sandbox_id, "d" * 64, "c" * 64}
    assert lure.requests == 0, "a symlink was followed out of the sandbox root"
    assert "lure" not in metrics
    for sandbox_id in ("d" * 64, "c" * 64):
        assert items[sandbox_id]["state"] != "up"
        assert "symlink" in (items[sandbox_id]["last_error"] or ""), items[sandbox_id]


async def _contains(client: httpx.AsyncClient, sandbox_id: str) -> bool:
    return sandbox_id in await _listed(client)
