"""issue 3: the kube-prometheus recording rules, run by `promtool test rules` over what the agent
serves, give each Kata pod its VM's CPU and memory, counted once.

Six scrapes of the real agent's /metrics/cadvisor (simulated sandboxes and CRI), each after a
fresh collection of every sandbox, become promtool input series one minute apart, with the
labels the kubelet job gives (job="kubelet", metrics_path="/metrics/cadvisor") and a
kube_pod_info per pod as kube-state-metrics exposes it. The expected records are computed here
from the scraped numbers (rate() is modelled in promql.py), not written down.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

from pulse.sim.bodies import Flavour
from tests.prometheus import promql
from tests.prometheus.exposition import Sample, only_named, parse_samples
from tests.prometheus.node import (
    SimulatedNode,
    advance_container_cpu,
    cpu_starts,
    kube_pod_info_labels,
    simulated_node,
)
from tests.prometheus.promtool import run_rule_tests
from tests.prometheus.rules_files import (
    CPU_FAMILY,
    CPU_IRATE_RECORD,
    CPU_RATE_RECORD,
    MEMORY_FAMILIES,
    memory_record,
    recorded_names,
    rule_files,
    series_text,
    values_text,
)

FLAVOURS = (
    Flavour.GO,
    Flavour.GO,
    Flavour.RUST,
    Flavour.FIRECRACKER,
    Flavour.GO_TICKS,  # CPU in USER_HZ ticks: scraped once the agent has detected the unit
    Flavour.NO_GUEST,  # no guest figures: only the CRI's container rows
)
SCRAPES = 6
STEP_MS = 60_000
RANGE_MS = 300_000  # the rules' [5m]
EVAL_MS = (SCRAPES - 1) * STEP_MS
KUBELET_JOB = {"job": "kubelet", "metrics_path": "/metrics/cadvisor", "instance": "10.0.0.11:8090"}
KSM_JOB = {"job": "kube-state-metrics", "instance": "10.0.0.12:8080"}
RULE_INPUTS = (CPU_FAMILY, *MEMORY_FAMILIES)
SeriesKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    samples: list[Sample]
    collected_ms: dict[str, int]  # pod name -> its collection's timestamp


def is_vm_row(sample: Sample) -> bool:
    """The pod row: the VM's totals, which the rules must leave out (image="")."""
    return sample.label("image") == "" and sample.label("container") == ""


def cpu_rows_by_pod(samples: Iterable[Sample]) -> dict[str, tuple[float | None, list[float]]]:
    """pod -> (the VM's CPU seconds, the CPU seconds of its image!="" rows)."""
    vms: dict[str, float] = {}
    parts: dict[str, list[float]] = defaultdict(list)
    for sample in only_named(samples, CPU_FAMILY):
        if is_vm_row(sample):
            vms[sample.label("pod")] = sample.value
        else:
            parts[sample.label("pod")].append(sample.value)
    return {pod: (vms.get(pod), parts[pod]) for pod in vms.keys() | parts.keys()}


def not_yet_comparable(
    node: SimulatedNode, samples: list[Sample], previous: Scrape | None
) -> list[str]:
    """Why this scrape cannot be the next one yet (empty: it can)."""
    waiting = []
    stamps = collection_times(samples)
    for box in node.known_to_cri():
        stamp = stamps.get(box.pod.name)
        if stamp is None or (previous is not None and stamp <= previous.collected_ms[box.pod.name]):
            waiting.append(f"{box.pod.name}: no new collection")
    # The containers' rows show the CRI's latest figures...
    served = {s.label("name"): s.value for s in only_named(samples, CPU_FAMILY)}
    for pod in node.cri.pods().values():
        for container in pod.containers:
            assert container.stats is not None and container.stats.cpu_usage_core_ns is not None
            wanted = container.stats.cpu_usage_core_ns / 1e9
            if served.get(container.container_id) != wanted:
                waiting.append(f"{pod.name}/{container.name}: CRI figures not synced yet")
    # ...and a pod's image!="" rows add up to its VM: the sandbox row holds the VM's remainder.
    # Right after the containers' figures jump, the remainder is held (a counter never goes
    # back) until the VM's own counter has caught up: such a scrape is not used.
    for pod_name, (vm, parts) in cpu_rows_by_pod(samples).items():
        if vm is not None and abs(math.fsum(parts) - vm) > 1e-6:
            waiting.append(f"{pod_name}: rows add up to {math.fsum(parts)}, VM {vm}")
    return waiting


