"""CPU: cAdvisor's cumulative CPU seconds from the guest's cpu="total" times, and their unit.

usage = user + nice + system + irq + softirq; user = user + nice; system = system + irq +
softirq. guest and guest_nice are never added: the kernel already counts them inside user and
nice. iowait, idle and steal are not CPU the workload used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pulse.cadvisor.guest import CPU_TIME_ITEMS

USER_HZ = 100  # the guest kernel's clock ticks per second (Kata's guest kernels: 100)
UNITS_PER_SECOND: Mapping[str, float] = {"ms": 1000.0, "ticks": float(USER_HZ), "seconds": 1.0}
ASSUMED_UNIT = "ms"  # Kata 2.5 and later, used until the unit is known
# Detection: the observed rate must be within this factor of a unit's rate.
DETECTION_TOLERANCE = 2.0
MIN_DETECTION_INTERVAL = 5.0  # seconds between the two samples compared


@dataclass(frozen=True, slots=True)
class CpuSeconds:
    usage: float
    user: float
    system: float


@dataclass(frozen=True, slots=True)
class UnitProbe:
    """The first of the two samples that identify a sandbox's CPU time unit."""

    collected_at: float
    time_sum: float  # sum over CPU_TIME_ITEMS of cpu="total", in the shim's unit
    ncpu: int


def cpu_seconds(cpu: Mapping[str, float], unit: str) -> CpuSeconds | None:
    if not cpu:
        return None
    scale = UNITS_PER_SECOND[unit]

    def item(name: str) -> float:
        return cpu.get(name, 0.0)

    user = item("user") + item("nice")
    system = item("system") + item("irq") + item("softirq")
    return CpuSeconds((user + system) / scale, user / scale, system / scale)


def time_sum(cpu: Mapping[str, float]) -> float:
    return sum(cpu.get(name, 0.0) for name in CPU_TIME_ITEMS)


def detect_unit(earlier: UnitProbe, later: UnitProbe) -> str | None:
    """The unit whose rate (units per CPU and second) the growth of the time sum matches.

    All time of all CPUs is spent in exactly one of the summed states, so the sum grows by
    CPUs x seconds x units per second. None when it cannot tell (too short an interval, CPUs
    hot-plugged in between, a counter that went back, or a rate far from every unit's).
    """
    elapsed = later.collected_at - earlier.collected_at
    grown = later.time_sum - earlier.time_sum
    if elapsed < MIN_DETECTION_INTERVAL or later.ncpu != earlier.ncpu or later.ncpu <= 0:
        return None
    if grown <= 0:
        return None
    rate = grown / (elapsed * later.ncpu)
    unit, expected = min(UNITS_PER_SECOND.items(), key=lambda pair: abs(math.log(rate / pair[1])))
    return unit if abs(math.log(rate / expected)) <= math.log(DETECTION_TOLERANCE) else None
