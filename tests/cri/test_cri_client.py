"""The async CRI client against a real grpcio server on a real Unix socket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from pulse.config import parse_endpoint
from pulse.cri.client import RUNTIME_SERVICE, CriClient, CriError
from pulse.cri.gen import runtime_v1_pb2 as pb
from pulse.model import PodMeta
from pulse.sim.cri import SimulatedCri


@pytest.mark.parametrize("form", ["{}", "unix://{}", "unix:{}"])
async def test_every_endpoint_form_reaches_the_runtime(
    sim_cri: SimulatedCri, cri_socket: Path, form: str
) -> None:
    sim_cri.set_pod(PodMeta("s1", "web-0", "shop", "u1"))
    async with CriClient(parse_endpoint(form.format(cri_socket))) as client:
        version = await client.version()
        sandboxes = await client.list_pod_sandboxes()
    assert version.runtime_name == "containerd"
    assert [(s.id, s.metadata.name) for s in sandboxes] == [("s1", "web-0")]


async def test_missing_socket_is_an_error_until_the_runtime_appears(cri_socket: Path) -> None:
    async with CriClient(cri_socket, timeout=1) as client:
        with pytest.raises(CriError) as raised:
            await client.version()
        assert raised.value.code == "UNAVAILABLE"
        assert str(cri_socket) in str(raised.value)
        with SimulatedCri(cri_socket):
            assert (await client.version()).runtime_name == "containerd"


async def test_slow_answer_is_cancelled_at_the_deadline(sim_cri: SimulatedCri) -> None:
    sim_cri.set_delay(30)
    async with CriClient(sim_cri.socket_path, timeout=0.3) as client:
        with pytest.raises(CriError) as raised:
            await client.list_pod_sandboxes()
    assert raised.value.code == "DEADLINE_EXCEEDED"
    assert raised.value.method == "ListPodSandbox"
    await _wait_until(lambda: sim_cri.cancelled["ListPodSandbox"] == 1)


async def test_cancelling_the_enclosing_scope_cancels_the_rpc(sim_cri: SimulatedCri) -> None:
    sim_cri.set_delay(30)
    async with CriClient(sim_cri.socket_path, timeout=60) as client:
        with trio.move_on_after(0.2) as scope:
            await client.version()
        assert scope.cancelled_caught
        # The server saw the call go away: nothing is left running for 30 s.
        await _wait_until(lambda: sim_cri.cancelled["Version"] == 1)
        sim_cri.set_delay(0)
        assert (await client.version()).runtime_name == "containerd"


async def test_calls_do_not_block_the_trio_thread(sim_cri: SimulatedCri) -> None:
    sim_cri.set_delay(0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with CriClient(sim_cri.socket_path) as client, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await client.version()
        nursery.cancel_scope.cancel()
    assert ticks >= 10  # the event loop kept running while the answer was pending


async def test_outage_errors_then_recovers_on_the_same_client(sim_cri: SimulatedCri) -> None:
    async with CriClient(sim_cri.socket_path, timeout=1) as client:
        await client.version()
        sim_cri.set_down(True)
        with pytest.raises(CriError) as raised:
            await client.list_containers()
        assert raised.value.code == "UNAVAILABLE"
        sim_cri.set_down(False)
        assert await client.list_containers() == []


async def test_runtime_restart_on_the_same_socket_is_picked_up(cri_socket: Path) -> None:
    async with CriClient(cri_socket, timeout=1) as client:
        with SimulatedCri(cri_socket, runtime_version="1"):
            assert (await client.version()).runtime_version == "1"
        with pytest.raises(CriError):
            await client.version()
        with SimulatedCri(cri_socket, runtime_version="2"):
            assert (await client.version()).runtime_version == "2"


async def test_error_answers_carry_method_and_code(sim_cri: SimulatedCri) -> None:
    async with CriClient(sim_cri.socket_path) as client:
        with pytest.raises(CriError) as raised:
            await client.pod_sandbox_status("nope")
        assert raised.value.code == "NOT_FOUND"
        assert raised.value.method == "PodSandboxStatus"
        # A method the runtime does not implement.
        with pytest.raises(CriError) as raised:
            await client.call(RUNTIME_SERVICE, "Status", pb.VersionRequest(), pb.VersionResponse)
        assert raised.value.code == "UNIMPLEMENTED"


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        CriClient(Path("/x"), timeout=0)


async def _wait_until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll a condition the server's threads make true (they cannot set a Trio event)."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"condition not met within {limit}s")
