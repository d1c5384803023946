"""The committed generated code matches the proto, and the proto matches upstream CRI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pulse.cri.gen import runtime_v1_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
GEN_DIR = REPO / "pulse" / "cri" / "gen"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh_dir = tmp_path / "pulse" / "cri" / "gen"
    names = ("runtime_v1_pb2.py", "runtime_v1_pb2.pyi", "runtime_v1_pb2_grpc.py")
    stale = [
        name for name in names if (fresh_dir / name).read_bytes() != (GEN_DIR / name).read_bytes()
    ]
    assert not stale, f"run scripts/gen-proto: {', '.join(stale)} out of date with the proto"


# (message, field, number) as in kubernetes/cri-api pkg/apis/runtime/v1/api.proto: a wrong
# number would decode another field's bytes, silently.
UPSTREAM_FIELD_NUMBERS = [
    ("PodSandbox", "id", 1),
    ("PodSandbox", "metadata", 2),
    ("PodSandbox", "state", 3),
    ("PodSandbox", "created_at", 4),
    ("PodSandbox", "runtime_handler", 7),
    ("PodSandboxMetadata", "namespace", 3),
    ("PodSandboxStatusResponse", "info", 2),
    ("PodSandboxStatus", "runtime_handler", 9),
    ("PodSandboxConfig", "linux", 8),
    ("LinuxPodSandboxConfig", "cgroup_parent", 1),
    ("ImageSpec", "user_specified_image", 18),
    ("ImageSpec", "runtime_handler", 19),
    ("Container", "image_ref", 5),
    ("Container", "created_at", 7),
    ("Container", "image_id", 10),
    ("ContainerStatus", "image", 8),
    ("ContainerStatus", "image_id", 17),
    ("ContainerStats", "memory", 3),
    ("ContainerStats", "swap", 5),
    ("MemoryUsage", "rss_bytes", 5),
    ("MemoryUsage", "major_page_faults", 7),
    ("SwapUsage", "swap_usage_bytes", 3),
    ("Image", "repo_tags", 2),
    ("Image", "spec", 7),
    ("ContainerConfig", "log_path", 11),
    ("CreateContainerRequest", "sandbox_config", 3),
]


@pytest.mark.parametrize(("message", "field", "number"), UPSTREAM_FIELD_NUMBERS)
def test_field_numbers_match_upstream(message: str, field: str, number: int) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number


def test_services_live_at_the_upstream_paths() -> None:
    assert pb.DESCRIPTOR.package == "runtime.v1"
    runtime = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    assert {
        "Version",
        "ListPodSandbox",
        "PodSandboxStatus",
        "ListContainers",
        "ContainerStatus",
        "ListContainerStats",
    } <= set(runtime.methods_by_name)
    image = pb.DESCRIPTOR.services_by_name["ImageService"]
    assert {"ListImages", "ImageStatus"} <= set(image.methods_by_name)
    assert runtime.full_name == "runtime.v1.RuntimeService"
