"""A real containerd for tests: private root, state and socket, and a home-made pause image.

Nothing is pulled from a registry. A tiny static C program (it pauses until signalled) is
compiled with gcc, packed into docker-archive image tarballs built here in Python, and imported
with `ctr -n k8s.io images import`. containerd's CRI plugin uses one of them as sandbox_image;
the other is the app image a test container runs. No CNI is configured, so pods use the host
network namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pulse.cri.client import IMAGE_SERVICE, RUNTIME_SERVICE, CriClient
from pulse.cri.gen import runtime_v1_pb2 as pb

PAUSE_IMAGE = "localhost/kata-pulse/pause:test"
APP_IMAGE = "localhost/kata-pulse/app:1.0"

PAUSE_SOURCE = r"""
#include <signal.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) pause();
}
"""


class ContainerdUnavailable(Exception):
    """containerd (or a tool it needs) cannot run here; the message says why."""


def build_pause_binary(workdir: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ContainerdUnavailable("gcc not found: cannot build the pause binary")
    source = workdir / "pause.c"
    source.write_text(PAUSE_SOURCE)
    binary = workdir / "pause"
    result = subprocess.run(
        [gcc, "-static", "-Os", "-s", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ContainerdUnavailable(f"gcc -static failed: {result.stderr.strip()}")
    return binary


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def docker_archive(binary: bytes, repo_tag: str, *, variant: str) -> bytes:
    """A `docker save`-style tarball of a one-layer image whose entrypoint is /pause.

    `variant` goes into the image config, so two images built from the same binary get
    different IDs (as two real images would).
    """
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_member(tar, "pause", binary, mode=0o755)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Entrypoint": ["/pause"],
            "Labels": {"io.kata-pulse.test.variant": variant},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "kata-pulse tests"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": ["layer.tar"]}]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _tar_member(tar, "layer.tar", layer_bytes)
        _tar_member(tar, config_name, config_bytes)
        _tar_member(tar, "manifest.json", json.dumps(manifest).encode())
    return archive.getvalue()


def containerd_config(base: Path) -> str:
    # overlayfs may be unavailable inside the CI container: "native" copies, which is fine for
    # a one-file image. No CNI: pods use the host network namespace.
    return f"""
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{base / "containerd.sock"}"

[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{base / "cni-bin"}"
    conf_dir = "{base / "cni-conf"}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{base / "runc"}"
"""


@dataclass
class Containerd:
    base: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        """Parent cgroup for test pods: unique, so teardown removes exactly what we made."""
        return f"/kata-pulse-test-{self.base.name}"

    @property
    def log_path(self) -> Path:
        return self.base / "containerd.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ctr(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def import_image(self, archive: bytes) -> None:
        path = self.base / "image.tar"
        path.write_bytes(archive)
        self.ctr("images", "import", "--snapshotter", "native", str(path))


def _wait_for_socket(process: subprocess.Popen[bytes], socket: Path, limit: float) -> str | None:
    """None when the socket accepts; else why containerd did not come up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"containerd exited with status {process.returncode}"
        if socket.is_socket():
            return None
        time.sleep(0.05)
    return f"containerd socket {socket} did not appear within {limit:g}s"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _remove_all_pods(containerd: Containerd) -> None:
    """Stop every task still running in the namespace, so no shim outlives the test."""
    with contextlib.suppress(Exception):
        for line in containerd.ctr("tasks", "ls", "-q").split():
            with contextlib.suppress(Exception):
                containerd.ctr("tasks", "kill", "-s", "SIGKILL", line)


@contextlib.contextmanager
def running_containerd() -> Iterator[Containerd]:
    """Start a private containerd with both test images imported; raise ContainerdUnavailable
    (with containerd's log) when it cannot run here."""
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if shutil.which(tool) is None:
            raise ContainerdUnavailable(f"{tool} not found in PATH")
    if os.geteuid() != 0:
        raise ContainerdUnavailable("containerd needs root")
    # Unix socket paths are limited to 107 bytes: keep the base short.
    base = Path(tempfile.mkdtemp(prefix="kp-ctrd-", dir="/tmp"))
    made_by_shims = [d for d in SHIM_SOCKET_DIRS if not d.exists()]
    try:
        for sub in ("cni-bin", "cni-conf"):
            (base / sub).mkdir()
        binary = build_pause_binary(base).read_bytes()
        config = base / "config.toml"
        config.write_text(containerd_config(base))
        log = (base / "containerd.log").open("wb")
        process = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        containerd = Containerd(base, process)
        try:
            problem = _wait_for_socket(process, containerd.socket, 30)
            if problem is not None:
                raise ContainerdUnavailable(f"{problem}\n{containerd.log_tail()}")
            containerd.import_image(docker_archive(binary, PAUSE_IMAGE, variant="pause"))
            containerd.import_image(docker_archive(binary, APP_IMAGE, variant="app"))
            yield containerd
        finally:
            _remove_all_pods(containerd)
            _stop(process)
            _remove_cgroups(containerd.cgroup_root)
    finally:
        _unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)
        _remove_empty(made_by_shims)


