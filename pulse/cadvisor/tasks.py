"""Tasks: the guest's number of existing tasks (threads included) as container_threads.

It is the fourth field of the guest's /proc/loadavg (kata_guest_tasks item="max"): despite the
item's name, a count of tasks, not a limit.
"""

from __future__ import annotations

from collections.abc import Mapping


def threads(tasks: Mapping[str, float]) -> float | None:
    return tasks.get("max")
