"""issue 3: `promtool check metrics` on everything a 50-sandbox node serves.

What promtool may still remark is decided from real data, not listed by hand: on the cAdvisor
endpoints, only the remarks it also makes on a real kubelet's `/metrics/cadvisor` (the capture)
for the same families; on `/metrics/kata`, only the remarks it makes on the shims' own bodies.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

from pulse.sim.bodies import Flavour
from tests.prometheus.exposition import parse_samples
from tests.prometheus.node import simulated_node
from tests.prometheus.promtool import (
    LINT_FINDINGS,
    LintFinding,
    MetricsCheck,
    check_metrics,
    family_names,
    findings_for,
)

REPO = Path(__file__).resolve().parents[2]
KUBELET_CAPTURE = REPO / "tests" / "cadvisor" / "data" / "kubelet-cadvisor-capture.prom"
KNOWN_SANDBOXES = tuple(itertools.islice(itertools.cycle(Flavour), 48))
UNKNOWN_SANDBOXES = 2  # running sandboxes the CRI does not list (yet): empty namespace/pod
# kata-monitor renames the shims' own Go collectors; a remark about go_x is one about this name.
SHIM_COLLECTOR_PREFIXES = ("go_", "process_")


def as_served_by_kata_endpoint(finding: LintFinding) -> LintFinding:
    if finding.metric.startswith(SHIM_COLLECTOR_PREFIXES):
        return LintFinding(f"kata_shim_{finding.metric}", finding.message)
    return finding


def duplicated_series(body: str) -> list[str]:
    counts = Counter(sample.series for sample in parse_samples(body))
    return [f"{name} {sorted(labels)}" for (name, labels), n in counts.items() if n > 1]


def assert_parsed(check: MetricsCheck, what: str) -> None:
    assert check.parsed, f"promtool cannot parse {what} (exit {check.returncode}): {check.errors}"


async def test_promtool_finds_nothing_beyond_what_kubelet_and_the_shims_get(
    sim_dir: Path, promtool: Path
) -> None:
    async with simulated_node(
        sim_dir,
        KNOWN_SANDBOXES,
        seed=31,
        unknown_to_cri=UNKNOWN_SANDBOXES,
        metrics_interval=30.0,
        cri_sync_interval=0.5,
    ) as node:
        await node.wait_until_described(limit=20.0)
        bodies = {path: await node.get_text(path) for path in ("/metrics", "/metrics/cadvisor")}
        kata = await node.get_text("/metrics/kata")
        shim_bodies = {}
        for flavour in Flavour:
            box = next(box for box in node.sandboxes if box.flavour is flavour)
            shim_bodies[flavour] = await node.get_text("/metrics/kata", sandbox=box.sandbox_id)
        pods = {(box.pod.namespace, box.pod.name) for box in node.known_to_cri()}

    capture = check_metrics(promtool, KUBELET_CAPTURE.read_text())
    assert_parsed(capture, "the kubelet capture")
    # The reference is not clean (e.g. container_memory_failcnt, a counter without _total):
    # if it were, the comparison below would prove nothing about tolerated remarks.
    assert capture.returncode == LINT_FINDINGS and capture.findings

    for path, body in bodies.items():
        served = {(s.label("namespace"), s.label("pod")) for s in parse_samples(body)}
        assert pods <= served, f"{path} lacks pods {sorted(pods - served)[:3]}"
        assert not duplicated_series(body), f"{path}: {duplicated_series(body)[:3]}"
        check = check_metrics(promtool, body)
        assert_parsed(check, path)
        tolerated = findings_for(capture.findings, family_names(body))
        unexpected = sorted(map(str, check.findings - tolerated))
        assert not unexpected, f"{path}: promtool remarks kubelet does not get: {unexpected}"

    tolerated_kata: set[LintFinding] = set()
    for flavour, body in shim_bodies.items():
        shim_check = check_metrics(promtool, body)
        assert_parsed(shim_check, f"a {flavour.value} shim body")
        tolerated_kata |= {as_served_by_kata_endpoint(f) for f in shim_check.findings}
    check = check_metrics(promtool, kata)
    assert_parsed(check, "/metrics/kata")
    unexpected = sorted(map(str, check.findings - tolerated_kata))
    assert not unexpected, f"/metrics/kata: remarks the shims' own bodies do not get: {unexpected}"
    assert not duplicated_series(kata), duplicated_series(kata)[:3]


def test_the_lint_comparison_can_fail(promtool: Path) -> None:
    # A counter of ours without _total is a remark the capture does not tolerate.
    body = (
        "# HELP kata_pulse_things Things.\n# TYPE kata_pulse_things counter\nkata_pulse_things 1\n"
    )
    check = check_metrics(promtool, body)
    capture = check_metrics(promtool, KUBELET_CAPTURE.read_text())
    assert check.parsed and check.returncode == LINT_FINDINGS
    assert check.findings - findings_for(capture.findings, family_names(body)) == {
        LintFinding("kata_pulse_things", 'counter metrics should have "_total" suffix')
    }
    assert not check_metrics(promtool, body + "# TYPE kata_pulse_things counter\n").parsed
