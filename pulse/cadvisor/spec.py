"""Spec and lifetime: start time from the CRI, last seen = collection time, memory limit."""

from __future__ import annotations

import math

NANOSECONDS = 1e9


def start_time_seconds(created_at_ns: int) -> float | None:
    """Unix seconds, whole as cAdvisor's are; None when the CRI did not say."""
    if created_at_ns <= 0:
        return None
    return float(created_at_ns // int(NANOSECONDS))


def last_seen_seconds(collected_at: float) -> float:
    return float(math.floor(collected_at))


def timestamp_ms(collected_at: float) -> int:
    return int(collected_at * 1000)
