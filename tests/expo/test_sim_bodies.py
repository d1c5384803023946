"""The simulated shim bodies behave like real guests: consistent, growing, flavour-specific."""

from __future__ import annotations

import pytest

from pulse.cadvisor.cpu import UNITS_PER_SECOND
from pulse.expo.parser import parse
from pulse.sim.bodies import CPU_ITEMS, MEMINFO_ITEMS, Flavour, SimulatedGuest

BOOT = 1_761_000_000.0
SUMMED = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def guest_values(body: bytes, family: str, *keys: str) -> dict[tuple[str, ...], float]:
    return parse(body.decode()).families[family].index(*keys)


@pytest.mark.parametrize(
    ("flavour", "unit"), [(Flavour.GO, "ms"), (Flavour.GO_TICKS, "ticks"), (Flavour.RUST, "ms")]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cpu_time_sum_grows_by_cpus_times_seconds_times_units(
    flavour: Flavour, unit: str, seed: int
) -> None:
    guest = SimulatedGuest("a" * 64, flavour, seed, BOOT)
    t0, t1 = BOOT + 3_600, BOOT + 3_660
    before = guest_values(guest.render(t0), "kata_guest_cpu_time", "cpu", "item")
    after = guest_values(guest.render(t1), "kata_guest_cpu_time", "cpu", "item")
    grown = sum(after[("total", i)] - before[("total", i)] for i in SUMMED)
    expected = guest.profile.ncpu * 60 * UNITS_PER_SECOND[unit]
    # Each CPU's items are floored to whole ticks: at most one tick lost per item and CPU.
    tick = UNITS_PER_SECOND[unit] / 100
    assert abs(grown - expected) <= len(SUMMED) * guest.profile.ncpu * tick
    per_cpu = {cpu for cpu, _ in after if cpu != "total"}
    assert per_cpu == {str(i) for i in range(guest.profile.ncpu)}


@pytest.mark.parametrize("flavour", list(Flavour))
def test_counters_never_go_back(flavour: Flavour) -> None:
    guest = SimulatedGuest("b" * 64, flavour, 9, BOOT)
    bodies = [parse(guest.render(BOOT + t).decode()) for t in (10.0, 400.0, 401.5, 5_000.0)]
    for family, keys, gauge_items in (
        ("kata_guest_cpu_time", ("cpu", "item"), ()),
        ("kata_guest_diskstat", ("disk", "item"), ("in_progress",)),
        ("kata_guest_netdev_stat", ("interface", "item"), ()),
        ("kata_guest_vm_stat", ("item",), ()),
    ):
        if family not in bodies[0].families:
            assert flavour is Flavour.NO_GUEST
            continue
        series = [body.families[family].index(*keys) for body in bodies]
        for key in series[0]:
            if key[-1] in gauge_items or (
                family == "kata_guest_vm_stat" and key[0].startswith("nr_")
            ):
                continue
            values = [values[key] for values in series]
            assert values == sorted(values), (family, key)


def test_bodies_are_deterministic_and_flavoured() -> None:
    go = SimulatedGuest("c" * 64, Flavour.GO, 5, BOOT)
    assert go.render(BOOT + 100) == go.render(BOOT + 100)
    go_body = go.render(BOOT + 100).decode()
    assert 1_300 <= go_body.count("\n") <= 1_700  # the ~1,500-line body of the benchmark
    assert "e+0" in go_body  # Go's e-notation
    families = parse(go_body).families
    assert {"go_goroutines", "process_cpu_seconds_total", "kata_virtiofsd_threads"} <= set(families)
    assert families["kata_shim_rpc_durations_histogram_milliseconds"].type == "histogram"
    assert families["go_gc_duration_seconds"].type == "summary"
    assert len(families["kata_guest_meminfo"].samples) == len(MEMINFO_ITEMS) == 58
    assert len(families["kata_guest_cpu_time"].samples) == len(CPU_ITEMS) * (go.profile.ncpu + 1)

    rust_body = SimulatedGuest("c" * 64, Flavour.RUST, 5, BOOT).render(BOOT + 100).decode()
    assert "e+" not in rust_body and "go_goroutines" not in rust_body
    assert "kata_hypervisor_vcpu" in rust_body

    fc = parse(SimulatedGuest("c" * 64, Flavour.FIRECRACKER, 5, BOOT).render(BOOT).decode())
    assert len([f for f in fc.families if f.startswith("kata_firecracker_")]) == 17
    assert "kata_virtiofsd_threads" not in fc.families

    bare = parse(SimulatedGuest("c" * 64, Flavour.NO_GUEST, 5, BOOT).render(BOOT).decode())
    assert not [f for f in bare.families if f.startswith(("kata_guest_", "kata_agent_"))]
    assert "kata_shim_threads" in bare.families


def test_guest_and_guest_nice_stay_inside_user_and_nice() -> None:
    guest = SimulatedGuest("d" * 64, Flavour.GO, 3, BOOT)
    cpu = guest.cpu_time_values(BOOT + 1_000, "ms")["total"]
    assert 0 < cpu["guest"] <= cpu["user"]
    assert cpu["guest_nice"] <= cpu["nice"]
