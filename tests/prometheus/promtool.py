"""Running Debian's promtool: `check metrics` with its lint findings, and `test rules`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Exit codes of `promtool check metrics`: 0 clean, 1 unparseable, 3 parseable with lint findings.
CLEAN, BROKEN, LINT_FINDINGS = 0, 1, 3
_FINDING = re.compile(r"(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*) (?P<message>.+)")


@dataclass(frozen=True, order=True, slots=True)
class LintFinding:
    metric: str
    message: str

    def __str__(self) -> str:
        return f"{self.metric} {self.message}"


@dataclass(frozen=True, slots=True)
class MetricsCheck:
    returncode: int
    findings: frozenset[LintFinding]
    errors: tuple[str, ...]  # every output line that is not a lint finding

    @property
    def parsed(self) -> bool:
        return self.returncode in (CLEAN, LINT_FINDINGS) and not self.errors


def check_metrics(promtool: Path, body: str) -> MetricsCheck:
    result = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings: set[LintFinding] = set()
    errors: list[str] = []
    for line in (result.stdout + result.stderr).splitlines():
        match = _FINDING.fullmatch(line)
        if match is None or line.startswith("error"):
            errors.append(line)
        else:
            findings.add(LintFinding(match.group("metric"), match.group("message")))
    return MetricsCheck(result.returncode, frozenset(findings), tuple(errors))


def family_names(body: str) -> frozenset[str]:
    """The families a text exposition declares with TYPE lines."""
    return frozenset(
        line.split(" ", 3)[2] for line in body.splitlines() if line.startswith("# TYPE ")
    )


def findings_for(
    findings: Iterable[LintFinding], families: Iterable[str]
) -> frozenset[LintFinding]:
    wanted = set(families)
    return frozenset(finding for finding in findings if finding.metric in wanted)


@dataclass(frozen=True, slots=True)
class RulesTest:
    returncode: int
    output: str


def run_rule_tests(promtool: Path, test_file: Path) -> RulesTest:
    result = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=test_file.parent,
    )
    return RulesTest(result.returncode, result.stdout + result.stderr)
