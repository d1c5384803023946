"""The few numbers of a shim body that the cAdvisor conversion needs, and nothing else.

A collector keeps one `GuestSample` per sandbox instead of the parsed body: a few hundred bytes
instead of a few hundred kilobytes. Extraction asks the parser only for the label values it
needs (see `Family.index`), which keeps it far cheaper than reading every sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pulse.expo.parser import ParsedBody

CPU_FAMILY = "kata_guest_cpu_time"
MEMINFO_FAMILY = "kata_guest_meminfo"
VMSTAT_FAMILY = "kata_guest_vm_stat"
NETDEV_FAMILY = "kata_guest_netdev_stat"
DISKSTAT_FAMILY = "kata_guest_diskstat"
TASKS_FAMILY = "kata_guest_tasks"
# The families the conversion reads, each with the labels `extract_guest` looks samples up by
# (a family proved to have exactly these is indexed without further checks).
GUEST_SHAPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        CPU_FAMILY: ("cpu", "item"),
        MEMINFO_FAMILY: ("item",),
        VMSTAT_FAMILY: ("item",),
        NETDEV_FAMILY: ("interface", "item"),
        DISKSTAT_FAMILY: ("disk", "item"),
        TASKS_FAMILY: ("item",),
    }
)

# Every time a CPU spends, once: guest and guest_nice are already inside user and nice.
CPU_TIME_ITEMS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
MEMINFO_ITEMS = (
    "mem_total", "mem_free", "buffers", "cached", "active_file", "inactive_file", "anon_pages",
    "mapped", "swap_total", "swap_free",
)  # fmt: skip
VMSTAT_ITEMS = ("pgfault", "pgmajfault")
NETDEV_ITEMS = (
    "recv_bytes", "recv_packets", "recv_errs", "recv_drop",
    "sent_bytes", "sent_packets", "sent_errs", "sent_drop",
)  # fmt: skip
DISKSTAT_ITEMS = (
    "reads", "merged", "sectors_read", "time_reading", "writes", "writes_merged",
    "sectors_written", "time_writing", "in_progress", "time_in_progress",
    "weighted_time_in_progress",
)  # fmt: skip
LOOPBACK = "lo"
TOTAL_CPU = "total"


@dataclass(frozen=True, slots=True)
class GuestSample:
    """Guest figures of one collection, in the shim's units; empty where the body had none."""

    cpu: Mapping[str, float] = field(default_factory=dict)  # cpu="total" items
    ncpu: int = 0  # guest CPUs: the per-CPU rows of kata_guest_cpu_time
    meminfo: Mapping[str, float] = field(default_factory=dict)  # bytes
    vm_stat: Mapping[str, float] = field(default_factory=dict)
    netdev: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # without lo
    diskstat: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    tasks: Mapping[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.cpu or self.meminfo or self.netdev or self.diskstat or self.tasks)

    def has_every_figure_of(self, other: GuestSample) -> bool:
        """Whether every figure `other` has is here too, whatever the values."""
        return (
            self.ncpu >= other.ncpu
            and self.cpu.keys() >= other.cpu.keys()
            and self.meminfo.keys() >= other.meminfo.keys()
            and self.vm_stat.keys() >= other.vm_stat.keys()
            and self.tasks.keys() >= other.tasks.keys()
            and _has_every_item(self.netdev, other.netdev)
            and _has_every_item(self.diskstat, other.diskstat)
        )


def _has_every_item(
    mine: Mapping[str, Mapping[str, float]], theirs: Mapping[str, Mapping[str, float]]
) -> bool:
    return mine.keys() >= theirs.keys() and all(
        mine[device].keys() >= items.keys() for device, items in theirs.items()
    )


def _nested(index: Mapping[tuple[str, ...], float]) -> dict[str, dict[str, float]]:
    nested: dict[str, dict[str, float]] = {}
    for (outer, inner), value in index.items():
        nested.setdefault(outer, {})[inner] = value
    return nested


def extract_guest(parsed: ParsedBody, disk_exclude: re.Pattern[str] | None = None) -> GuestSample:
    """Pick the conversion's inputs out of a parsed body.

    `disk_exclude`, when given, leaves excluded devices out already here (the conversion
    excludes them anyway); that spares reading the ram and loop devices of every guest.
    """
    families = parsed.families
    cpu: dict[str, float] = {}
    ncpu = 0
    if (cpu_family := families.get(CPU_FAMILY)) is not None:
        per_cpu = _nested(cpu_family.index("cpu", "item", where={"item": CPU_TIME_ITEMS}))
        cpu = per_cpu.pop(TOTAL_CPU, {})
        ncpu = len(per_cpu)

    meminfo: Mapping[str, float] = {}
    if (meminfo_family := families.get(MEMINFO_FAMILY)) is not None:
        meminfo = {
            k: v for (k,), v in meminfo_family.index("item", where={"item": MEMINFO_ITEMS}).items()
        }

    vm_stat: Mapping[str, float] = {}
    if (vm_stat_family := families.get(VMSTAT_FAMILY)) is not None:
        vm_stat = {
            k: v for (k,), v in vm_stat_family.index("item", where={"item": VMSTAT_ITEMS}).items()
        }

    netdev: Mapping[str, Mapping[str, float]] = {}
    if (netdev_family := families.get(NETDEV_FAMILY)) is not None:
        netdev = _nested(netdev_family.index("interface", "item", where={"item": NETDEV_ITEMS}))
        netdev.pop(LOOPBACK, None)

    diskstat: Mapping[str, Mapping[str, float]] = {}
    if (disk_family := families.get(DISKSTAT_FAMILY)) is not None:
        where: dict[str, tuple[str, ...]] = {"item": DISKSTAT_ITEMS}
        if disk_exclude is not None:
            devices = disk_family.label_values("disk", where=("item", "reads"))
            where["disk"] = tuple(disk for disk in devices if not disk_exclude.search(disk))
        diskstat = _nested(disk_family.index("disk", "item", where=where))

    tasks: Mapping[str, float] = {}
    if (tasks_family := families.get(TASKS_FAMILY)) is not None:
        tasks = {k: v for (k,), v in tasks_family.index("item").items()}

    return GuestSample(cpu, ncpu, meminfo, vm_stat, netdev, diskstat, tasks)
