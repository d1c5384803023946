"""One sandbox's guest figures -> its cAdvisor rows, and the state carried to the next collection.

Pure: the same arguments always give the same block and state. The state holds what a single
collection cannot know: the CPU time unit (found from two samples), the remainder values
already emitted (counters must never go back), and the previous totals (for live rates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pulse.cadvisor import disk, network, spec
from pulse.cadvisor import families as f
from pulse.cadvisor.cpu import (
    ASSUMED_UNIT,
    MIN_DETECTION_INTERVAL,
    CpuSeconds,
    UnitProbe,
    cpu_seconds,
    detect_unit,
    time_sum,
)
from pulse.cadvisor.guest import GuestSample
from pulse.cadvisor.memory import MemoryFigures, PageFaults, memory_figures, page_faults
from pulse.cadvisor.render import BlockWriter, LabelTexts
from pulse.cadvisor.rows import Row, container_rows, pod_row, sandbox_row, vm_row
from pulse.cadvisor.tasks import threads
from pulse.expo.text import Block
from pulse.model import ContainerStats, PodMeta

AUTO_UNIT = "auto"
DEFAULT_DISK_EXCLUDE = r"^(ram|loop|fd|sr)\d+$"
_FAULT_TYPES = (
    ("pgfault", "container"),
    ("pgfault", "hierarchy"),
    ("pgmajfault", "container"),
    ("pgmajfault", "hierarchy"),
)


@dataclass(frozen=True, slots=True)
class ConversionOptions:
    cpu_time_unit: str = AUTO_UNIT  # auto | ms | ticks | seconds
    disk_exclude: re.Pattern[str] = field(default=re.compile(DEFAULT_DISK_EXCLUDE))
    vm_container_name: str = "kata-vm"


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second figures over the interval between the last two collections."""

    cpu_cores: float | None = None
    network_receive_bytes_per_second: float | None = None
    network_transmit_bytes_per_second: float | None = None
    disk_read_bytes_per_second: float | None = None
    disk_write_bytes_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    collected_at: float
    cpu_usage_seconds: float | None
    network_bytes: tuple[float, float] | None  # (received, transmitted)
    disk_bytes: tuple[float, float] | None  # (read, written)


@dataclass(frozen=True, slots=True)
class ConversionState:
    cpu_unit: str | None = None  # None while auto detection waits for a second sample
    unit_probe: UnitProbe | None = None
    totals: Totals | None = None
    rates: Rates | None = None
    working_set_bytes: float | None = None
    # The sandbox row's counters as last emitted; a remainder never goes below these.
    remainder: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def effective_cpu_unit(self) -> str:
        return self.cpu_unit or ASSUMED_UNIT


def convert(
    sandbox_id: str,
    guest: GuestSample,
    pod: PodMeta | None,
    collected_at: float,
    state: ConversionState | None,
    options: ConversionOptions,
    label_texts: LabelTexts | None = None,
) -> tuple[Block, ConversionState]:
    """`label_texts`, the sandbox's memo of label texts, only saves work: the same block."""
    previous = state or ConversionState()
    cpu_unit, unit_probe = _cpu_unit(guest, collected_at, previous, options)
    unit_changed = (cpu_unit or ASSUMED_UNIT) != previous.effective_cpu_unit
    cpu = cpu_seconds(guest.cpu, cpu_unit or ASSUMED_UNIT)
    memory = memory_figures(guest.meminfo)
    faults = page_faults(guest.vm_stat)
    interfaces = network.interface_figures(guest.netdev)
    devices = disk.device_figures(guest.diskstat, options.disk_exclude)
    thread_count = threads(guest.tasks)

    writer = BlockWriter(spec.timestamp_ms(collected_at), label_texts)
    last_seen = spec.last_seen_seconds(collected_at)
    pod_start = spec.start_time_seconds(pod.created_at_ns) if pod is not None else None
    containers = container_rows(sandbox_id, pod)

    vm_totals = pod_row(sandbox_id, pod)
    _write_vm(writer, vm_totals, cpu, memory, faults, devices, thread_count)
    _write_lifetime(writer, vm_totals, pod_start, last_seen)

    sandbox = sandbox_row(sandbox_id, pod)
    for interface, values in interfaces:
        for family, value in values.items():
            writer.add(family, sandbox, value, (("interface", interface),))
    remainder: Mapping[str, float] = {} if unit_changed else previous.remainder
    if containers:
        remainder = _write_remainder(
            writer, sandbox, cpu, memory, faults, [stats for _, _, stats in containers], remainder
        )
    _write_lifetime(writer, sandbox, pod_start, last_seen)

    for row, container, stats in containers:
        _write_container(writer, row, stats)
        _write_lifetime(writer, row, spec.start_time_seconds(container.created_at_ns), last_seen)

    if not containers and pod is not None and (cpu is not None or memory is not None):
        vm = vm_row(sandbox_id, pod, options.vm_container_name)
        _write_vm(writer, vm, cpu, memory, faults, devices, thread_count)
        _write_lifetime(writer, vm, pod_start, last_seen)

    totals = Totals(
        collected_at,
        cpu.usage if cpu is not None else None,
        network.total_bytes(guest.netdev) if guest.netdev else None,
        disk.total_bytes(devices) if devices else None,
    )
    new_state = ConversionState(
        cpu_unit=cpu_unit,
        unit_probe=unit_probe,
        totals=totals,
        rates=None if unit_changed else _rates(previous.totals, totals),
        working_set_bytes=memory.working_set if memory is not None else None,
        remainder=MappingProxyType(dict(remainder)),
    )
    return writer.block(), new_state