def collection_times(samples: Iterable[Sample]) -> dict[str, int]:
    stamps: dict[str, int] = {}
    for sample in samples:
        if sample.timestamp_ms is not None:
            pod = sample.label("pod")
            stamps[pod] = max(stamps.get(pod, 0), sample.timestamp_ms)
    return stamps


async def next_scrape(node: SimulatedNode, previous: Scrape | None, limit: float = 15.0) -> Scrape:
    waiting: list[str] = []
    with trio.move_on_after(limit):
        while True:
            text = await node.get_text("/metrics/cadvisor")
            samples = only_named(parse_samples(text), *RULE_INPUTS)
            waiting = not_yet_comparable(node, samples, previous)
            if not waiting:
                return Scrape(samples, collection_times(samples))
            await trio.sleep(0.05)
    raise AssertionError(f"no usable scrape within {limit} s: {waiting[:5]}")


def series_over_scrapes(scrapes: list[Scrape]) -> dict[SeriesKey, list[float | None]]:
    """Each series (non-empty labels, as Prometheus stores it) -> its value in every scrape."""
    series: dict[SeriesKey, list[float | None]] = defaultdict(lambda: [None] * len(scrapes))
    for index, scrape in enumerate(scrapes):
        for sample in scrape.samples:
            key = sample.series
            assert series[key][index] is None, f"duplicate series {key}"
            series[key][index] = sample.value
    return dict(series)


def points(values: list[float | None]) -> list[promql.Point]:
    return [(index * STEP_MS, value) for index, value in enumerate(values) if value is not None]


@dataclass
class Expected:
    cpu_rate: dict[frozenset[tuple[str, str]], float]
    cpu_irate: dict[frozenset[tuple[str, str]], float]
    memory: dict[str, dict[frozenset[tuple[str, str]], float]]  # family -> record labels -> value


def expected_records(
    series: dict[SeriesKey, list[float | None]],
    nodes: dict[tuple[str, str], str],
    how: promql.Semantics,
) -> Expected:
    expected = Expected({}, {}, {family: {} for family in MEMORY_FAMILIES})
    seen: set[tuple[str, str, str]] = set()
    for (name, label_set), values in series.items():
        labels = dict(label_set)
        if labels.get("image", "") == "":
            continue
        pod_key = (labels.get("namespace", ""), labels.get("pod", ""))
        if pod_key not in nodes:  # kube_pod_info does not know it: the join drops it
            continue
        node = nodes[pod_key]
        if name == CPU_FAMILY:
            group = (*pod_key, labels.get("container", ""))
            # The rule SUMS by (namespace, pod, container): two rows would both count.
            assert group not in seen, f"two CPU series for {group}"
            seen.add(group)
            record = {"namespace": pod_key[0], "pod": pod_key[1], "node": node}
            if labels.get("container"):
                record["container"] = labels["container"]
            rate = promql.rate(points(values), EVAL_MS, RANGE_MS, how)
            irate = promql.irate(points(values), EVAL_MS, RANGE_MS, how)
            if rate is not None and irate is not None:
                expected.cpu_rate[frozenset(record.items())] = rate
                expected.cpu_irate[frozenset(record.items())] = irate
        elif name in MEMORY_FAMILIES:
            present = [value for value in values if value is not None]
            record = {**labels, **KUBELET_JOB, "node": node}
            expected.memory[name][frozenset(record.items())] = present[-1]
    return expected


def by_pod(records: dict[frozenset[tuple[str, str]], float]) -> dict[str, list[float]]:
    grouped: dict[str, list[float]] = defaultdict(list)
    for labels, value in records.items():
        grouped[dict(labels)["pod"]].append(value)
    return dict(grouped)


