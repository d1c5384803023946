"""Values that cross actor boundaries.

Everything here is frozen: a message, once sent over a memory channel, is never changed by
its sender or its receiver, so no two actors ever share mutable state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse.kept import KeptBody
    from pulse.pipeline import BodyDigest


class RuntimeKind(enum.StrEnum):
    """Which Kata shim flavour a sandbox root belongs to."""

    GO = "go"  # containerd-shim-kata-v2, /run/vc/sbs
    RUST = "rust"  # runtime-rs, /run/kata


class ScrapeFailure(enum.StrEnum):
    """Why one collection of a shim's /metrics gave no usable data."""

    NO_SOCKET = "no_socket"  # the sandbox directory exists, its shim-monitor.sock does not (yet)
    CONNECT = "connect"  # the socket exists but refused or reset the connection
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"  # non-200
    OVERSIZE = "oversize"
    PROTOCOL = "protocol"  # not an HTTP response we can read
    UNPARSEABLE = "unparseable"  # a body without a single valid sample


class SandboxState(enum.StrEnum):
    """Health of one sandbox as /sandboxes and kata_pulse_sandboxes report it."""

    PENDING = "pending"  # discovered, no collection finished yet
    UP = "up"  # the last collection succeeded
    DEGRADED = "degraded"  # the last collection failed; the last good data is still fresh
    DOWN = "down"  # failing and the last good data is stale (or there never was any)
    EXCLUDED = "excluded"  # never scraped: its runtime handler matches --exclude-runtime-handler
    AWAITING_CRI = "awaiting_cri"  # not scraped until the CRI tells its runtime handler


# --- CRI data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """Per-container numbers from CRI ListContainerStats; None where the runtime left it out."""

    timestamp_ns: int
    cpu_usage_core_ns: int | None = None
    memory_working_set_bytes: int | None = None
    memory_usage_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_page_faults: int | None = None
    memory_major_page_faults: int | None = None
    memory_swap_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """One app container of a pod, as the CRI reports it."""

    container_id: str
    name: str
    image: str  # the human image name (a repo tag), never a sha256: ID when it can be resolved
    image_ref: str
    state: str  # CONTAINER_RUNNING, CONTAINER_EXITED, ...
    created_at_ns: int
    stats: ContainerStats | None = None


@dataclass(frozen=True, slots=True)
class PodMeta:
    """What the CRI knows about one pod sandbox; the sandbox id equals its Kata directory name."""

    sandbox_id: str
    name: str
    namespace: str
    uid: str
    runtime_handler: str = ""
    created_at_ns: int = 0
    state: str = ""  # SANDBOX_READY / SANDBOX_NOTREADY
    cgroup_parent: str = ""  # the pod cgroup as kubelet names it; "" when the runtime did not say
    sandbox_image: str = ""
    containers: tuple[ContainerInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class CriSnapshot:
    """The result of one complete CRI sync: every pod sandbox the runtime listed."""

    pods: Mapping[str, PodMeta]
    runtime_name: str = ""
    runtime_version: str = ""


# --- Messages to the cache owner -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxAppeared:
    sandbox_id: str
    root: Path
    kind: RuntimeKind


@dataclass(frozen=True, slots=True)
class SandboxGone:
    sandbox_id: str
    root: Path


@dataclass(frozen=True, slots=True)
class InitialScanDone:
    """Every configured root has been scanned once (missing roots count as scanned)."""


@dataclass(frozen=True, slots=True)
class ScrapeSucceeded:
    sandbox_id: str
    generation: int  # which StartCollecting this collector was started by
    wall_time: float  # unix seconds when the response was complete
    duration: float  # seconds the collection took
    body: KeptBody
    digest: BodyDigest


@dataclass(frozen=True, slots=True)
class ScrapeFailed:
    sandbox_id: str
    generation: int
    wall_time: float
    duration: float
    reason: ScrapeFailure
    detail: str


@dataclass(frozen=True, slots=True)
class CriSynced:
    snapshot: CriSnapshot
    wall_time: float
    duration: float


@dataclass(frozen=True, slots=True)
class CriSyncFailed:
    error: str
    wall_time: float
    duration: float


CacheMessage = (
    SandboxAppeared
    | SandboxGone
    | InitialScanDone
    | ScrapeSucceeded
    | ScrapeFailed
    | CriSynced
    | CriSyncFailed
)


# --- Messages from the cache owner to the collector supervisor -------------------------------


@dataclass(frozen=True, slots=True)
class StartCollecting:
    sandbox_id: str
    socket_path: Path
    # Results carry it back, so the cache owner can tell a stale result of a stopped collector
    # from one of the collector that replaced it.
    generation: int


@dataclass(frozen=True, slots=True)
class StopCollecting:
    sandbox_id: str


SupervisorMessage = StartCollecting | StopCollecting


@dataclass(frozen=True, slots=True)
class Labels:
    """The identity labels every output line of a sandbox carries."""

    sandbox_id: str
    pod_name: str = ""
    namespace: str = ""
    uid: str = ""

    @staticmethod
    def of(sandbox_id: str, pod: PodMeta | None) -> Labels:
        if pod is None:
            return Labels(sandbox_id)
        return Labels(sandbox_id, pod.name, pod.namespace, pod.uid)
