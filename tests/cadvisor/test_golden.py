"""Whole outputs against checked-in golden files, against kubelet's capture, and promtool.

When an output changes on purpose: `.venv/bin/python scripts/regen-golden`, then review the
diff of tests/golden/ like any other change.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

from pulse.cadvisor import FAMILIES, HEADERS
from pulse.expo.parser import Family, parse
from tests.cadvisor.golden_cases import CASES, GOLDEN, TRICKY, render_outputs

CAPTURE = Path(__file__).parent / "data" / "kubelet-cadvisor-capture.prom"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
OUTPUTS = render_outputs()


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_matches_golden_file(name: str) -> None:
    expected = (GOLDEN / name).read_bytes()
    actual = OUTPUTS[name]
    if actual != expected:
        diff = difflib.unified_diff(
            expected.decode().splitlines(),
            actual.decode().splitlines(),
            f"tests/golden/{name}",
            "rendered now",
            lineterm="",
            n=1,
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"{name} differs (scripts/regen-golden regenerates it):\n{shown}")


def test_every_flavour_and_pod_shape_is_covered() -> None:
    names = {case.name for case in CASES}
    assert names == {"go", "go-2.4", "runtime-rs", "firecracker", "no-guest", TRICKY}
    text = OUTPUTS["cadvisor.prom"].decode()
    assert 'container="kata-vm"' in text  # pods without per-container stats
    assert 'container="app"' in text  # pods with them
    assert 'image="kata-sandbox"' in text  # sandbox image unknown
    assert "/kubepods.slice/kubepods-besteffort.slice/" in text  # systemd cgroup driver


def _label_keys(family: Family) -> set[tuple[str, ...]]:
    return {tuple(sorted(name for name, _ in sample.labels)) for sample in family.samples}


def test_every_container_family_is_as_in_the_kubelet_capture() -> None:
    capture = parse(CAPTURE.read_text())
    assert capture.malformed_lines == 0
    emitted = parse(OUTPUTS["cadvisor.prom"].decode())
    assert emitted.malformed_lines == 0
    names = [name for name in emitted.families if name.startswith("container_")]
    assert set(names) == set(FAMILIES)  # every family we declare is exercised by the goldens
    for name in names:
        ours, theirs = emitted.families[name], capture.families.get(name)
        assert theirs is not None, f"{name} is not a family kubelet's cAdvisor has"
        assert (ours.type, ours.help) == (theirs.type, theirs.help), name
        assert _label_keys(ours) <= _label_keys(theirs), name
    for name, header in HEADERS.items():
        family = capture.families[name]
        assert header == f"# HELP {name} {family.help}\n# TYPE {name} {family.type}\n".encode()


def test_nothing_else_is_named_like_cadvisor() -> None:
    for name in parse(OUTPUTS["cadvisor.prom"].decode()).families:
        assert name.startswith("container_") or name.startswith("kata_pulse_"), name


def test_timestamps_are_the_collection_time_except_where_cadvisor_has_none() -> None:
    capture = parse(CAPTURE.read_text())
    emitted = parse(OUTPUTS["cadvisor.prom"].decode())
    for name, family in emitted.families.items():
        timestamped_in_capture = capture.families[name].samples[0].timestamp_ms is not None
        stamps = {sample.timestamp_ms for sample in family.samples}
        assert stamps == ({1_761_003_630_123} if timestamped_in_capture else {None}), name


def _promtool(body: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body.decode(), capture_output=True, text=True
    )


def test_promtool_finds_nothing_at_all_in_the_cadvisor_output() -> None:
    combined = OUTPUTS["cadvisor.prom"]
    result = _promtool(combined)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_promtool_finds_no_error_in_the_kata_output() -> None:
    # The names there are the shims' own (kata_agent_scrape_count is a counter without
    # _total, durations are in milliseconds...): promtool's lint remarks about them (exit 3)
    # are not ours to fix, and kata-monitor emits the same. A parse error would be exit 1.
    for name in ("kata.prom", "kata-filtered.prom"):
        result = _promtool(OUTPUTS[name])
        assert result.returncode in (0, 3), result.stderr
        remarks = (result.stdout + result.stderr).splitlines()
        assert not [line for line in remarks if "error" in line.lower()], remarks


def test_promtool_reports_a_broken_output() -> None:
    # The check above can fail: a second TYPE line for a family is a parse error.
    broken = OUTPUTS["cadvisor.prom"] + b"# TYPE container_threads gauge\n"
    assert _promtool(broken).returncode == 1
