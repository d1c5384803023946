"""Configuration: flags, environment, defaults, and a clear exit 2 for every bad value."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pulse.cli import OPEN_FILES_WHEN_UNLIMITED, main
from pulse.config import DEFAULT_SANDBOX_DIRS, OPTIONS, Config, ConfigError, config_from_argv


def test_defaults_match_the_rust_agent() -> None:
    config = config_from_argv([], {})
    assert config.listen_address == "127.0.0.1:8090"
    assert config.runtime_endpoint == Path("/run/containerd/containerd.sock")
    assert config.metrics_interval == 60
    assert config.shim_timeout == 3
    assert config.sandbox_dirs == DEFAULT_SANDBOX_DIRS
    assert config.log_level == "info"
    assert config.exclude_runtime_handler is None


def test_flags_beat_environment_and_environment_beats_defaults() -> None:
    env = {
        "KATA_PULSE_LISTEN": "0.0.0.0:9000",
        "RUNTIME_ENDPOINT": "unix:///run/crio/crio.sock",
        "KATA_PULSE_METRICS_INTERVAL": "15",
        "KATA_PULSE_SANDBOX_DIRS": "/x/sbs:/y/kata",
        "RUST_LOG": "debug,kata_monitor=trace",
    }
    config = config_from_argv(["--metrics-interval-secs", "30"], env)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9000)
    assert config.runtime_endpoint == Path("/run/crio/crio.sock")
    assert config.metrics_interval == 30
    assert config.sandbox_dirs == (Path("/x/sbs"), Path("/y/kata"))
    assert config.log_level == "debug"
    # KATA_PULSE_LOG_LEVEL wins over RUST_LOG.
    assert config_from_argv([], {**env, "KATA_PULSE_LOG_LEVEL": "warn"}).log_level == "warn"


@pytest.mark.parametrize("endpoint", ["/run/c.sock", "unix:///run/c.sock", "unix:/run/c.sock"])
def test_endpoint_forms(endpoint: str) -> None:
    assert config_from_argv(["--runtime-endpoint", endpoint], {}).runtime_endpoint == Path(
        "/run/c.sock"
    )


def test_repeated_sandbox_dirs_and_stale_bound() -> None:
    config = config_from_argv(["--sandbox-dir", "/a", "--sandbox-dir", "/b"], {})
    assert config.sandbox_dirs == (Path("/a"), Path("/b"))
    assert config.stale_after == 2 * 60 + 3


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--metrics-interval-secs", "0"], {}, "--metrics-interval-secs"),
        (["--metrics-interval-secs", "-5"], {}, "--metrics-interval-secs"),
        ([], {"KATA_PULSE_METRICS_INTERVAL": "often"}, "KATA_PULSE_METRICS_INTERVAL"),
        (["--listen-address", "localhost"], {}, "--listen-address"),
        (["--listen-address", "1.2.3.4:99999"], {}, "--listen-address"),
        (["--runtime-endpoint", "tcp://1.2.3.4:1"], {}, "--runtime-endpoint"),
        (["--runtime-endpoint", "relative.sock"], {}, "--runtime-endpoint"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"RUST_LOG": "kata=debug"}, "RUST_LOG"),
        (["--sandbox-dir", "relative/dir"], {}, "--sandbox-dir"),
        (["--shim-timeout", "nan"], {}, "--shim-timeout"),
        (["--shim-max-body-bytes", "0"], {}, "--shim-max-body-bytes"),
        (["--exclude-runtime-handler", "kata-(qemu"], {}, "--exclude-runtime-handler"),
        (["--guest-cpu-time-unit", "jiffies"], {}, "--guest-cpu-time-unit"),
        (["--disk-exclude", "["], {}, "--disk-exclude"),
        (["--ws-max-clients", "0"], {}, "--ws-max-clients"),
    ],
)
def test_each_invalid_value_exits_2_with_one_line_naming_the_option(
    argv: list[str],
    env: dict[str, str],
    names: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [o.env for o in OPTIONS if o.env] + ["RUST_LOG"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"kata-pulse: error: {names}: "), err


def test_config_error_is_raised_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="--metrics-interval-secs"):
        config_from_argv(["--metrics-interval-secs", "0"], {})
    assert isinstance(config_from_argv([], {}), Config)


def test_help_lists_every_option_with_its_variable_and_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pulse", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = re.sub(r"\s+", " ", result.stdout)
    for option in OPTIONS:
        assert option.flag in text
        if option.env:
            assert f"[env {option.env}]" in text
        if option.default is not None:
            assert f"(default: {option.default})" in text


def test_the_open_files_soft_limit_is_raised_to_the_hard_limit() -> None:
    # In a child process: the limit is per process and the test run's must stay as it is.
    script = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "import json\n"
        "from pulse.cli import raise_open_files_limit\n"
        "result = raise_open_files_limit()\n"
        "print(json.dumps([result, resource.getrlimit(resource.RLIMIT_NOFILE), hard]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    (before, now), (soft, hard), original_hard = json.loads(out)
    assert before == 64 and now == soft and hard == original_hard
    assert soft == (hard if hard != resource.RLIM_INFINITY else OPEN_FILES_WHEN_UNLIMITED)
