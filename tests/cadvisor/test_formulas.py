"""Every conversion formula against values computed by hand, and the CPU unit detection."""

from __future__ import annotations

import math
import re

import pytest

from pulse.cadvisor import ConversionOptions, ConversionState, GuestSample, convert
from pulse.cadvisor.cpu import UnitProbe, cpu_seconds, detect_unit, time_sum
from pulse.cadvisor.disk import device_figures
from pulse.cadvisor.memory import memory_figures, page_faults
from pulse.cadvisor.network import interface_figures
from pulse.cadvisor.rows import cgroup_path, pod_id
from pulse.cadvisor.tasks import threads
from pulse.expo.parser import Sample, parse
from pulse.model import ContainerInfo, ContainerStats, PodMeta

SANDBOX = "5" * 64
T0 = 1_761_000_000.25

# cpu="total" items of a 2-vCPU guest, in milliseconds.
CPU_MS = {
    "user": 50_000.0,
    "nice": 1_000.0,
    "system": 20_000.0,
    "idle": 900_000.0,
    "iowait": 3_000.0,
    "irq": 500.0,
    "softirq": 1_500.0,
    "steal": 4_000.0,
}
MEMINFO = {
    "mem_total": 2_000_000_000.0,
    "mem_free": 1_200_000_000.0,
    "buffers": 10_000_000.0,
    "cached": 300_000_000.0,
    "active_file": 120_000_000.0,
    "inactive_file": 150_000_000.0,
    "anon_pages": 400_000_000.0,
    "mapped": 60_000_000.0,
    "swap_total": 0.0,
    "swap_free": 0.0,
}


def guest(**changes: object) -> GuestSample:
    values: dict[str, object] = {
        "cpu": CPU_MS,
        "ncpu": 2,
        "meminfo": MEMINFO,
        "vm_stat": {"pgfault": 123_456.0, "pgmajfault": 78.0},
        "netdev": {
            "eth0": {
                "recv_bytes": 5_000.0,
                "recv_packets": 50.0,
                "recv_errs": 1.0,
                "recv_drop": 2.0,
                "sent_bytes": 7_000.0,
                "sent_packets": 70.0,
                "sent_errs": 3.0,
                "sent_drop": 4.0,
            }
        },
        "diskstat": {
            "vda": {
                "reads": 100.0,
                "merged": 5.0,
                "sectors_read": 2_000.0,
                "time_reading": 1_500.0,
                "writes": 40.0,
                "writes_merged": 6.0,
                "sectors_written": 800.0,
                "time_writing": 2_500.0,
                "in_progress": 2.0,
                "time_in_progress": 3_000.0,
                "weighted_time_in_progress": 4_500.0,
            },
            "ram0": {"reads": 9.0},
            "loop3": {"reads": 9.0},
        },
        "tasks": {"cur": 2.0, "max": 137.0},
    }
    values.update(changes)
    return GuestSample(**values)  # type: ignore[arg-type]


def pod(*containers: ContainerInfo, **changes: object) -> PodMeta:
    values: dict[str, object] = {
        "sandbox_id": SANDBOX,
        "name": "web-1",
        "namespace": "shop",
        "uid": "1111-2222",
        "created_at_ns": 1_760_999_000_700_000_000,
        "cgroup_parent": "/kubepods/burstable/pod1111-2222",
        "sandbox_image": "registry.k8s.io/pause:3.10",
        "containers": containers,
    }
    values.update(changes)
    return PodMeta(**values)  # type: ignore[arg-type]


def container(name: str, cid: str, **stats: int) -> ContainerInfo:
    return ContainerInfo(
        container_id=cid,
        name=name,
        image=f"example/{name}:1",
        image_ref="sha256:" + "0" * 64,
        state="CONTAINER_RUNNING",
        created_at_ns=1_760_999_100_000_000_000,
        stats=ContainerStats(timestamp_ns=1, **stats) if stats else None,  # type: ignore[arg-type]
    )


def rendered(block: dict[str, bytes] | object) -> dict[str, list[Sample]]:
    """The block's samples per family, read back with our parser."""
    assert isinstance(block, dict)
    text = b"".join(block.values()).decode()
    parsed = parse(text)
    assert parsed.malformed_lines == 0, parsed.first_error
    return {name: list(family.samples) for name, family in parsed.families.items()}


