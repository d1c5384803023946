"""What the Prometheus Operator makes of the chart's ServiceMonitor or PodMonitor: a plain
scrape_config.

The Operator turns each endpoint into a scrape job: its own relabelings first (they give the
target `job` from the label named by `jobLabel` (the Service's for a ServiceMonitor, the pod's
for a PodMonitor), and `namespace`, `service`, `pod`, `container`, `endpoint` from service
discovery), then the endpoint's `relabelings`, and its `metricRelabelings` as
metric_relabel_configs. Without Kubernetes service discovery the target, and the labels the
Operator's own relabelings would give it, are static here; everything the chart renders is
translated key by key, and a key this translation does not know fails the test rather than
being dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}
ENDPOINT_KEYS = {
    "port",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
}
ENDPOINTS_FIELD = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
JOB_PREFIX = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor"}


class UnknownField(ValueError):
    pass


def endpoint_of(monitor: Mapping[str, Any], index: int = 0) -> Mapping[str, Any]:
    endpoint: Mapping[str, Any] = monitor["spec"][ENDPOINTS_FIELD[monitor["kind"]]][index]
    return endpoint


def relabel_config(rule: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(rule) - set(RELABEL_KEYS)
    if unknown:
        raise UnknownField(f"relabeling fields not translated: {sorted(unknown)}")
    translated = {RELABEL_KEYS[key]: value for key, value in rule.items()}
    if "action" in translated:
        translated["action"] = str(translated["action"]).lower()
    return translated


def operator_target_labels(
    monitor: Mapping[str, Any],
    *,
    job_label_source: Mapping[str, str],
    namespace: str,
    pod: str,
    container: str,
    service: str | None = None,
    endpoint_index: int = 0,
) -> dict[str, str]:
    """The labels the Operator's own relabelings give a target of this monitor.

    `job_label_source`: the labels `jobLabel` names one of (the Service's or the pod's).
    """
    labels = {
        "namespace": namespace,
        "pod": pod,
        "container": container,
        "endpoint": str(endpoint_of(monitor, endpoint_index)["port"]),
    }
    if service is not None:
        labels["service"] = service
    job_label = monitor["spec"].get("jobLabel")
    if job_label:
        labels["job"] = job_label_source[job_label]
    return labels


def scrape_config(
    monitor: Mapping[str, Any],
    *,
    target: str,
    target_labels: Mapping[str, str],
    scrape_interval: str,
    endpoint_index: int = 0,
) -> dict[str, Any]:
    """One endpoint of a monitor as a static scrape_config.

    `scrape_interval` replaces the endpoint's interval (and timeout): the chart's 30 s would
    make a test wait minutes for two samples.
    """
    endpoint = endpoint_of(monitor, endpoint_index)
    unknown = set(endpoint) - ENDPOINT_KEYS
    if unknown:
        raise UnknownField(f"endpoint fields not translated: {sorted(unknown)}")
    metadata = monitor["metadata"]
    prefix = JOB_PREFIX[monitor["kind"]]
    return {
        "job_name": f"{prefix}/{metadata['namespace']}/{metadata['name']}/{endpoint_index}",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "honor_timestamps": bool(endpoint.get("honorTimestamps", True)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "static_configs": [{"targets": [target], "labels": dict(target_labels)}],
        "relabel_configs": [relabel_config(rule) for rule in endpoint.get("relabelings", [])],
        "metric_relabel_configs": [
            relabel_config(rule) for rule in endpoint.get("metricRelabelings", [])
        ],
    }
