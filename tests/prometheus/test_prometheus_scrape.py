"""issue 6: a real Prometheus, scraping the agent the way the chart's ServiceMonitor makes it
scrape (cadvisorCompat on) and evaluating the kube-prometheus rules, records every Kata pod's CPU
and working set under the kubelet's job.

The monitor is rendered by the real helm and translated into a static scrape_config
(servicemonitor.py) with the labels the Operator's own relabelings would give the target (the
agent pod's namespace, pod, container...): with honor_labels the Kata pods' own labels must win.
kube_pod_info comes from a second job scraping a static page, as kube-state-metrics serves it.
"""

from __future__ import annotations

import math
import subprocess
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import yaml

from pulse.sim.bodies import Flavour
from tests.deploy.chart_support import CHART, Helm, Manifest, only
from tests.prometheus.exposition import parse_samples, sample_line
from tests.prometheus.node import (
    NODE_NAME,
    SimulatedNode,
    cpu_starts,
    kube_pod_info_labels,
    report_container_cpu_forever,
    simulated_node,
)
from tests.prometheus.prometheus_server import (
    PrometheusServer,
    running_prometheus,
    serving_exposition,
)
from tests.prometheus.rules_files import (
    CPU_IRATE_RECORD,
    CPU_RATE_RECORD,
    memory_record,
    rule_files,
)
from tests.prometheus.servicemonitor import (
    UnknownField,
    operator_target_labels,
    relabel_config,
    scrape_config,
)

T = TypeVar("T")
FLAVOURS = (Flavour.GO, Flavour.GO, Flavour.RUST, Flavour.FIRECRACKER, Flavour.NO_GUEST)
COMPAT_SETS = ["cadvisorCompat.enabled=true"]
AGENT_POD = "pulse-kata-pulse-x7k2p"  # the agent's own pod, as service discovery would name it
KUBELET = 'job="kubelet", metrics_path="/metrics/cadvisor"'
WS_RECORD = memory_record("container_memory_working_set_bytes")
MIB = 1024**2
MIN_SAMPLES = 5  # per series, before the rates are compared
TIME_LIMIT = 45.0


def monitor_scrape_config(manifests: list[Manifest], kind: str, target: str) -> dict[str, Any]:
    """The chart's monitor of `kind`, as a scrape job for `target`."""
    monitor = only(manifests, kind)
    daemonset = only(manifests, "DaemonSet")
    pod_template = daemonset["spec"]["template"]
    if kind == "ServiceMonitor":
        service = only(manifests, "Service")
        job_label_source, service_name = service["metadata"]["labels"], service["metadata"]["name"]
    else:
        job_label_source, service_name = pod_template["metadata"]["labels"], None
    labels = operator_target_labels(
        monitor,
        job_label_source=job_label_source,
        namespace=daemonset["metadata"]["namespace"],
        pod=AGENT_POD,
        container=pod_template["spec"]["containers"][0]["name"],
        service=service_name,
    )
    return scrape_config(monitor, target=target, target_labels=labels, scrape_interval="1s")


def prometheus_config(kubelet_job: dict[str, Any], kube_state_metrics: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files()],
        "scrape_configs": [
            kubelet_job,
            {  # as kube-prometheus scrapes kube-state-metrics
                "job_name": "kube-state-metrics",
                "honor_labels": True,
                "static_configs": [{"targets": [kube_state_metrics]}],
            },
        ],
    }


@dataclass(frozen=True)
class KataPod:
    namespace: str
    name: str
    containers: frozenset[str]
    with_guest: bool
    ncpu: int
    mem_total: int
    receive_bytes_per_second: float  # the simulated guest's mean eth0 receive rate

    @property
    def recorded_containers(self) -> frozenset[str]:
        """The `container` values of its CPU records: the app containers, plus the sandbox row
        (container="") holding the VM's remainder when there are guest figures."""
        return self.containers | ({""} if self.with_guest else set())


