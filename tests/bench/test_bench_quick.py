"""The benchmark's quick mode runs end to end, so that the harness cannot rot.

It asserts that every figure is reported, never how fast anything is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FIGURES = (
    "agent CPU time per sandbox per collection cycle",
    "reference: one sandbox's digest and render in-process, CPU back to back / each after a "
    "5 ms pause (the host's charge for work in bursts)",
    "/metrics latency, 4 concurrent scrapers, gzip (p50 / p99)",
    "/metrics latency, 4 concurrent scrapers, plain (p50 / p99)",
    "/metrics throughput vs bare Hypercorn + Quart-Trio, gzip",
    "/metrics throughput vs bare Hypercorn + Quart-Trio, plain",
    "stricter: /metrics throughput vs a bare ASGI route on Hypercorn (no Quart), gzip / plain",
    "agent resident memory at N = 10 (median / peak)",
    "agent resident memory at N = 20 (median / peak)",
    "agent resident memory at N = 20 during the load phases (median / peak)",
    "discovery latency → /sandboxes (p50 / p99)",
    "discovery latency → /metrics (p50 / p99)",
    "start to ready with 20 sandboxes present",
    "start to all 20 sandboxes in /metrics",
    "parser speed vs prometheus_client, every sample materialised",
    "bytes of /metrics per sandbox, plain / gzip",
)


@pytest.mark.slow
def test_quick_mode_reports_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    committed = REPO / "bench" / "RESULTS.md"
    before = committed.read_bytes() if committed.exists() else None
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=REPO,
        check=True,
        timeout=300,
        capture_output=True,
    )
    report = output.read_text()
    rows = {
        cells[0]: cells[1:]
        for line in report.splitlines()
        if line.startswith("| ") and not line.startswith("| figure")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    for figure in FIGURES:
        assert figure in rows, f"missing figure: {figure}"
        target, result, _ = rows[figure]
        assert target, figure
        # A measured number, not a placeholder.
        assert re.search(r"\d", result) and "nan" not in result, (figure, result)
    assert re.search(r"^- cpu: .+, \d+ CPUs$", report, re.MULTILINE)
    assert re.search(r"^- commit: \S+", report, re.MULTILINE)
    warm_up = r"^- CPU before the windows, the warm-up .*: [\d.]+ ms per collection over \d+ "
    assert re.search(warm_up, report, re.MULTILINE)
    # The load phases' peak is their own, not the start's, where the kernel lets it be reset.
    since = "the load phases began" if os.access("/proc/self/clear_refs", os.W_OK) else "start"
    assert re.search(
        rf"^- memory at N=20 during the load phases .* peak since {since} [\d.]+ MiB$",
        report,
        re.MULTILINE,
    )
    assert re.search(r"^- date: \d{4}-\d\d-\d\d", report, re.MULTILINE)
    # The committed results are never overwritten by the quick run.
    assert (committed.read_bytes() if committed.exists() else None) == before
