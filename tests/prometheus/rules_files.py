"""The kube-prometheus rule groups that read container_* (copied from shared/reference), and
the text forms promtool's unit-test files use."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

RULES_DIR = Path(__file__).resolve().parent / "kube-prometheus-rules"

CPU_RATE_RECORD = "node_namespace_pod_container:container_cpu_usage_seconds_total:sum_rate5m"
CPU_IRATE_RECORD = "node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate"
MEMORY_FAMILIES = (
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_swap",
)
CPU_FAMILY = "container_cpu_usage_seconds_total"


def memory_record(family: str) -> str:
    return f"node_namespace_pod_container:{family}"


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml"))


def recorded_names() -> set[str]:
    names = set()
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def series_text(name: str, labels: Mapping[str, str]) -> str:
    """A series in PromQL notation; JSON string escapes are valid Go string escapes."""
    inner = ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def values_text(values: Sequence[float | None]) -> str:
    """promtool's `values`: repr() round-trips every float exactly; `_` is a missing sample."""
    return " ".join("_" if value is None else repr(value) for value in values)