def values_of(samples: dict[str, list[Sample]], family: str, **labels: str) -> list[float]:
    return [
        s.value for s in samples.get(family, []) if all(s.label(k) == v for k, v in labels.items())
    ]


def only(samples: dict[str, list[Sample]], family: str, **labels: str) -> float:
    found = values_of(samples, family, **labels)
    assert len(found) == 1, (family, labels, found)
    return found[0]


# --- CPU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "divisor"), [("ms", 1), ("ticks", 10), ("seconds", 1000)])
def test_cpu_seconds_in_every_unit(unit: str, divisor: int) -> None:
    # usage = user + nice + system + irq + softirq = 50000+1000+20000+500+1500 ms = 73 s;
    # user = user + nice = 51 s; system = system + irq + softirq = 22 s.
    figures = cpu_seconds({k: v / divisor for k, v in CPU_MS.items()}, unit)
    assert figures is not None
    assert (figures.usage, figures.user, figures.system) == pytest.approx((73.0, 51.0, 22.0))


def test_guest_and_guest_nice_are_never_added() -> None:
    with_guest = {**CPU_MS, "guest": 40_000.0, "guest_nice": 900.0}
    assert cpu_seconds(with_guest, "ms") == cpu_seconds(CPU_MS, "ms")
    assert time_sum(with_guest) == time_sum(CPU_MS)


@pytest.mark.parametrize(("unit", "per_second"), [("ms", 1000), ("ticks", 100), ("seconds", 1)])
def test_unit_detected_from_two_samples(unit: str, per_second: int) -> None:
    # 2 vCPUs, 30 s apart: the sum of all times grows by 2 x 30 x units per second.
    first = UnitProbe(T0, 1_000_000.0, 2)
    second = UnitProbe(T0 + 30, 1_000_000.0 + 2 * 30 * per_second, 2)
    assert detect_unit(first, second) == unit


def test_unit_detection_tolerates_jitter_but_not_nonsense() -> None:
    first = UnitProbe(T0, 0.0, 4)
    # 4 CPUs x 60 s x 100 ticks = 24000; the guest's clock and ours differ by a second.
    assert detect_unit(first, UnitProbe(T0 + 60, 24_000 * 61 / 60, 4)) == "ticks"
    # A rate of 316 units/s lies between ticks and ms: no answer.
    assert detect_unit(first, UnitProbe(T0 + 60, 4 * 60 * 316, 4)) is None
    # Too short an interval, a CPU hot-plugged, or a counter that went back: no answer.
    assert detect_unit(first, UnitProbe(T0 + 2, 4 * 2 * 1000, 4)) is None
    assert detect_unit(first, UnitProbe(T0 + 60, 4 * 60 * 1000, 5)) is None
    assert detect_unit(UnitProbe(T0, 10.0, 4), UnitProbe(T0 + 60, 5.0, 4)) is None


def test_auto_unit_assumes_ms_then_detects_ticks_and_keeps_it() -> None:
    options = ConversionOptions()
    ticks = {k: v / 10 for k, v in CPU_MS.items()}  # 73 s of CPU, written as ticks
    block, state = convert(SANDBOX, guest(cpu=ticks), pod(), T0, None, options)
    assert state.cpu_unit is None  # not known yet: read as milliseconds meanwhile
    assert only(rendered(block), "container_cpu_usage_seconds_total", container="") == 7.3

    # 30 s later on 2 vCPUs the sum grew by 2 x 30 x 100 ticks; user grew by 1000 ticks.
    later = {**ticks, "idle": ticks["idle"] + 5_000, "user": ticks["user"] + 1_000}
    block, state = convert(SANDBOX, guest(cpu=later), pod(), T0 + 30, state, options)
    assert state.cpu_unit == "ticks"
    assert only(rendered(block), "container_cpu_usage_seconds_total", container="") == 83.0
    assert state.rates is None  # no rate across the change of unit

    # Known from now on, whatever the next samples look like.
    block, state = convert(SANDBOX, guest(cpu=later), pod(), T0 + 31, state, options)
    assert state.cpu_unit == "ticks"


def test_configured_unit_is_used_from_the_first_sample() -> None:
    options = ConversionOptions(cpu_time_unit="seconds")
    seconds = {k: v / 1000 for k, v in CPU_MS.items()}
    block, state = convert(SANDBOX, guest(cpu=seconds), pod(), T0, None, options)
    assert state.cpu_unit == "seconds"
    assert only(rendered(block), "container_cpu_user_seconds_total", container="") == 51.0


