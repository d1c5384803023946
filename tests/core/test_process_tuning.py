"""Process tuning: large buffers go back to the system when freed (tune_malloc), so does memory
freed between live blocks (the memory trimmer), and the objects made at start are left out of
the garbage collector's full passes."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading

import pytest
import trio
import trio.testing

from pulse.malloc import MALLOC_ENVIRONMENT, run_memory_trimmer, tune_malloc

# Each script runs in a child process: malloc's settings are per process, and the test run's
# must stay as they are. Each prints a resident-memory difference in KiB.
_PRELUDE = """
import sys
from pulse.malloc import memory_trimmer, tune_malloc

def resident_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
"""

# A 24 MiB buffer is made and freed three times; what stays resident afterwards.
_FREE_SCRIPT = """
if sys.argv[1] == "tuned":
    assert tune_malloc({})
before = resident_kib()
for _ in range(3):
    buffer = bytes(24 << 20)  # zero-filled, so every page is touched
    del buffer
print(resident_kib() - before)
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt"
)


def _child_bytes(script: str, mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, mode], check=True, capture_output=True, text=True
    ).stdout
    return int(out) << 10


def _kept_after_freeing(mode: str) -> int:
    return _child_bytes(_FREE_SCRIPT, mode)


@glibc_only
def test_freed_large_buffers_stay_resident_without_the_tuning() -> None:
    # The control: glibc moves such buffers to the heap after the first is freed, and keeps the
    # heap's free memory. (If this ever fails, the tuning below proves nothing.)
    assert _kept_after_freeing("default") >= 16 << 20


@glibc_only
def test_freed_large_buffers_go_back_to_the_system_with_the_tuning() -> None:
    assert _kept_after_freeing("tuned") < 4 << 20


@pytest.mark.parametrize("name", MALLOC_ENVIRONMENT)
def test_the_operators_malloc_settings_win(name: str) -> None:
    assert tune_malloc({name: "65536"}) is False


# Blocks of 4 KiB (malloc's, not Python's small-object allocator): nine in ten are freed, so
# the heap is left full of holes between live blocks, which only a trim gives back.
_TRIM_SCRIPT = """
assert tune_malloc({})
blocks = [bytes(4096) for _ in range(20_000)]
live = blocks[::10]
del blocks
before = resident_kib()
if sys.argv[1] == "trim":
    trim = memory_trimmer()
    assert trim is not None
    trim()
print(before - resident_kib())
"""


def _given_back(mode: str) -> int:
    return _child_bytes(_TRIM_SCRIPT, mode)


@glibc_only
def test_memory_freed_between_live_blocks_stays_resident_until_a_trim() -> None:
    assert _given_back("none") < 4 << 20  # the control: 70 MiB of holes stay
    assert _given_back("trim") > 40 << 20


async def test_the_trimmer_trims_every_period_in_a_worker_thread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports, trims = trio.open_memory_channel[tuple[float, int]](10)

    def trim() -> None:
        # Reported from the thread: a task waiting on a worker thread counts as blocked, so
        # the clock could jump past a trim that was only counted.
        thread = threading.get_ident()
        trio.from_thread.run_sync(lambda: reports.send_nowait((trio.current_time(), thread)))

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(run_memory_trimmer, trim, 2.0)
        seen = [await trims.receive() for _ in range(4)]
        nursery.cancel_scope.cancel()
    assert [at - start for at, _ in seen] == pytest.approx([2.0, 4.0, 6.0, 8.0])
    assert threading.get_ident() not in {thread for _, thread in seen}


_FREEZE_SCRIPT = """
import gc, weakref
from pulse.cli import freeze_startup_objects

class Node:
    pass

cycle = Node()
cycle.self = cycle
gone = weakref.ref(cycle)
del cycle
kept = Node()
frozen = freeze_startup_objects()
assert gone() is None, "garbage made before start was frozen instead of collected"
assert frozen == gc.get_freeze_count() > 1000, frozen
assert not any(obj is kept for obj in gc.get_objects()), "a startup object is still collected"
print(frozen)
"""


def test_startup_objects_are_frozen_after_the_garbage_is_collected() -> None:
    # A child process: freezing is for the life of the process.
    subprocess.run([sys.executable, "-c", _FREEZE_SCRIPT], check=True)