def kata_pods(node: SimulatedNode) -> dict[tuple[str, str], KataPod]:
    pods = {}
    for box in node.known_to_cri():
        pod = box.pod
        pods[(pod.namespace, pod.name)] = KataPod(
            pod.namespace,
            pod.name,
            frozenset(c.name for c in pod.containers),
            box.flavour is not Flavour.NO_GUEST,
            box.guest.profile.ncpu,
            box.guest.profile.mem_total,
            box.guest.profile.net_rx_rate,
        )
    return pods


def by_pod_and_container(series: list[Any]) -> dict[tuple[str, str], dict[str, float]]:
    grouped: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for item in series:
        labels = item.labels
        grouped[(labels["namespace"], labels["pod"])][labels.get("container", "")] = item.value
    return dict(grouped)


async def poll(probe: Callable[[], Awaitable[tuple[T | None, str]]], deadline: float) -> T:
    """`probe` (giving a result, or None and why not yet) until it gives a result; fails at
    `deadline` (trio time) with the last reason."""
    reason = "never probed"
    while trio.current_time() < deadline:
        result, reason = await probe()
        if result is not None:
            return result
        await trio.sleep(0.25)
    raise AssertionError(f"not within {TIME_LIMIT} s: {reason}")


Records = dict[str, dict[tuple[str, str], dict[str, float]]]


async def complete_records(
    prometheus: PrometheusServer, pods: dict[tuple[str, str], KataPod]
) -> tuple[Records | None, str]:
    """Every record, for every Kata pod and container, from enough samples."""
    counts = await prometheus.query(
        f'count_over_time(container_cpu_usage_seconds_total{{{KUBELET}, image=""}}[5m])'
    )
    guest_pods = {key for key, pod in pods.items() if pod.with_guest}
    enough = {(c.labels["namespace"], c.labels["pod"]) for c in counts if c.value >= MIN_SAMPLES}
    if not guest_pods <= enough:
        return None, f"fewer than {MIN_SAMPLES} samples of the VM rows of {guest_pods - enough}"
    records = {
        name: by_pod_and_container(await prometheus.query(name))
        for name in (CPU_RATE_RECORD, CPU_IRATE_RECORD, WS_RECORD)
    }
    for key, pod in pods.items():
        for name in (CPU_RATE_RECORD, CPU_IRATE_RECORD):
            found = set(records[name].get(key, {}))
            if found != pod.recorded_containers:
                return None, f"{name} of {key}: containers {found}, not {pod.recorded_containers}"
        if not records[WS_RECORD].get(key):
            return None, f"no {WS_RECORD} for {key}"
    return records, ""


async def check_series_labels(
    prometheus: PrometheusServer, pods: dict[tuple[str, str], KataPod], target: str
) -> None:
    raw = await prometheus.query(f"container_cpu_usage_seconds_total{{{KUBELET}}}")
    assert {(s.labels["namespace"], s.labels["pod"]) for s in raw} == set(pods)
    for series in raw:
        labels = series.labels
        assert labels["instance"] == target, labels
        # honor_labels: the Kata pod's own labels, not the agent pod's, and nothing renamed.
        assert not [key for key in labels if key.startswith("exported_")], labels
        if "image" not in labels:  # the pod row: no container, not the agent's container name
            assert "container" not in labels, labels
    records = await prometheus.query(f"{CPU_RATE_RECORD} or {WS_RECORD}")
    assert records and all(r.labels["node"] == NODE_NAME for r in records)
    own_job = yaml.safe_load((CHART / "values.yaml").read_text())["cadvisorCompat"]["ownMetricsJob"]
    own = await prometheus.query("kata_pulse_sandbox_up")
    assert own and {s.labels["job"] for s in own} == {own_job}
    assert {s.value for s in own} == {1.0}
    up = {s.labels["job"]: s.value for s in await prometheus.query("up")}
    assert up == {"kubelet": 1.0, "kube-state-metrics": 1.0}