def test_detection_waits_for_a_long_enough_interval() -> None:
    options = ConversionOptions()
    _, state = convert(SANDBOX, guest(), pod(), T0, None, options)
    grown = {**CPU_MS, "idle": CPU_MS["idle"] + 2 * 2 * 1000}
    _, state = convert(SANDBOX, guest(cpu=grown), pod(), T0 + 2, state, options)
    assert state.cpu_unit is None
    assert state.unit_probe is not None and state.unit_probe.collected_at == T0  # kept
    grown = {**CPU_MS, "idle": CPU_MS["idle"] + 2 * 20 * 1000}
    _, state = convert(SANDBOX, guest(cpu=grown), pod(), T0 + 20, state, options)
    assert state.cpu_unit == "ms"


def test_cpu_usage_of_zero_is_omitted_as_cadvisor_does() -> None:
    idle_only = dict.fromkeys(CPU_MS, 0.0) | {"idle": 5.0}
    samples = rendered(
        convert(SANDBOX, guest(cpu=idle_only), pod(), T0, None, ConversionOptions())[0]
    )
    assert values_of(samples, "container_cpu_usage_seconds_total") == []
    assert only(samples, "container_cpu_user_seconds_total", container="") == 0.0


# --- Memory --------------------------------------------------------------------------------------


def test_memory_formulas() -> None:
    figures = memory_figures({**MEMINFO, "swap_total": 1_000.0, "swap_free": 400.0})
    assert figures is not None
    assert figures.usage == 800_000_000  # 2e9 - 1.2e9
    assert figures.working_set == 650_000_000  # usage - inactive_file
    assert figures.rss == 400_000_000  # anon_pages
    assert figures.cache == 310_000_000  # cached + buffers
    assert figures.swap == 600  # swap_total - swap_free
    assert figures.mapped_file == 60_000_000
    assert (figures.active_file, figures.inactive_file) == (120_000_000, 150_000_000)
    assert figures.limit == 2_000_000_000


def test_working_set_is_floored_at_zero() -> None:
    figures = memory_figures({"mem_total": 100.0, "mem_free": 90.0, "inactive_file": 50.0})
    assert figures is not None
    assert figures.working_set == 0.0
    assert memory_figures({"mem_free": 1.0}) is None


def test_memory_failures_from_vm_stat_in_both_scopes() -> None:
    faults = page_faults({"pgfault": 10.0, "pgmajfault": 3.0})
    assert faults is not None and (faults.minor_and_major, faults.major) == (10.0, 3.0)
    samples = rendered(convert(SANDBOX, guest(), pod(), T0, None, ConversionOptions())[0])
    for scope in ("container", "hierarchy"):
        assert (
            only(
                samples,
                "container_memory_failures_total",
                container="",
                id="/kubepods/burstable/pod1111-2222",
                failure_type="pgfault",
                scope=scope,
            )
            == 123_456
        )
        assert (
            only(
                samples,
                "container_memory_failures_total",
                container="",
                id="/kubepods/burstable/pod1111-2222",
                failure_type="pgmajfault",
                scope=scope,
            )
            == 78
        )


# --- Network, disk, tasks ------------------------------------------------------------------------


def test_network_items() -> None:
    [(interface, values)] = interface_figures(guest().netdev)
    assert interface == "eth0"
    assert values == {
        "container_network_receive_bytes_total": 5_000,
        "container_network_receive_packets_total": 50,
        "container_network_receive_errors_total": 1,
        "container_network_receive_packets_dropped_total": 2,
        "container_network_transmit_bytes_total": 7_000,
        "container_network_transmit_packets_total": 70,
        "container_network_transmit_errors_total": 3,
        "container_network_transmit_packets_dropped_total": 4,
    }


def test_disk_formulas_and_default_exclusion() -> None:
    figures = device_figures(guest().diskstat, ConversionOptions().disk_exclude)
    [(device, values)] = figures
    assert device == "/dev/vda"
    assert values == {
        "container_fs_reads_total": 100,
        "container_fs_writes_total": 40,
        "container_fs_reads_bytes_total": 1_024_000,  # 2000 sectors x 512
        "container_fs_writes_bytes_total": 409_600,  # 800 x 512
        "container_fs_read_seconds_total": 1.5,  # ms / 1000
        "container_fs_write_seconds_total": 2.5,
        "container_fs_io_time_seconds_total": 3.0,
        "container_fs_io_time_weighted_seconds_total": 4.5,
        "container_fs_io_current": 2,
        "container_fs_reads_merged_total": 5,
        "container_fs_writes_merged_total": 6,
        "container_fs_sector_reads_total": 2_000,
        "container_fs_sector_writes_total": 800,
    }
    kept = [d for d, _ in device_figures(guest().diskstat, re.compile(r"^vda$"))]
    assert kept == ["/dev/loop3", "/dev/ram0"]