# The runc shim puts its sockets under /run/containerd/s whatever containerd's own paths are.
SHIM_SOCKET_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories the test's shims made (deepest first), if they are empty: a
    containerd of the machine's own may have started using them meanwhile."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _unmount_below(base: Path) -> None:
    """Lazily unmount anything containerd left mounted under base (sandbox shm, rootfs)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(str(base))), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _remove_cgroups(relative: str) -> None:
    """rmdir the test cgroup tree in every v1 hierarchy (and v2), deepest first."""
    root = Path("/sys/fs/cgroup")
    candidates = [root / relative.lstrip("/")]
    with contextlib.suppress(OSError):
        candidates += [hierarchy / relative.lstrip("/") for hierarchy in root.iterdir()]
    for top in candidates:
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


@dataclass(frozen=True)
class RunningPod:
    sandbox_id: str
    container_id: str
    name: str
    namespace: str
    uid: str
    container_name: str
    image: str  # the human name the container was created from (by ID)
    image_id: str
    cgroup_parent: str


async def start_pod(
    client: CriClient, containerd: Containerd, *, name: str, namespace: str, uid: str
) -> RunningPod:
    """Run a pod sandbox and one app container through the CRI, the way kubelet does."""
    status = await client.call(
        IMAGE_SERVICE,
        "ImageStatus",
        pb.ImageStatusRequest(image=pb.ImageSpec(image=APP_IMAGE)),
        pb.ImageStatusResponse,
    )
    image_id = status.image.id
    if not image_id:
        raise RuntimeError(f"{APP_IMAGE} is not known to containerd's CRI")
    cgroup_parent = f"{containerd.cgroup_root}/pod{uid}"
    sandbox_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname="",  # host network namespace: no hostname of its own
        log_directory=str(containerd.base / "pod-logs" / uid),
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
            ),
        ),
    )
    sandbox = await client.call(
        RUNTIME_SERVICE,
        "RunPodSandbox",
        pb.RunPodSandboxRequest(config=sandbox_config),
        pb.RunPodSandboxResponse,
        time_limit=120,
    )
    container_name = "app"
    container_config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=container_name, attempt=0),
        # kubelet passes the image ID, not the name: the runtime then lists sha256:...
        image=pb.ImageSpec(image=image_id),
        log_path=f"{container_name}/0.log",
        labels={"io.kubernetes.container.name": container_name},
    )
    created = await client.call(
        RUNTIME_SERVICE,
        "CreateContainer",
        pb.CreateContainerRequest(
            pod_sandbox_id=sandbox.pod_sandbox_id,
            config=container_config,
            sandbox_config=sandbox_config,
        ),
        pb.CreateContainerResponse,
        time_limit=120,
    )
    await client.call(
        RUNTIME_SERVICE,
        "StartContainer",
        pb.StartContainerRequest(container_id=created.container_id),
        pb.StartContainerResponse,
        time_limit=120,
    )
    return RunningPod(
        sandbox_id=sandbox.pod_sandbox_id,
        container_id=created.container_id,
        name=name,
        namespace=namespace,
        uid=uid,
        container_name=container_name,
        image=APP_IMAGE,
        image_id=image_id,
        cgroup_parent=cgroup_parent,
    )


async def remove_pod(client: CriClient, pod: RunningPod) -> None:
    """Stop and remove the pod (its container with it), as kubelet does on deletion."""
    for method, request, response in (
        (
            "StopPodSandbox",
            pb.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id),
            pb.StopPodSandboxResponse,
        ),
        (
            "RemovePodSandbox",
            pb.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id),
            pb.RemovePodSandboxResponse,
        ),
    ):
        await client.call(RUNTIME_SERVICE, method, request, response, time_limit=60)