def check_plausible(
    records: Records,
    pods: dict[tuple[str, str], KataPod],
) -> None:
    for key, pod in pods.items():
        for name in (CPU_RATE_RECORD, CPU_IRATE_RECORD):
            values = records[name][key]
            assert all(value >= 0 for value in values.values()), (name, key, values)
            assert 0 < math.fsum(values.values()) < pod.ncpu, (name, key, values, pod.ncpu)
        working_set = records[WS_RECORD][key]
        assert all(0 <= value <= pod.mem_total for value in working_set.values()), working_set
        assert MIB < math.fsum(working_set.values()) <= pod.mem_total, (key, working_set, pod)


async def check_counted_once(
    prometheus: PrometheusServer, pods: dict[tuple[str, str], KataPod]
) -> None:
    """In one evaluation, a pod's image!="" rows add up to its VM row: the VM's CPU once."""

    def cpu_of(rows: str) -> str:
        return f"sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{{rows}}}[5m]))"

    # One query, so one evaluation time for both sides. With a few seconds of samples in a 5m
    # window, rate() is the increase extrapolated up to the evaluation time over 300 s: two
    # queries a fraction of a second apart differ by 10% (measured), though their rows agree.
    parts, vm = cpu_of(f'{KUBELET}, image!=""'), cpu_of(f'{KUBELET}, image="", container=""')
    ratios = await prometheus.query(f"{parts} / {vm}")
    by_pod = {(s.labels["namespace"], s.labels["pod"]): s.value for s in ratios}
    assert set(by_pod) == {key for key, pod in pods.items() if pod.with_guest}
    for key, ratio in by_pod.items():
        # Not exactly 1: when the containers' figures arrive just before a collection that
        # comes early, the sandbox row's remainder is held for that collection (see
        # node.CONTAINERS_SHARE_OF_GROWTH). Counting the VM twice would give 2, missing the
        # remainder about 0.05.
        assert math.isclose(ratio, 1.0, rel_tol=0.05), (key, ratio)


async def check_network(prometheus: PrometheusServer, pods: dict[tuple[str, str], KataPod]) -> None:
    """The dashboards sum network by pod with no container filter: one series per interface
    (eth0; lo left out), on one row, at the rate the guest receives."""
    per_pod = await prometheus.query(
        f"sum by (namespace, pod) (irate(container_network_receive_bytes_total{{{KUBELET}}}[5m]))"
    )
    rows = await prometheus.query(
        f"count by (namespace, pod) (container_network_receive_bytes_total{{{KUBELET}}})"
    )
    assert {(r.labels["namespace"], r.labels["pod"]): r.value for r in rows} == {
        key: 1.0 for key, pod in pods.items() if pod.with_guest
    }
    for series in per_pod:
        pod = pods[(series.labels["namespace"], series.labels["pod"])]
        # The simulated rate swings by ±50% around its mean over minutes.
        low, high = 0.45 * pod.receive_bytes_per_second, 1.55 * pod.receive_bytes_per_second
        assert low < series.value < high, (pod.name, series.value, pod.receive_bytes_per_second)


async def check_collection_timestamps(
    prometheus: PrometheusServer, node: SimulatedNode, pod: KataPod, deadline: float
) -> None:
    """honor_timestamps: a sample's time in Prometheus is the agent's collection time, for
    several collections in a row (a scrape time can equal a collection time by chance)."""
    selector = f'container_memory_working_set_bytes{{{KUBELET}, pod="{pod.name}", image=""}}'
    matched: set[int] = set()

    async def same_collections() -> tuple[bool | None, str]:
        served = [
            s.timestamp_ms
            for s in parse_samples(await node.get_text("/metrics/cadvisor"))
            if s.name == "container_memory_working_set_bytes"
            and s.label("pod") == pod.name
            and s.label("image") == ""
        ]
        stored = await prometheus.query(f"timestamp({selector})")
        if len(served) != 1 or len(stored) != 1 or served[0] is None:
            return None, f"series of {pod.name}: served {served}, stored {stored}"
        stored_ms = round(stored[0].value * 1000)
        if stored_ms == served[0]:
            matched.add(stored_ms)
        if len(matched) >= 3:
            return True, ""
        # Not scraped yet, or a newer collection since.
        return None, f"{pod.name}: Prometheus has {stored_ms}, the agent serves {served[0]}"

    await poll(same_collections, deadline)


