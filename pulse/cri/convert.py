"""Pure translations from CRI protobuf answers to the frozen model types."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from pulse.cri.gen import runtime_v1_pb2 as pb
from pulse.model import ContainerInfo, ContainerStats, CriSnapshot, PodMeta

_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{64}$")

# CRI-O puts the pod cgroup into this sandbox annotation instead of a "config" document.
CRIO_CGROUP_PARENT_ANNOTATION = "io.kubernetes.cri-o.CgroupParent"


@dataclass(frozen=True, slots=True)
class SandboxDetails:
    """What only the verbose PodSandboxStatus tells; fetched once per sandbox."""

    cgroup_parent: str = ""
    sandbox_image: str = ""


def enum_name(enum: EnumTypeWrapper, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)  # a state newer than our proto: keep the number rather than lose it


def is_image_id(image: str) -> bool:
    """True for `sha256:<hex>` (or bare hex) image IDs, which are no use as a label."""
    return bool(_IMAGE_ID.match(image))


def _wrapped(message: Any, field: str) -> int | None:
    """The value of a UInt64Value field, or None when the runtime left it unset."""
    return int(getattr(message, field).value) if message.HasField(field) else None


def container_stats(stats: pb.ContainerStats) -> ContainerStats:
    cpu = stats.cpu if stats.HasField("cpu") else None
    memory = stats.memory if stats.HasField("memory") else None
    swap = stats.swap if stats.HasField("swap") else None
    timestamp = max(
        (part.timestamp for part in (cpu, memory) if part is not None),
        default=0,
    )
    return ContainerStats(
        timestamp_ns=timestamp,
        cpu_usage_core_ns=_wrapped(cpu, "usage_core_nano_seconds") if cpu else None,
        memory_working_set_bytes=_wrapped(memory, "working_set_bytes") if memory else None,
        memory_usage_bytes=_wrapped(memory, "usage_bytes") if memory else None,
        memory_rss_bytes=_wrapped(memory, "rss_bytes") if memory else None,
        memory_page_faults=_wrapped(memory, "page_faults") if memory else None,
        memory_major_page_faults=_wrapped(memory, "major_page_faults") if memory else None,
        memory_swap_bytes=_wrapped(swap, "swap_usage_bytes") if swap else None,
    )


def _dig(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def sandbox_details(info: Mapping[str, str]) -> SandboxDetails:
    """Read the pod cgroup and the sandbox image from a verbose PodSandboxStatus `info` map.

    containerd: info["info"] is JSON with "config" (the PodSandboxConfig kubelet sent, whose
    linux.cgroup_parent is the pod cgroup) and "image". CRI-O: the cgroup is a runtime-spec
    annotation. Values that are not JSON objects are skipped, not fatal: the labels do not
    depend on them.
    """
    cgroup_parent = ""
    sandbox_image = ""
    for raw in info.values():
        try:
            document = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(document, dict):
            continue
        candidates = (
            _dig(document, "config", "linux", "cgroup_parent"),
            _dig(document, "runtimeSpec", "annotations", CRIO_CGROUP_PARENT_ANNOTATION),
        )
        for value in candidates:
            if not cgroup_parent and isinstance(value, str):
                cgroup_parent = value
        image = document.get("image")
        if not sandbox_image and isinstance(image, str):
            sandbox_image = image
    return SandboxDetails(cgroup_parent=cgroup_parent, sandbox_image=sandbox_image)


def direct_image_name(image: pb.ImageSpec) -> str | None:
    """The human name when the spec itself carries one (newer runtimes, or a by-name create)."""
    if image.user_specified_image:
        return image.user_specified_image
    if image.image and not is_image_id(image.image):
        return image.image
    return None


def image_name_of(image: pb.Image) -> str | None:
    """The name cAdvisor would show for an image: its first repo tag, else its digest name."""
    if image.repo_tags:
        return str(image.repo_tags[0])
    if image.repo_digests:
        return str(image.repo_digests[0])
    return None


def image_names_by_id(images: Iterable[pb.Image]) -> dict[str, str]:
    names: dict[str, str] = {}
    for image in images:
        name = image_name_of(image)
        if name is not None and image.id:
            names[image.id] = name
    return names


def image_ids(container: pb.Container) -> tuple[str, ...]:
    """Every field under which a runtime may give a container's image ID."""
    return tuple(
        value for value in (container.image.image, container.image_id, container.image_ref) if value
    )


def pod_meta(
    sandbox: pb.PodSandbox,
    details: SandboxDetails | None,
    containers: Iterable[ContainerInfo],
) -> PodMeta:
    details = details or SandboxDetails()
    return PodMeta(
        sandbox_id=sandbox.id,
        name=sandbox.metadata.name,
        namespace=sandbox.metadata.namespace,
        uid=sandbox.metadata.uid,
        runtime_handler=sandbox.runtime_handler,
        created_at_ns=sandbox.created_at,
        state=enum_name(pb.PodSandboxState, sandbox.state),
        cgroup_parent=details.cgroup_parent,
        sandbox_image=details.sandbox_image,
        containers=tuple(containers),
    )


def container_info(
    container: pb.Container, image: str, stats: pb.ContainerStats | None
) -> ContainerInfo:
    return ContainerInfo(
        container_id=container.id,
        name=container.metadata.name,
        image=image,
        image_ref=container.image_ref,
        state=enum_name(pb.ContainerState, container.state),
        created_at_ns=container.created_at,
        stats=container_stats(stats) if stats is not None else None,
    )


def build_snapshot(
    sandboxes: Iterable[pb.PodSandbox],
    containers: Iterable[pb.Container],
    stats: Iterable[pb.ContainerStats],
    details: Mapping[str, SandboxDetails],
    images: Mapping[str, str],
    *,
    runtime_name: str = "",
    runtime_version: str = "",
) -> CriSnapshot:
    """Join the three list answers into one PodMeta per sandbox.

    `images` maps container id -> human image name; a container missing from it keeps the
    image the runtime listed. Containers of sandboxes the list did not return are dropped
    (they belong to a sandbox removed between the two calls).
    """
    stats_by_id = {entry.attributes.id: entry for entry in stats if entry.attributes.id}
    by_sandbox: dict[str, list[ContainerInfo]] = {}
    for container in sorted(containers, key=lambda c: (c.metadata.name, c.created_at, c.id)):
        image = images.get(container.id) or container.image.image
        info = container_info(container, image, stats_by_id.get(container.id))
        by_sandbox.setdefault(container.pod_sandbox_id, []).append(info)
    pods = {
        sandbox.id: pod_meta(sandbox, details.get(sandbox.id), by_sandbox.get(sandbox.id, ()))
        for sandbox in sandboxes
        if sandbox.id
    }
    return CriSnapshot(pods=pods, runtime_name=runtime_name, runtime_version=runtime_version)
