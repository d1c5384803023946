"""What PromQL's rate() and irate() give, computed here, to know the recording rules' results.

Written from Prometheus' documented behaviour (promql/functions.go, extrapolatedRate and
instantValue), in the same order of floating-point operations, so that the values promtool
computes can be compared exactly: `promtool test rules` compares sample values for equality.
Prometheus 2.x selects a range [t - range, t]; 3.x selects (t - range, t] and extrapolates in a
slightly different order.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Point = tuple[int, float]  # (milliseconds, value)


@dataclass(frozen=True, slots=True)
class Semantics:
    major_version: int

    @property
    def left_open_ranges(self) -> bool:
        return self.major_version >= 3


def semantics_of(program: Path) -> Semantics:
    """The PromQL semantics of a promtool or prometheus binary, from its version line."""
    result = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    match = re.search(r"version (\d+)\.", result.stdout + result.stderr)
    if match is None:
        raise ValueError(f"no version in {program} --version: {result.stdout}{result.stderr}")
    return Semantics(int(match.group(1)))


def in_range(points: Sequence[Point], at_ms: int, range_ms: int, how: Semantics) -> list[Point]:
    start = at_ms - range_ms
    if how.left_open_ranges:
        return [(t, v) for t, v in points if start < t <= at_ms]
    return [(t, v) for t, v in points if start <= t <= at_ms]


def rate(points: Sequence[Point], at_ms: int, range_ms: int, how: Semantics) -> float | None:
    """rate(series[range]) evaluated at `at_ms`; None when Prometheus gives no sample."""
    selected = in_range(points, at_ms, range_ms, how)
    if len(selected) < 2:
        return None
    (first_t, first_v), (last_t, last_v) = selected[0], selected[-1]
    result = last_v - first_v
    previous = first_v
    for _, value in selected[1:]:
        if value < previous:  # a counter reset: the counter went on from 0
            result += previous
        previous = value
    range_start, range_end = at_ms - range_ms, at_ms
    to_start = float(first_t - range_start) / 1000
    to_end = float(range_end - last_t) / 1000
    sampled = float(last_t - first_t) / 1000
    average = sampled / float(len(selected) - 1)
    threshold = average * 1.1
    range_seconds = range_ms / 1000
    if how.left_open_ranges:
        if to_start >= threshold:
            to_start = average / 2
        to_zero = to_start
        if result > 0 and first_v >= 0:
            to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
        if to_end >= threshold:
            to_end = average / 2
        factor = (sampled + to_start + to_end) / sampled
    else:
        if result > 0 and first_v >= 0:
            to_zero = sampled * (first_v / result)
            if to_zero < to_start:
                to_start = to_zero
        extrapolated = sampled
        extrapolated += to_start if to_start < threshold else average / 2
        extrapolated += to_end if to_end < threshold else average / 2
        factor = extrapolated / sampled
    factor /= range_seconds
    return result * factor


def irate(points: Sequence[Point], at_ms: int, range_ms: int, how: Semantics) -> float | None:
    """irate(series[range]) evaluated at `at_ms`: the last two samples' slope."""
    selected = in_range(points, at_ms, range_ms, how)
    if len(selected) < 2:
        return None
    (previous_t, previous_v), (last_t, last_v) = selected[-2], selected[-1]
    result = last_v - previous_v if last_v >= previous_v else last_v
    interval_ms = last_t - previous_t
    if interval_ms == 0:
        return None
    return result / (float(interval_ms) / 1000)
