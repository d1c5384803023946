"""Fixtures for the Prometheus tests: Debian's promtool and prometheus, and a real helm.

Never skipped: a missing program fails the test, since CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.chart_support import REPO, Helm


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


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    explicit = os.environ.get("HELM")
    if explicit:
        binary = Path(explicit)
    else:
        result = subprocess.run(
            [str(REPO / "scripts" / "get-helm")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"no helm binary: `scripts/get-helm` failed:\n{result.stderr}")
        binary = Path(result.stdout.strip())
    home = tmp_path_factory.mktemp("helm-home")
    # helm's caches and config stay out of the user's home: nothing is fetched.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(binary, env)
