"""Fixtures for the CRI tests: a simulated CRI runtime on a real Unix socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio.testing

from pulse.sim.cri import SimulatedCri


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path is longer. Shims live at
    # <base>/vc/sbs/<64 hex>/shim-monitor.sock, so the base must stay this short.
    path = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cri_socket(short_tmp: Path) -> Path:
    return short_tmp / "cri.sock"


@pytest.fixture
def sim_cri(cri_socket: Path) -> Iterator[SimulatedCri]:
    with SimulatedCri(cri_socket) as sim:
        yield sim


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
