"""values.schema.json rejects wrong values (helm lint and helm template both fail), and every value
is documented in the chart README and described by the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart_support import CHART, Helm, HelmFailed

# (values override, text the error must contain: the value's path and what is wrong)
WRONG_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"tolerationz": []}, "tolerationz"),
    "unknown agent key": ({"agent": {"logLevl": "info"}}, "logLevl"),
    "log level": ({"agent": {"logLevel": "loud"}}, "agent.logLevel"),
    "port zero": ({"agent": {"port": 0}}, "agent.port"),
    "port too big": ({"agent": {"port": 70000}}, "agent.port"),
    "port as text": ({"agent": {"port": "http"}}, "agent.port"),
    "loopback listen": ({"agent": {"listenHost": "127.0.0.1"}}, "agent.listenHost"),
    "relative CRI socket": ({"agent": {"criSocket": "run/containerd.sock"}}, "agent.criSocket"),
    "CRI socket with scheme": (
        {"agent": {"criSocket": "unix:///run/containerd/containerd.sock"}},
        "agent.criSocket",
    ),
    "no sandbox dir": ({"agent": {"sandboxDirs": []}}, "agent.sandboxDirs"),
    "relative sandbox dir": ({"agent": {"sandboxDirs": ["run/kata"]}}, "agent.sandboxDirs"),
    "zero interval": ({"agent": {"metricsIntervalSeconds": 0}}, "agent.metricsIntervalSeconds"),
    "negative timeout": ({"agent": {"shimTimeoutSeconds": -1}}, "agent.shimTimeoutSeconds"),
    "fractional body size": ({"agent": {"shimMaxBodyBytes": 1.5}}, "agent.shimMaxBodyBytes"),
    "cpu time unit": ({"agent": {"guestCpuTimeUnit": "hours"}}, "agent.guestCpuTimeUnit"),
    "log json as text": ({"agent": {"logJson": "yes"}}, "agent.logJson"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    "short digest": ({"image": {"digest": "sha256:abc"}}, "image.digest"),
    "negative uid": ({"runAsUser": -1}, "runAsUser"),
    "toleration operator": ({"tolerations": [{"operator": "Maybe"}]}, "tolerations"),
    "update strategy": ({"updateStrategy": {"type": "Recreate"}}, "updateStrategy.type"),
    "memory quantity": ({"resources": {"requests": {"memory": "lots"}}}, "resources.requests"),
    "probe period": ({"livenessProbe": {"periodSeconds": 0}}, "livenessProbe.periodSeconds"),
    "scrape interval": ({"serviceMonitor": {"interval": "30 seconds"}}, "serviceMonitor.interval"),
    "relabel action": (
        {"podMonitor": {"relabelings": [{"action": "rename"}]}},
        "podMonitor.relabelings",
    ),
    "compat as text": ({"cadvisorCompat": {"enabled": "true"}}, "cadvisorCompat.enabled"),
}


def write_values(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("case", WRONG_VALUES)
def test_schema_rejects_wrong_values(helm: Helm, case: str, tmp_path: Path) -> None:
    values, expected = WRONG_VALUES[case]
    path = write_values(tmp_path, values)
    with pytest.raises(HelmFailed) as lint_error:
        helm.lint([path])
    assert expected in lint_error.value.stderr
    with pytest.raises(HelmFailed) as template_error:
        helm.template([path])
    assert "values don't meet the specifications of the schema" in template_error.value.stderr
    assert expected in template_error.value.stderr


def test_both_monitors_are_refused(helm: Helm) -> None:
    with pytest.raises(HelmFailed) as error:
        helm.template(sets=["serviceMonitor.enabled=true", "podMonitor.enabled=true"])
    assert "scraped twice" in error.value.stderr


# Maps whose keys are the user's (labels, selectors, Kubernetes objects): documented as a whole.
FREE_FORM = {
    "annotations",
    "labels",
    "nodeSelector",
    "affinity",
    "podAnnotations",
    "podLabels",
    "resources",
}


def value_paths(values: dict[str, Any], prefix: str = "", leaves_only: bool = False) -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        is_group = isinstance(value, dict) and value and key not in FREE_FORM
        if not (is_group and leaves_only):
            paths.append(path)
        if is_group:
            paths += value_paths(value, f"{path}.", leaves_only)
    return paths


def documented_paths() -> set[str]:
    readme = (CHART / "README.md").read_text()
    return set(re.findall(r"^\| `([A-Za-z][\w.]*)` \|", readme, flags=re.MULTILINE))


def schema_has(schema: dict[str, Any], path: str) -> bool:
    node = schema
    for part in path.split("."):
        properties = node.get("properties", {})
        if part not in properties:
            return False
        node = properties[part]
    return True


def test_every_value_is_documented_and_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = documented_paths()
    undocumented = []
    for path in value_paths(values, leaves_only=True):
        parts = path.split(".")
        ancestors = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if not ancestors & documented:
            undocumented.append(path)
    assert not undocumented, f"values missing from README.md: {undocumented}"
    missing = [p for p in value_paths(values) if not schema_has(schema, p)]
    assert not missing, f"values missing from values.schema.json: {missing}"


def test_readme_documents_no_value_that_does_not_exist() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    existing = set(value_paths(values))
    stale = sorted(documented_paths() - existing)
    assert not stale, f"README.md documents values that values.yaml lacks: {stale}"
