"""Memory: cAdvisor's memory figures from the guest's /proc/meminfo and /proc/vmstat (bytes).

usage = mem_total - mem_free (all memory in use, page cache included, as cgroup usage is);
working set = usage - inactive_file, floored at 0; rss = anon_pages; cache = cached + buffers;
swap = swap_total - swap_free; mapped_file = mapped. The VM's memory size is its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    usage: float
    working_set: float
    rss: float
    cache: float
    swap: float
    mapped_file: float
    active_file: float
    inactive_file: float
    limit: float


@dataclass(frozen=True, slots=True)
class PageFaults:
    minor_and_major: float  # cAdvisor's pgfault counts every fault, as the kernel's does
    major: float


def memory_figures(meminfo: Mapping[str, float]) -> MemoryFigures | None:
    if "mem_total" not in meminfo:
        return None

    def item(name: str) -> float:
        return meminfo.get(name, 0.0)

    usage = max(0.0, item("mem_total") - item("mem_free"))
    return MemoryFigures(
        usage=usage,
        working_set=max(0.0, usage - item("inactive_file")),
        rss=item("anon_pages"),
        cache=item("cached") + item("buffers"),
        swap=max(0.0, item("swap_total") - item("swap_free")),
        mapped_file=item("mapped"),
        active_file=item("active_file"),
        inactive_file=item("inactive_file"),
        limit=item("mem_total"),
    )


def page_faults(vm_stat: Mapping[str, float]) -> PageFaults | None:
    if "pgfault" not in vm_stat:
        return None
    return PageFaults(vm_stat["pgfault"], vm_stat.get("pgmajfault", 0.0))
