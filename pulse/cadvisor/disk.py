"""Disk: per guest block device, named /dev/<name> so the dashboards' device regex matches.

Sectors are 512 bytes whatever the device's block size (the kernel's diskstats unit); the time
counters are milliseconds; in_progress is instantaneous. Devices matching the exclude pattern
(default: ram, loop, fd and sr devices) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from pulse.cadvisor import families as f

SECTOR_BYTES = 512.0
MILLISECONDS = 1000.0


def _item(name: str, scale: float = 1.0) -> Callable[[Mapping[str, float]], float | None]:
    def value(items: Mapping[str, float]) -> float | None:
        raw = items.get(name)
        return None if raw is None else raw * scale

    return value


def _ms(name: str) -> Callable[[Mapping[str, float]], float | None]:
    return _item(name, 1.0 / MILLISECONDS)


# cAdvisor family <- formula over kata_guest_diskstat items
DISK_FORMULAS: Mapping[str, Callable[[Mapping[str, float]], float | None]] = {
    f.FS_READS: _item("reads"),
    f.FS_WRITES: _item("writes"),
    f.FS_READ_BYTES: _item("sectors_read", SECTOR_BYTES),
    f.FS_WRITE_BYTES: _item("sectors_written", SECTOR_BYTES),
    f.FS_READ_SECONDS: _ms("time_reading"),
    f.FS_WRITE_SECONDS: _ms("time_writing"),
    f.FS_IO_TIME: _ms("time_in_progress"),
    f.FS_IO_TIME_WEIGHTED: _ms("weighted_time_in_progress"),
    f.FS_IO_CURRENT: _item("in_progress"),
    f.FS_READS_MERGED: _item("merged"),
    f.FS_WRITES_MERGED: _item("writes_merged"),
    f.FS_SECTOR_READS: _item("sectors_read"),
    f.FS_SECTOR_WRITES: _item("sectors_written"),
}


def device_label(disk: str) -> str:
    return disk if disk.startswith("/") else f"/dev/{disk}"


def device_figures(
    diskstat: Mapping[str, Mapping[str, float]], exclude: re.Pattern[str]
) -> list[tuple[str, dict[str, float]]]:
    """[(device label, {cAdvisor family: value})] for the devices kept, sorted by name."""
    figures = []
    for disk, items in sorted(diskstat.items()):
        if exclude.search(disk):
            continue
        values = {
            family: value
            for family, formula in DISK_FORMULAS.items()
            if (value := formula(items)) is not None
        }
        figures.append((device_label(disk), values))
    return figures


def total_bytes(figures: list[tuple[str, dict[str, float]]]) -> tuple[float, float]:
    """(read, written) bytes over the devices kept."""
    read = sum(values.get(f.FS_READ_BYTES, 0.0) for _, values in figures)
    written = sum(values.get(f.FS_WRITE_BYTES, 0.0) for _, values in figures)
    return read, written