def _cpu_unit(
    guest: GuestSample, collected_at: float, previous: ConversionState, options: ConversionOptions
) -> tuple[str | None, UnitProbe | None]:
    """(the unit now known, or None; the probe to keep for detection)."""
    if options.cpu_time_unit != AUTO_UNIT:
        return options.cpu_time_unit, None
    if previous.cpu_unit is not None:
        return previous.cpu_unit, None
    if not guest.cpu or guest.ncpu <= 0:
        return None, previous.unit_probe
    probe = UnitProbe(collected_at, time_sum(guest.cpu), guest.ncpu)
    earlier = previous.unit_probe
    if earlier is None or collected_at <= earlier.collected_at:
        return None, earlier or probe
    detected = detect_unit(earlier, probe)
    if detected is not None:
        return detected, None
    comparable = probe.ncpu == earlier.ncpu and probe.time_sum >= earlier.time_sum
    if comparable and probe.collected_at - earlier.collected_at < MIN_DETECTION_INTERVAL:
        return None, earlier  # wait for a longer interval from the same first sample
    return None, probe  # an unusable pair: start again from this sample


def _write_lifetime(writer: BlockWriter, row: Row, start: float | None, last_seen: float) -> None:
    writer.add(f.START_TIME, row, start)
    writer.add(f.LAST_SEEN, row, last_seen)


def _write_vm(
    writer: BlockWriter,
    row: Row,
    cpu: CpuSeconds | None,
    memory: MemoryFigures | None,
    faults: PageFaults | None,
    devices: list[tuple[str, dict[str, float]]],
    thread_count: float | None,
) -> None:
    """The VM's own figures: on the pod row, and on the VM row when there are no containers."""
    if cpu is not None:
        writer.add(f.CPU_USAGE, row, cpu.usage, (("cpu", "total"),))
        writer.add(f.CPU_USER, row, cpu.user)
        writer.add(f.CPU_SYSTEM, row, cpu.system)
    if memory is not None:
        writer.add(f.MEMORY_USAGE, row, memory.usage)
        writer.add(f.MEMORY_WORKING_SET, row, memory.working_set)
        writer.add(f.MEMORY_RSS, row, memory.rss)
        writer.add(f.MEMORY_CACHE, row, memory.cache)
        writer.add(f.MEMORY_SWAP, row, memory.swap)
        writer.add(f.MEMORY_MAPPED_FILE, row, memory.mapped_file)
        writer.add(f.MEMORY_ACTIVE_FILE, row, memory.active_file)
        writer.add(f.MEMORY_INACTIVE_FILE, row, memory.inactive_file)
        writer.add(f.SPEC_MEMORY_LIMIT, row, memory.limit)
    if faults is not None:
        _write_faults(writer, row, faults.minor_and_major, faults.major)
    for device, values in devices:
        for family, value in values.items():
            writer.add(family, row, value, (("device", device),))
    writer.add(f.THREADS, row, thread_count)


