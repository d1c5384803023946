"""helm lint, and every rendered manifest validated offline against a schema.

Core kinds go through kubernetes-validate --strict (the Kubernetes OpenAPI schemas, unknown fields
rejected). It has no schema for the Prometheus Operator's ServiceMonitor/PodMonitor: it only warns
that it could not find one. Those are validated against
schemas/prometheus-operator-monitors.schema.json, written for these tests from the field names and
types of the prometheus-operator CRDs, with closed objects so that a misspelt field fails (the API
server would silently prune it).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.chart_support import (
    ALL_ON_POD_MONITOR,
    ALL_ON_SERVICE_MONITOR,
    Helm,
    Manifest,
    only,
)

SCHEMAS = Path(__file__).parent / "schemas"
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor")
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", "1.37.0")

SCENARIOS: dict[str, tuple[list[Path], list[str]]] = {
    "defaults": ([], []),
    "all-on-servicemonitor": ([ALL_ON_SERVICE_MONITOR], []),
    "all-on-podmonitor": ([ALL_ON_POD_MONITOR], []),
    "compat-with-default-values": (
        [],
        ["serviceMonitor.enabled=true", "cadvisorCompat.enabled=true"],
    ),
}


def render(helm: Helm, scenario: str) -> list[Manifest]:
    values_files, sets = SCENARIOS[scenario]
    return helm.template(values_files, sets)


def kubernetes_validate(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "kubernetes-validate"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the test extra (kubernetes-validate)")
    return subprocess.run(
        [str(binary), "--strict", "--kubernetes-version", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_manifests(manifests: list[Manifest], directory: Path) -> list[Path]:
    paths = []
    for index, manifest in enumerate(manifests):
        path = directory / f"{index:02d}-{manifest['kind']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def monitor_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "prometheus-operator-monitors.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict_passes(helm: Helm, scenario: str) -> None:
    values_files, sets = SCENARIOS[scenario]
    helm.lint(values_files, sets)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_manifests_validate_strictly(
    helm: Helm, scenario: str, version: str, tmp_path: Path
) -> None:
    core = [m for m in render(helm, scenario) if m["kind"] not in MONITOR_KINDS]
    result = kubernetes_validate(write_manifests(core, tmp_path), version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind without a schema is only a warning there: make sure every object was really checked.
    assert "Couldn't find schema" not in output, output
    assert output.count(" passed for resource ") == len(core), output


def test_kubernetes_validate_rejects_a_misspelt_field(helm: Helm, tmp_path: Path) -> None:
    daemonset = copy.deepcopy(only(render(helm, "defaults"), "DaemonSet"))
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["securityContex"] = container.pop("securityContext")
    result = kubernetes_validate(write_manifests([daemonset], tmp_path), KUBE_VERSIONS[0])
    assert result.returncode != 0
    assert "securityContex" in result.stdout + result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_monitors_match_the_operator_schema(
    helm: Helm, scenario: str, monitor_validator: jsonschema.Draft202012Validator
) -> None:
    monitors = [m for m in render(helm, scenario) if m["kind"] in MONITOR_KINDS]
    if scenario != "defaults":
        assert len(monitors) == 1, [m["kind"] for m in monitors]
    for monitor in monitors:
        errors = [e.message for e in monitor_validator.iter_errors(monitor)]
        assert not errors, errors


@pytest.mark.parametrize(
    ("scenario", "kind", "mutate", "expected"),
    [
        (
            "all-on-servicemonitor",
            "ServiceMonitor",
            lambda m: m["spec"]["endpoints"][0].update(honourLabels=True),
            "honourLabels",
        ),
        (
            "all-on-podmonitor",
            "PodMonitor",
            lambda m: m["spec"]["podMetricsEndpoints"][0]["relabelings"][0].update(action="rename"),
            "rename",
        ),
        (
            "all-on-servicemonitor",
            "ServiceMonitor",
            lambda m: m["spec"]["endpoints"][0].update(interval="30 seconds"),
            "30 seconds",
        ),
        (
            "all-on-podmonitor",
            "PodMonitor",
            lambda m: m["spec"].pop("selector"),
            "selector",
        ),
    ],
)
def test_operator_schema_rejects_wrong_monitors(
    helm: Helm,
    monitor_validator: jsonschema.Draft202012Validator,
    scenario: str,
    kind: str,
    mutate: object,
    expected: str,
) -> None:
    monitor = copy.deepcopy(only(render(helm, scenario), kind))
    assert callable(mutate)
    mutate(monitor)
    errors = list(monitor_validator.iter_errors(monitor))
    assert errors
    assert any(expected in str(error) for error in errors), [e.message for e in errors]


LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")  # fmt: skip
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def label_maps(manifest: Manifest) -> list[dict[str, str]]:
    maps = [manifest["metadata"].get("labels", {})]
    spec = manifest.get("spec", {})
    if manifest["kind"] == "DaemonSet":
        maps += [spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]]
    if manifest["kind"] in MONITOR_KINDS:
        maps.append(spec["selector"]["matchLabels"])
    if manifest["kind"] == "Service":
        maps.append(spec["selector"])
    return maps


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels_are_valid_kubernetes_labels(helm: Helm, scenario: str) -> None:
    # The OpenAPI schemas only say "string": the API server's label syntax is checked here.
    for manifest in render(helm, scenario):
        for labels in label_maps(manifest):
            for key, value in labels.items():
                assert LABEL_NAME.match(key), (manifest["kind"], key)
                assert isinstance(value, str), (manifest["kind"], key, value)
                assert LABEL_VALUE.match(value), (manifest["kind"], key, value)


def test_kube_version_floor_is_enforced(helm: Helm) -> None:
    result = helm.run(
        "template", "x", str(ALL_ON_SERVICE_MONITOR.parents[1]), "--kube-version", "1.26.0"
    )
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr
