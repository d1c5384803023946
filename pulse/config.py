"""The agent's configuration: built once from the command line and the environment, then frozen.

Every option has a command-line flag, an environment variable and a default, in that order of
precedence. Flag and variable names follow the Rust agent this project replaces, so existing
DaemonSet manifests keep working.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pulse.logs import LEVELS

DEFAULT_SANDBOX_DIRS = (Path("/run/vc/sbs"), Path("/run/kata"))
DEFAULT_RUNTIME_ENDPOINT = "/run/containerd/containerd.sock"
DEFAULT_DISK_EXCLUDE = r"^(ram|loop|fd|sr)\d+$"
CPU_TIME_UNITS = ("auto", "ms", "ticks", "seconds")


class ConfigError(Exception):
    """An invalid option value; the message names the option and says what is wrong."""


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8090
    runtime_endpoint: Path = Path(DEFAULT_RUNTIME_ENDPOINT)
    metrics_interval: float = 60.0
    shim_timeout: float = 3.0
    shim_max_body: int = 32 * 1024 * 1024
    sandbox_dirs: tuple[Path, ...] = DEFAULT_SANDBOX_DIRS
    rescan_interval: float = 30.0
    log_level: str = "info"
    log_json: bool = False
    cri_timeout: float = 2.0
    cri_sync_interval: float = 5.0
    exclude_runtime_handler: re.Pattern[str] | None = None
    guest_cpu_time_unit: str = "auto"
    disk_exclude: re.Pattern[str] = re.compile(DEFAULT_DISK_EXCLUDE)
    vm_container_name: str = "kata-vm"
    ws_max_clients: int = 64
    ws_allowed_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 2.0

    @property
    def listen_address(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @property
    def stale_after(self) -> float:
        """Age after which the last good data of a failing sandbox is dropped from the output."""
        return 2 * self.metrics_interval + self.shim_timeout


def parse_endpoint(value: str) -> Path:
    """Accept `/path`, `unix:///path` and `unix:/path`, as crictl and kubelet do."""
    path = value
    if value.startswith("unix://"):
        path = value[len("unix://") :]
    elif value.startswith("unix:"):
        path = value[len("unix:") :]
    elif "://" in value:
        raise ValueError(f"only unix sockets are supported, got {value!r}")
    if not path.startswith("/"):
        raise ValueError(f"needs an absolute socket path, got {value!r}")
    return Path(path)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, port


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"must be a number > 0, got {value!r}")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be an integer > 0, got {value!r}")
    return number


def log_level(value: str) -> str:
    # RUST_LOG may carry per-module directives ("info,kata_monitor=debug"): keep the default level.
    level = value.split(",")[0].strip().lower()
    if "=" in level or level not in LEVELS:
        raise ValueError(f"must be one of {', '.join(LEVELS)}, got {value!r}")
    return level


def cpu_time_unit(value: str) -> str:
    if value not in CPU_TIME_UNITS:
        raise ValueError(f"must be one of {', '.join(CPU_TIME_UNITS)}, got {value!r}")
    return value


def regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as err:
        raise ValueError(f"not a valid regular expression ({err}): {value!r}") from None


@dataclass(frozen=True, slots=True)
class _Option:
    flag: str
    env: str | None
    default: str | None
    help: str
    repeatable: bool = False


OPTIONS: tuple[_Option, ...] = (
    _Option(
        "--listen-address", "KATA_PULSE_LISTEN", "127.0.0.1:8090", "HOST:PORT to serve HTTP on"
    ),
    _Option(
        "--runtime-endpoint",
        "RUNTIME_ENDPOINT",
        DEFAULT_RUNTIME_ENDPOINT,
        "CRI socket of containerd or CRI-O (/path, unix:///path or unix:/path)",
    ),
    _Option(
        "--metrics-interval-secs",
        "KATA_PULSE_METRICS_INTERVAL",
        "60",
        "seconds between two collections of one sandbox",
    ),
    _Option(
        "--log-level",
        "KATA_PULSE_LOG_LEVEL",
        "info",
        "trace, debug, info, warn or error (RUST_LOG is honoured as a fallback)",
    ),
    _Option("--log-json", "KATA_PULSE_LOG_JSON", "false", "log JSON lines instead of key=value"),
    _Option(
        "--sandbox-dir",
        "KATA_PULSE_SANDBOX_DIRS",
        ":".join(str(d) for d in DEFAULT_SANDBOX_DIRS),
        "sandbox root to watch; repeat the flag, or separate with ':' in the variable",
        repeatable=True,
    ),
    _Option("--shim-timeout", "KATA_PULSE_SHIM_TIMEOUT", "3", "seconds one shim scrape may take"),
    _Option(
        "--shim-max-body-bytes",
        "KATA_PULSE_SHIM_MAX_BODY",
        str(32 * 1024 * 1024),
        "largest shim response accepted, in bytes",
    ),
    _Option(
        "--rescan-interval-secs",
        "KATA_PULSE_RESCAN_INTERVAL",
        "30",
        "seconds between safety-net rescans of the sandbox roots (inotify is the primary source)",
    ),
    _Option("--cri-timeout", "KATA_PULSE_CRI_TIMEOUT", "2", "deadline of one CRI call, in seconds"),
    _Option(
        "--cri-sync-interval-secs",
        "KATA_PULSE_CRI_SYNC_INTERVAL",
        "5",
        "seconds between two periodic CRI syncs",
    ),
    _Option(
        "--exclude-runtime-handler",
        "KATA_PULSE_EXCLUDE_RUNTIME_HANDLER",
        None,
        "never scrape sandboxes whose CRI runtime handler matches this regex "
        "(runtime-rs QEMU/Firecracker shims can crash when scraped, kata #13708)",
    ),
    _Option(
        "--guest-cpu-time-unit",
        "KATA_PULSE_GUEST_CPU_TIME_UNIT",
        "auto",
        "unit of kata_guest_cpu_time: auto, ms (Kata 2.5+), ticks (2.3.1-2.4) or seconds (<2.3.1)",
    ),
    _Option(
        "--disk-exclude",
        "KATA_PULSE_DISK_EXCLUDE",
        DEFAULT_DISK_EXCLUDE,
        "regex of guest block devices left out of container_fs_*",
    ),
    _Option(
        "--vm-container-name",
        "KATA_PULSE_VM_CONTAINER_NAME",
        "kata-vm",
        "container label of the row that carries the VM's totals when the CRI gives no "
        "per-container stats",
    ),
    _Option(
        "--ws-max-clients",
        "KATA_PULSE_WS_MAX_CLIENTS",
        "64",
        "most websocket clients served at once",
    ),
    _Option(
        "--ws-allowed-origin",
        "KATA_PULSE_WS_ALLOWED_ORIGINS",
        None,
        "extra Origin allowed to open /ws (same origin is always allowed); repeat, or ',' in the "
        "variable; '*' allows any",
        repeatable=True,
    ),
)


def _describe(option: _Option) -> str:
    env = f" [env {option.env}]" if option.env else ""
    default = f" (default: {option.default})" if option.default is not None else ""
    return f"{option.help}{env}{default}"


def add_agent_arguments(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """Add every agent option.

    On a subcommand's parser an option that is not given must not overwrite the same option
    given before the subcommand, hence SUPPRESS as its default there.
    """
    default = argparse.SUPPRESS if subcommand else None
    for option in OPTIONS:
        if option.flag == "--log-json":
            parser.add_argument(
                option.flag, action="store_true", default=default, help=_describe(option)
            )
        elif option.repeatable:
            parser.add_argument(
                option.flag, action="append", default=default, help=_describe(option)
            )
        else:
            parser.add_argument(option.flag, default=default, help=_describe(option))


T = TypeVar("T")


def _dest(option: _Option) -> str:
    return option.flag.removeprefix("--").replace("-", "_")


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Resolve flag > environment > default for every option and validate it.

    Raises ConfigError naming the first invalid option.
    """
    raw: dict[str, str | list[str] | bool | None] = {}
    source: dict[str, str] = {}
    for option in OPTIONS:
        value = getattr(args, _dest(option), None)
        if value is not None:
            raw[option.flag] = value
            source[option.flag] = option.flag
            continue
        env_value = environ.get(option.env) if option.env else None
        if option.flag == "--log-level" and env_value is None:
            env_value = environ.get("RUST_LOG")
            source[option.flag] = "RUST_LOG"
        else:
            source[option.flag] = option.env or option.flag
        text = env_value if env_value else option.default
        if not env_value:
            source[option.flag] = option.flag
        if option.repeatable and text is not None:
            separator = "," if option.flag == "--ws-allowed-origin" else ":"
            raw[option.flag] = [part for part in text.split(separator) if part]
        else:
            raw[option.flag] = text

    def get(flag: str, convert: Callable[[str], T]) -> T:
        value = raw[flag]
        assert isinstance(value, str)
        try:
            return convert(value)
        except ValueError as err:
            name = source[flag]
            detail = str(err)
            if "could not convert" in detail or "invalid literal" in detail:
                detail = f"not a number: {value!r}"
            raise ConfigError(f"{name}: {detail}") from None

    def get_list(flag: str) -> list[str]:
        value = raw[flag]
        if value is None or isinstance(value, bool):
            return []
        return [value] if isinstance(value, str) else list(value)

    host, port = get("--listen-address", parse_listen)
    sandbox_dirs = tuple(dict.fromkeys(Path(p) for p in get_list("--sandbox-dir")))
    if not sandbox_dirs:
        raise ConfigError(f"{source['--sandbox-dir']}: at least one sandbox directory is needed")
    for directory in sandbox_dirs:
        if not directory.is_absolute():
            raise ConfigError(f"{source['--sandbox-dir']}: needs an absolute path, got {directory}")
    exclude = raw["--exclude-runtime-handler"]
    log_json_value = raw["--log-json"]
    log_json = log_json_value is True or (
        isinstance(log_json_value, str) and log_json_value.lower() in ("1", "true", "yes")
    )
    origins = tuple(get_list("--ws-allowed-origin"))
    return Config(
        listen_host=host,
        listen_port=port,
        runtime_endpoint=get("--runtime-endpoint", parse_endpoint),
        metrics_interval=get("--metrics-interval-secs", positive_float),
        shim_timeout=get("--shim-timeout", positive_float),
        shim_max_body=get("--shim-max-body-bytes", positive_int),
        sandbox_dirs=sandbox_dirs,
        rescan_interval=get("--rescan-interval-secs", positive_float),
        log_level=get("--log-level", log_level),
        log_json=log_json,
        cri_timeout=get("--cri-timeout", positive_float),
        cri_sync_interval=get("--cri-sync-interval-secs", positive_float),
        exclude_runtime_handler=get("--exclude-runtime-handler", regex)
        if isinstance(exclude, str)
        else None,
        guest_cpu_time_unit=get("--guest-cpu-time-unit", cpu_time_unit),
        disk_exclude=get("--disk-exclude", regex),
        vm_container_name=get("--vm-container-name", _non_empty),
        ws_max_clients=get("--ws-max-clients", positive_int),
        ws_allowed_origins=origins,
    )


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def config_from_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config the way the CLI does; for tests and embedding."""
    parser = argparse.ArgumentParser(add_help=False)
    add_agent_arguments(parser)
    return build_config(parser.parse_args(list(argv)), os.environ if environ is None else environ)