def _write_faults(
    writer: BlockWriter, row: Row, pgfault: float | None, pgmajfault: float | None
) -> None:
    for failure_type, scope in _FAULT_TYPES:
        value = pgfault if failure_type == "pgfault" else pgmajfault
        writer.add(
            f.MEMORY_FAILURES, row, value, (("failure_type", failure_type), ("scope", scope))
        )


def _write_container(writer: BlockWriter, row: Row, stats: ContainerStats) -> None:
    usage_ns = stats.cpu_usage_core_ns
    writer.add(
        f.CPU_USAGE, row, usage_ns / 1e9 if usage_ns is not None else None, (("cpu", "total"),)
    )
    writer.add(f.MEMORY_USAGE, row, _float(stats.memory_usage_bytes))
    writer.add(f.MEMORY_WORKING_SET, row, _float(stats.memory_working_set_bytes))
    writer.add(f.MEMORY_RSS, row, _float(stats.memory_rss_bytes))
    writer.add(f.MEMORY_SWAP, row, _float(stats.memory_swap_bytes))
    if stats.memory_page_faults is not None:
        _write_faults(
            writer, row, _float(stats.memory_page_faults), _float(stats.memory_major_page_faults)
        )


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _sum(values: list[int | None]) -> float:
    return float(sum(value for value in values if value is not None))


def _write_remainder(
    writer: BlockWriter,
    row: Row,
    cpu: CpuSeconds | None,
    memory: MemoryFigures | None,
    faults: PageFaults | None,
    stats: list[ContainerStats],
    floors: Mapping[str, float],
) -> dict[str, float]:
    """The VM's figures minus what its containers account for, on the sandbox row, so that
    summing a pod's rows gives the VM's figures once. Counters never go below what was
    emitted before (the containers' and the VM's figures are not sampled at the same instant).
    """
    emitted: dict[str, float] = {}

    def counter(key: str, vm_value: float, accounted: float) -> float:
        # Rounded to the nanosecond (CPU) or unit (faults) the inputs have: a difference of
        # floats must not print as 5332.740000001.
        value = max(0.0, round(vm_value - accounted, 9), floors.get(key, 0.0))
        emitted[key] = value
        return value

    if cpu is not None:
        accounted = _sum([s.cpu_usage_core_ns for s in stats]) / 1e9
        writer.add(f.CPU_USAGE, row, counter("cpu", cpu.usage, accounted), (("cpu", "total"),))
    if memory is not None:
        gauges: tuple[tuple[str, float, list[int | None]], ...] = (
            (f.MEMORY_USAGE, memory.usage, [s.memory_usage_bytes for s in stats]),
            (f.MEMORY_WORKING_SET, memory.working_set, [s.memory_working_set_bytes for s in stats]),
            (f.MEMORY_RSS, memory.rss, [s.memory_rss_bytes for s in stats]),
            (f.MEMORY_CACHE, memory.cache, []),
            (f.MEMORY_SWAP, memory.swap, [s.memory_swap_bytes for s in stats]),
        )
        for family, vm_value, accounted_values in gauges:
            writer.add(family, row, max(0.0, round(vm_value - _sum(accounted_values), 3)))
    if faults is not None:
        minor = counter(
            "pgfault", faults.minor_and_major, _sum([s.memory_page_faults for s in stats])
        )
        major = counter(
            "pgmajfault", faults.major, _sum([s.memory_major_page_faults for s in stats])
        )
        _write_faults(writer, row, minor, major)
    return emitted


def _rates(before: Totals | None, now: Totals) -> Rates | None:
    if before is None or now.collected_at <= before.collected_at:
        return None
    elapsed = now.collected_at - before.collected_at

    def rate(earlier: float | None, later: float | None) -> float | None:
        if earlier is None or later is None or later < earlier:
            return None
        return (later - earlier) / elapsed

    def pair(
        earlier: tuple[float, float] | None, later: tuple[float, float] | None
    ) -> tuple[float | None, float | None]:
        if earlier is None or later is None:
            return None, None
        return rate(earlier[0], later[0]), rate(earlier[1], later[1])

    received, transmitted = pair(before.network_bytes, now.network_bytes)
    read, written = pair(before.disk_bytes, now.disk_bytes)
    return Rates(
        rate(before.cpu_usage_seconds, now.cpu_usage_seconds), received, transmitted, read, written
    )