def test_threads_is_the_task_total_not_a_limit() -> None:
    assert threads({"cur": 2.0, "max": 137.0}) == 137.0
    samples = rendered(convert(SANDBOX, guest(), pod(), T0, None, ConversionOptions())[0])
    assert only(samples, "container_threads", container="") == 137


# --- Spec and timestamps -------------------------------------------------------------------------


def test_start_time_last_seen_limit_and_timestamps() -> None:
    block, _ = convert(SANDBOX, guest(), pod(), T0, None, ConversionOptions())
    samples = rendered(block)
    assert only(samples, "container_start_time_seconds", container="", image="") == 1_760_999_000
    assert only(samples, "container_last_seen", container="", image="") == 1_761_000_000
    assert only(samples, "container_spec_memory_limit_bytes", container="") == 2_000_000_000
    for family, family_samples in samples.items():
        untimestamped = family in (
            "container_spec_memory_limit_bytes",
            "container_start_time_seconds",
        )
        for sample in family_samples:
            assert sample.timestamp_ms == (None if untimestamped else 1_761_000_000_250), family


def test_start_time_is_left_out_when_the_cri_does_not_know_it() -> None:
    block, _ = convert(SANDBOX, guest(), pod(created_at_ns=0), T0, None, ConversionOptions())
    assert "container_start_time_seconds" not in block


# --- Rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "path"),
    [
        ("/kubepods/burstable/pod1111", "/kubepods/burstable/pod1111"),
        ("kubepods/pod1111/", "/kubepods/pod1111"),
        (
            "kubepods-burstable-pod1111_2222.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1111_2222.slice",
        ),
        ("/kubepods.slice/kubepods-pod1.slice", "/kubepods.slice/kubepods-pod1.slice"),
    ],
)
def test_pod_cgroup_path(parent: str, path: str) -> None:
    assert cgroup_path(parent) == path


def test_pod_id_fallbacks() -> None:
    assert pod_id(SANDBOX, pod(cgroup_parent="")) == "/kata/pod1111-2222"
    assert pod_id(SANDBOX, pod(cgroup_parent="", uid="")) == f"/kata/{SANDBOX}"
    assert pod_id(SANDBOX, None) == f"/kata/{SANDBOX}"


def test_without_container_stats_one_vm_row_carries_cpu_and_memory() -> None:
    options = ConversionOptions(vm_container_name="the-vm")
    block, _ = convert(SANDBOX, guest(), pod(container("app", "a" * 64)), T0, None, options)
    samples = rendered(block)
    usage = {s.label("id"): s for s in samples["container_cpu_usage_seconds_total"]}
    assert set(usage) == {
        "/kubepods/burstable/pod1111-2222",
        "/kubepods/burstable/pod1111-2222/the-vm",
    }
    vm = usage["/kubepods/burstable/pod1111-2222/the-vm"]
    assert (vm.label("container"), vm.label("image"), vm.value) == (
        "the-vm",
        "registry.k8s.io/pause:3.10",
        73.0,
    )
    assert only(samples, "container_memory_working_set_bytes", container="the-vm") == 650_000_000
    # The recording rule sums image!="" rows: the VM once.
    assert sum(s.value for s in usage.values() if s.label("image")) == 73.0


def test_network_appears_once_per_pod_on_the_sandbox_row() -> None:
    for containers in ((), (container("app", "a" * 64, cpu_usage_core_ns=1),)):
        samples = rendered(
            convert(SANDBOX, guest(), pod(*containers), T0, None, ConversionOptions())[0]
        )
        received = samples["container_network_receive_bytes_total"]
        assert [
            (s.label("id"), s.label("interface"), s.label("name"), s.value) for s in received
        ] == [(f"/kubepods/burstable/pod1111-2222/{SANDBOX}", "eth0", SANDBOX, 5_000.0)]


