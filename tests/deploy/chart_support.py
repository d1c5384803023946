"""Helpers shared by the chart tests: chart paths and a thin wrapper around the helm binary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kata-pulse"
ALL_ON_SERVICE_MONITOR = CHART / "ci" / "all-on-servicemonitor-values.yaml"
ALL_ON_POD_MONITOR = CHART / "ci" / "all-on-podmonitor-values.yaml"
RELEASE = "pulse"
NAMESPACE = "kata-monitoring"

Manifest = dict[str, Any]


class HelmFailed(Exception):
    def __init__(self, command: list[str], stderr: str) -> None:
        super().__init__(f"{' '.join(command)} failed:\n{stderr}")
        self.stderr = stderr


@dataclass(frozen=True)
class Helm:
    binary: Path
    env: Mapping[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=dict(self.env),
            timeout=120,
            check=False,
        )

    def _values_args(self, values_files: Iterable[Path], sets: Iterable[str]) -> list[str]:
        args: list[str] = []
        for path in values_files:
            args += ["--values", str(path)]
        for assignment in sets:
            args += ["--set", assignment]
        return args

    def template_text(
        self, values_files: Iterable[Path] = (), sets: Iterable[str] = (), chart: Path = CHART
    ) -> str:
        command = [
            "template", RELEASE, str(chart), "--namespace", NAMESPACE,
            *self._values_args(values_files, sets),
        ]  # fmt: skip
        result = self.run(*command)
        if result.returncode != 0:
            raise HelmFailed(command, result.stderr)
        return result.stdout

    def template(
        self, values_files: Iterable[Path] = (), sets: Iterable[str] = ()
    ) -> list[Manifest]:
        text = self.template_text(values_files, sets)
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]

    def lint(self, values_files: Iterable[Path] = (), sets: Iterable[str] = ()) -> None:
        command = ["lint", str(CHART), "--strict", *self._values_args(values_files, sets)]
        result = self.run(*command)
        if result.returncode != 0:
            raise HelmFailed(command, result.stdout + result.stderr)


def only(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['kind'] for m in manifests]}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)