async def test_prometheus_records_kata_pods_scraped_like_the_chart(
    sim_dir: Path, tmp_path: Path, prometheus_binary: Path, helm: Helm
) -> None:
    manifests = helm.template(sets=["serviceMonitor.enabled=true", *COMPAT_SETS])
    async with (
        simulated_node(
            sim_dir, FLAVOURS, seed=53, metrics_interval=1.0, cri_sync_interval=0.5
        ) as node,
        trio.open_nursery() as nursery,
    ):
        await node.wait_until_described(limit=20.0)
        # The runtime reports more often than the agent syncs (0.5 s), so that every sync
        # brings new container figures: two collections (0.9 s apart at the least) never carry
        # the same ones, and the last two samples' irate is never 0.
        nursery.start_soon(report_container_cpu_forever, node, cpu_starts(node), 0.2)
        pods = kata_pods(node)
        target = node.agent.url.removeprefix("http://")
        kubelet_job = monitor_scrape_config(manifests, "ServiceMonitor", target)
        page = "".join(
            sample_line("kube_pod_info", info, 1.0) + "\n" for info in kube_pod_info_labels(node)
        )
        with serving_exposition(page) as kube_state_metrics:
            config = prometheus_config(kubelet_job, kube_state_metrics)
            async with running_prometheus(prometheus_binary, tmp_path, config) as prometheus:
                deadline = trio.current_time() + TIME_LIMIT
                try:
                    records = await poll(lambda: complete_records(prometheus, pods), deadline)
                    await check_series_labels(prometheus, pods, target)
                    check_plausible(records, pods)
                    await check_counted_once(prometheus, pods)
                    await check_network(prometheus, pods)
                    with_guest = next(pod for pod in pods.values() if pod.with_guest)
                    await check_collection_timestamps(prometheus, node, with_guest, deadline)
                except AssertionError as error:
                    raise AssertionError(
                        f"{error}\nPrometheus log:\n{prometheus.log_tail()}"
                    ) from None
        nursery.cancel_scope.cancel()


def test_both_monitors_translate_to_the_same_valid_scrape_job(
    helm: Helm, promtool: Path, tmp_path: Path
) -> None:
    """The PodMonitor relabels exactly as the ServiceMonitor the Prometheus test runs with, and
    both translations, with every option of the chart's CI values on, are valid configs."""
    service_monitor = helm.template(sets=["serviceMonitor.enabled=true", *COMPAT_SETS])
    pod_monitor = helm.template(sets=["podMonitor.enabled=true", *COMPAT_SETS])
    by_service = monitor_scrape_config(service_monitor, "ServiceMonitor", "127.0.0.1:8090")
    by_pod = monitor_scrape_config(pod_monitor, "PodMonitor", "127.0.0.1:8090")
    for key in ("relabel_configs", "metric_relabel_configs", "honor_labels", "honor_timestamps"):
        assert by_service[key] == by_pod[key], key
    assert by_service["metrics_path"] == by_pod["metrics_path"] == "/metrics/cadvisor"
    all_on = [
        monitor_scrape_config(helm.template([CHART / "ci" / name]), kind, "127.0.0.1:9190")
        for name, kind in (
            ("all-on-servicemonitor-values.yaml", "ServiceMonitor"),
            ("all-on-podmonitor-values.yaml", "PodMonitor"),
        )
    ]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(
        yaml.safe_dump({"scrape_configs": [by_service, by_pod, *all_on]}, sort_keys=False)
    )
    result = subprocess.run(
        [str(promtool), "check", "config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(UnknownField):
        relabel_config({"action": "replace", "targetLabel": "job", "replacment": "x"})
