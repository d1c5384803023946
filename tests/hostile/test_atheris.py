"""The parser under coverage-guided fuzzing (atheris), when atheris is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

SCRIPT = Path(__file__).with_name("fuzz_parser_atheris.py")


def test_coverage_guided_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-runs=30000", "-max_total_time=20", "-max_len=4096"],
        capture_output=True,
        cwd=tmp_path,  # crash-* files, if any, land here
        timeout=120,
    )
    output = result.stderr.decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
    assert "Done" in output or "max_total_time" in output, output[-2000:]
