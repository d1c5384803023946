"""Fixtures every test directory may use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sim_dir() -> Iterator[Path]:
    """A short base directory for simulated sandboxes.

    Unix socket paths are limited to 107 bytes; `<base>/vc/sbs/<64 hex>/shim-monitor.sock`
    leaves about 15 for the base, which pytest's tmp_path exceeds.
    """
    path = Path(tempfile.mkdtemp(prefix="kp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
