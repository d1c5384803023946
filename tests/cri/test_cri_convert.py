"""Pure translations of CRI answers into PodMeta / ContainerInfo."""

from __future__ import annotations

import json

from pulse.cri.convert import (
    SandboxDetails,
    build_snapshot,
    container_stats,
    direct_image_name,
    enum_name,
    image_names_by_id,
    is_image_id,
    sandbox_details,
)
from pulse.cri.gen import runtime_v1_pb2 as pb

IMAGE_ID = "sha256:" + "ab" * 32

# Shape of containerd 1.6's verbose PodSandboxStatus info (checked against a real one).
CONTAINERD_INFO = {
    "info": json.dumps(
        {
            "pid": 4242,
            "processStatus": "running",
            "image": "registry.k8s.io/pause:3.9",
            "runtimeHandler": "kata",
            "config": {
                "metadata": {"name": "web-0", "uid": "u1", "namespace": "shop"},
                "linux": {"cgroup_parent": "/kubepods/burstable/podu1"},
            },
            "runtimeSpec": {"annotations": {}},
        }
    )
}


def test_containerd_info_gives_cgroup_parent_and_sandbox_image() -> None:
    details = sandbox_details(CONTAINERD_INFO)
    assert details == SandboxDetails("/kubepods/burstable/podu1", "registry.k8s.io/pause:3.9")


def test_crio_info_gives_cgroup_parent_from_the_spec_annotation() -> None:
    info = {
        "info": json.dumps(
            {
                "runtimeSpec": {
                    "annotations": {
                        "io.kubernetes.cri-o.CgroupParent": "kubepods-besteffort-podu2.slice"
                    }
                }
            }
        )
    }
    assert sandbox_details(info).cgroup_parent == "kubepods-besteffort-podu2.slice"


def test_unreadable_info_is_skipped_not_fatal() -> None:
    assert sandbox_details({"info": "{not json", "other": "[1, 2]"}) == SandboxDetails()
    assert sandbox_details({}) == SandboxDetails()
    mixed = {"a": "garbage", **CONTAINERD_INFO}
    assert sandbox_details(mixed).cgroup_parent == "/kubepods/burstable/podu1"


def test_image_ids_are_recognised() -> None:
    assert is_image_id(IMAGE_ID)
    assert is_image_id("ab" * 32)
    assert not is_image_id("docker.io/library/nginx:1.27")
    assert not is_image_id("docker.io/library/nginx@" + IMAGE_ID)


def test_direct_image_name_prefers_user_specified_then_non_id() -> None:
    assert direct_image_name(pb.ImageSpec(image=IMAGE_ID, user_specified_image="nginx:1")) == (
        "nginx:1"
    )
    assert direct_image_name(pb.ImageSpec(image="quay.io/x/y:2")) == "quay.io/x/y:2"
    assert direct_image_name(pb.ImageSpec(image=IMAGE_ID)) is None


def test_image_names_use_first_tag_else_digest() -> None:
    images = [
        pb.Image(id="sha256:1", repo_tags=["a:1", "a:latest"]),
        pb.Image(id="sha256:2", repo_digests=["b@sha256:ff"]),
        pb.Image(id="sha256:3"),
    ]
    assert image_names_by_id(images) == {"sha256:1": "a:1", "sha256:2": "b@sha256:ff"}


def test_stats_keep_unset_fields_as_none() -> None:
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(id="c1"),
        cpu=pb.CpuUsage(timestamp=10, usage_core_nano_seconds=pb.UInt64Value(value=7)),
        memory=pb.MemoryUsage(
            timestamp=12,
            working_set_bytes=pb.UInt64Value(value=100),
            page_faults=pb.UInt64Value(value=0),
        ),
    )
    converted = container_stats(stats)
    assert converted.timestamp_ns == 12
    assert converted.cpu_usage_core_ns == 7
    assert converted.memory_working_set_bytes == 100
    assert converted.memory_page_faults == 0  # zero is a value, not "missing"
    assert converted.memory_usage_bytes is None
    assert converted.memory_rss_bytes is None
    assert converted.memory_swap_bytes is None
    assert container_stats(pb.ContainerStats()).cpu_usage_core_ns is None


def test_unknown_enum_values_keep_their_number() -> None:
    assert enum_name(pb.PodSandboxState, 1) == "SANDBOX_NOTREADY"
    assert enum_name(pb.PodSandboxState, 7) == "7"


def _sandbox(sid: str, name: str) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=sid,
        metadata=pb.PodSandboxMetadata(name=name, namespace="ns", uid=f"uid-{sid}"),
        runtime_handler="kata-qemu",
        created_at=99,
        state=pb.SANDBOX_NOTREADY,
    )


def _container(cid: str, sid: str, name: str) -> pb.Container:
    return pb.Container(
        id=cid,
        pod_sandbox_id=sid,
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=IMAGE_ID),
        image_ref="docker.io/x@sha256:ee",
        state=pb.CONTAINER_RUNNING,
        created_at=5,
    )


def test_snapshot_joins_sandboxes_containers_stats_and_details() -> None:
    snapshot = build_snapshot(
        [_sandbox("s1", "web-0"), _sandbox("s2", "db-0")],
        [
            _container("c2", "s1", "sidecar"),
            _container("c1", "s1", "app"),
            _container("orphan", "gone", "x"),
        ],
        [pb.ContainerStats(attributes=pb.ContainerAttributes(id="c1"))],
        {"s1": SandboxDetails("/kubepods/pods1", "pause:3.9")},
        {"c1": "docker.io/x:1"},
        runtime_name="containerd",
        runtime_version="1.6.20",
    )
    assert set(snapshot.pods) == {"s1", "s2"}
    web = snapshot.pods["s1"]
    assert (web.name, web.namespace, web.uid) == ("web-0", "ns", "uid-s1")
    assert web.runtime_handler == "kata-qemu"
    assert web.state == "SANDBOX_NOTREADY"
    assert web.created_at_ns == 99
    assert web.cgroup_parent == "/kubepods/pods1"
    assert web.sandbox_image == "pause:3.9"
    assert [c.name for c in web.containers] == ["app", "sidecar"]
    app, sidecar = web.containers
    assert app.image == "docker.io/x:1"
    assert app.stats is not None
    assert sidecar.image == IMAGE_ID  # unresolved: the runtime's value, not nothing
    assert sidecar.stats is None
    assert snapshot.pods["s2"].containers == ()
    assert snapshot.pods["s2"].cgroup_parent == ""
    assert snapshot.runtime_version == "1.6.20"
