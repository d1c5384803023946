"""Fixtures for the Prometheus tests: Debian's promtool and prometheus, and a real helm.

Never skipped: a missing program fails the test, since CI must run them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The chart tests' helm fixture: the same real binary, found the same way.
from tests.deploy.conftest import helm as helm


def _program(name: str) -> Path:
    found = shutil.which(name) or f"/usr/bin/{name}"
    path = Path(found)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found: install the Debian package `prometheus`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _program("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return _program("prometheus")