def vm_values(
    series: dict[SeriesKey, list[float | None]], family: str
) -> dict[str, list[float | None]]:
    """pod -> the values of its VM row (image="", container="") for a family."""
    return {
        dict(labels)["pod"]: values
        for (name, labels), values in series.items()
        if name == family and "image" not in dict(labels) and "container" not in dict(labels)
    }


def container_values(
    series: dict[SeriesKey, list[float | None]], family: str
) -> dict[str, list[float]]:
    """pod -> the last values of its app containers' rows (those with a container name)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for (name, labels), values in series.items():
        label_map = dict(labels)
        if name == family and label_map.get("container") and values[-1] is not None:
            grouped[label_map["pod"]].append(values[-1])
    return dict(grouped)


def check_counted_once(
    node: SimulatedNode,
    series: dict[SeriesKey, list[float | None]],
    expected: Expected,
    how: promql.Semantics,
) -> None:
    """What the records must add up to per pod, from the raw rows alone."""
    vm_cpu = vm_values(series, CPU_FAMILY)
    no_guest = {box.pod.name for box in node.known_to_cri() if box.flavour is Flavour.NO_GUEST}
    assert set(vm_cpu) == {box.pod.name for box in node.known_to_cri()} - no_guest
    for records, function in ((expected.cpu_rate, promql.rate), (expected.cpu_irate, promql.irate)):
        grouped = by_pod(records)
        assert set(grouped) == {box.pod.name for box in node.known_to_cri()}
        for pod, values in vm_cpu.items():
            vm = function(points(values), EVAL_MS, RANGE_MS, how)
            assert vm is not None and vm > 0
            # The VM's CPU, once: not with the pod row, not short of the sandbox remainder.
            assert math.isclose(math.fsum(grouped[pod]), vm, rel_tol=1e-9), (pod, grouped[pod], vm)
            assert all(value > 0 for value in grouped[pod]), (pod, grouped[pod])
    for box in node.known_to_cri():
        if box.flavour is Flavour.NO_GUEST:
            containers = {
                dict(labels).get("container")
                for labels in expected.cpu_rate
                if dict(labels)["pod"] == box.pod.name
            }
            assert containers == {c.name for c in box.pod.containers}
    containers_memory = {family: container_values(series, family) for family in MEMORY_FAMILIES}
    for family in MEMORY_FAMILIES:
        grouped = by_pod(expected.memory[family])
        for pod, values in vm_values(series, family).items():
            vm = values[-1]
            assert vm is not None
            accounted = math.fsum(containers_memory[family].get(pod, []))
            if family == "container_memory_cache":
                # Containers report no cache: it stays with the sandbox row, whole.
                assert accounted == 0
            # The sandbox row holds VM - containers, floored at 0.
            assert math.isclose(math.fsum(grouped[pod]), max(vm, accounted), abs_tol=0.01), (
                family,
                pod,
                grouped[pod],
                vm,
                accounted,
            )


def promtool_test_file(
    series: dict[SeriesKey, list[float | None]],
    pod_infos: Iterable[dict[str, str]],
    expected: Expected,
) -> dict[str, Any]:
    inputs = [
        {
            "series": series_text(name, {**dict(labels), **KUBELET_JOB}),
            "values": values_text(values),
        }
        for (name, labels), values in sorted(series.items(), key=lambda item: repr(item[0]))
    ]
    inputs += [
        {
            "series": series_text("kube_pod_info", {**info, **KSM_JOB}),
            "values": values_text([1.0] * SCRAPES),
        }
        for info in pod_infos
    ]

    def expectation(record: str, values: dict[frozenset[tuple[str, str]], float]) -> dict[str, Any]:
        samples = [
            {"labels": series_text(record, dict(labels)), "value": value}
            for labels, value in sorted(values.items(), key=lambda item: sorted(item[0]))
        ]
        return {"expr": record, "eval_time": f"{EVAL_MS // 1000}s", "exp_samples": samples}

    tests = [
        expectation(CPU_RATE_RECORD, expected.cpu_rate),
        expectation(CPU_IRATE_RECORD, expected.cpu_irate),
        *(expectation(memory_record(f), expected.memory[f]) for f in MEMORY_FAMILIES),
    ]
    return {
        "rule_files": [str(path) for path in rule_files()],
        "evaluation_interval": f"{STEP_MS // 1000}s",
        "tests": [
            {
                "name": "Kata pods through the kube-prometheus container rules",
                "interval": f"{STEP_MS // 1000}s",
                "input_series": inputs,
                "promql_expr_test": tests,
            }
        ],
    }


async def test_recording_rules_give_each_kata_pod_its_vm_once(
    sim_dir: Path, promtool: Path, tmp_path: Path
) -> None:
    wanted = {CPU_RATE_RECORD, CPU_IRATE_RECORD, *map(memory_record, MEMORY_FAMILIES)}
    assert wanted <= recorded_names(), "the rule files no longer record these"
    how = promql.semantics_of(promtool)
    async with simulated_node(
        sim_dir, FLAVOURS, seed=47, metrics_interval=0.5, cri_sync_interval=0.2
    ) as node:
        await node.wait_until_described(limit=20.0, cpu_units_known=True)
        starts = cpu_starts(node)
        scrapes: list[Scrape] = []
        for index in range(SCRAPES):
            if index:
                advance_container_cpu(node, starts)  # the containers' counters move too
            scrapes.append(await next_scrape(node, scrapes[-1] if scrapes else None))
        pod_infos = kube_pod_info_labels(node)
        series = series_over_scrapes(scrapes)
        nodes = {(info["namespace"], info["pod"]): info["node"] for info in pod_infos}
        expected = expected_records(series, nodes, how)
        check_counted_once(node, series, expected, how)

    test_file = tmp_path / "kata-rules-test.yaml"
    test_file.write_text(
        yaml.safe_dump(promtool_test_file(series, pod_infos, expected), width=1000)
    )
    result = run_rule_tests(promtool, test_file)
    assert result.returncode == 0, result.output


async def test_the_rate_model_is_what_promtool_computes(promtool: Path, tmp_path: Path) -> None:
    """promql.rate/irate agree exactly with promtool, including gaps and counter resets."""
    how = promql.semantics_of(promtool)
    cases: dict[str, list[float | None]] = {
        "aligned": [10.5, 11.25, 13.125, 20.0, 20.5, 31.0000001],
        "gaps": [None, 7.3, 7.9, None, 9.1, None],
        "reset": [100.0, 140.5, 3.25, 9.0, 12.75, 30.1],
        "near_zero": [0.001, 2.5, 5.0, 7.75, 9.0, 12.0],
        "zero_point": [None, 0.5, 10.0, 20.0, 30.0, 40.0],  # extrapolated to 0, not below
        "short": [None, None, None, None, 1.0e9, 1.0e9 + 0.123],
    }
    series = {("c", frozenset({("case", name)})): values for name, values in cases.items()}
    rate_rule, irate_rule = "case:c:rate5m", "case:c:irate5m"
    tests = []
    for record, function in ((rate_rule, promql.rate), (irate_rule, promql.irate)):
        samples = []
        for name, values in cases.items():
            value = function(points(values), EVAL_MS, RANGE_MS, how)
            if value is not None:
                samples.append({"labels": series_text(record, {"case": name}), "value": value})
        tests.append({"expr": record, "eval_time": f"{EVAL_MS // 1000}s", "exp_samples": samples})
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "model",
                        "rules": [
                            {"record": rate_rule, "expr": "rate(c[5m])"},
                            {"record": irate_rule, "expr": "irate(c[5m])"},
                        ],
                    }
                ]
            }
        )
    )
    test_file = tmp_path / "model-test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {
                                "series": series_text(name, dict(labels)),
                                "values": values_text(values),
                            }
                            for (name, labels), values in series.items()
                        ],
                        "promql_expr_test": tests,
                    }
                ],
            },
            width=1000,
        )
    )
    result = run_rule_tests(promtool, test_file)
    assert result.returncode == 0, result.output