def test_container_rows_and_the_remainder_add_up_to_the_vm() -> None:
    containers = (
        container(
            "app",
            "a" * 64,
            cpu_usage_core_ns=40_000_000_000,
            memory_working_set_bytes=300_000_000,
            memory_page_faults=100_000,
            memory_major_page_faults=50,
        ),
        container(
            "sidecar",
            "b" * 64,
            cpu_usage_core_ns=3_000_000_000,
            memory_working_set_bytes=50_000_000,
        ),
    )
    samples = rendered(
        convert(SANDBOX, guest(), pod(*containers), T0, None, ConversionOptions())[0]
    )
    usage = {
        s.label("container") or s.label("name"): s.value
        for s in samples["container_cpu_usage_seconds_total"]
        if s.label("image")
    }
    assert usage == {"app": 40.0, "sidecar": 3.0, SANDBOX: 30.0}  # 73 - 40 - 3
    assert sum(usage.values()) == 73.0
    working_set = {
        s.label("container") or s.label("name"): s.value
        for s in samples["container_memory_working_set_bytes"]
        if s.label("image")
    }
    assert working_set == {"app": 300_000_000, "sidecar": 50_000_000, SANDBOX: 300_000_000}
    assert (
        only(
            samples,
            "container_memory_failures_total",
            name=SANDBOX,
            failure_type="pgfault",
            scope="container",
        )
        == 23_456
    )
    assert values_of(samples, "container_cpu_usage_seconds_total", container="kata-vm") == []


def test_remainder_counters_never_decrease() -> None:
    options = ConversionOptions(cpu_time_unit="ms")
    app = lambda ns: container("app", "a" * 64, cpu_usage_core_ns=ns)  # noqa: E731
    block, state = convert(SANDBOX, guest(), pod(app(40_000_000_000)), T0, None, options)
    assert only(rendered(block), "container_cpu_usage_seconds_total", name=SANDBOX) == 33.0
    # The CRI's sample is newer than the shim's: the container grew by 5 s, the VM by 1 s.
    later = {**CPU_MS, "user": CPU_MS["user"] + 1_000}
    block, state = convert(
        SANDBOX, guest(cpu=later), pod(app(45_000_000_000)), T0 + 30, state, options
    )
    assert (
        only(rendered(block), "container_cpu_usage_seconds_total", name=SANDBOX) == 33.0
    )  # not 29
    # Once the VM has caught up, the remainder moves again.
    later = {**CPU_MS, "user": CPU_MS["user"] + 9_000}
    block, state = convert(
        SANDBOX, guest(cpu=later), pod(app(45_000_000_000)), T0 + 60, state, options
    )
    assert only(rendered(block), "container_cpu_usage_seconds_total", name=SANDBOX) == 37.0


def test_unknown_pod_gets_pod_and_sandbox_rows_only() -> None:
    samples = rendered(convert(SANDBOX, guest(), None, T0, None, ConversionOptions())[0])
    ids = {s.label("id") for family in samples.values() for s in family}
    assert ids == {f"/kata/{SANDBOX}", f"/kata/{SANDBOX}/{SANDBOX}"}
    images = {s.label("image") for family in samples.values() for s in family}
    assert images == {"", "kata-sandbox"}


def test_rates_between_collections() -> None:
    options = ConversionOptions(cpu_time_unit="ms")
    _, state = convert(SANDBOX, guest(), pod(), T0, None, options)
    busier = {**CPU_MS, "user": CPU_MS["user"] + 15_000}  # +15 s of CPU in 10 s
    netdev = {"eth0": {"recv_bytes": 25_000.0, "sent_bytes": 7_000.0}}
    _, state = convert(SANDBOX, guest(cpu=busier, netdev=netdev), pod(), T0 + 10, state, options)
    assert state.rates is not None
    assert state.rates.cpu_cores == 1.5
    assert state.rates.network_receive_bytes_per_second == 2_000.0
    assert state.rates.network_transmit_bytes_per_second == 0.0
    assert state.working_set_bytes == 650_000_000


def test_a_body_without_guest_families_gives_no_cpu_or_memory() -> None:
    empty = GuestSample()
    block, state = convert(SANDBOX, empty, pod(), T0, ConversionState(), ConversionOptions())
    assert not any(name.startswith(("container_cpu", "container_memory")) for name in block)
    assert "container_last_seen" in block
    assert state.cpu_unit is None and not math.isnan(T0)
