"""The chart's privilege reasoning, checked on the real kernel.

The chart runs the agent as uid 0 with every capability dropped and the host directories mounted
read-only, claiming that this is enough to connect to the root-owned 0600 shim and CRI sockets
(ownership, not CAP_DAC_OVERRIDE, grants the access). Here the security context the chart renders is
applied to a real process with setpriv (no capabilities at all, no_new_privs), which connects to a
real listening Unix socket through a read-only bind mount made in a private mount namespace, the way
the kubelet mounts a hostPath volume. The counter-checks show that the check is really enforced: the
same process is refused on a socket owned by someone else, and a non-root uid on the root-owned one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart_support import Helm

# Stdlib-only client, run by the system interpreter: a venv under /root is not executable by
# another uid. It reports its capabilities, the connect outcome, and whether the mount is writable.
CLIENT = """
import errno, json, socket, sys
path, probe = sys.argv[1], sys.argv[2]
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\\t" in line)
result = {"cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
          "no_new_privs": status.get("NoNewPrivs", "").strip()}
client = socket.socket(socket.AF_UNIX)
try:
    client.connect(path)
    result["connect"] = "ok"
except OSError as err:
    result["connect"] = errno.errorcode[err.errno]
try:
    open(probe, "w").close()
    result["write"] = "ok"
except OSError as err:
    result["write"] = errno.errorcode[err.errno]
print(json.dumps(result))
"""
SYSTEM_PYTHON = Path("/usr/bin/python3")
OTHER_UID = 1234


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} (util-linux) is needed to apply the chart's security context")
    return found


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to the chart's uid needs root (CI runs as root)")
    if not SYSTEM_PYTHON.exists():
        pytest.fail(f"{SYSTEM_PYTHON} is needed: a client every uid can execute")


def chart_identity(helm: Helm, sets: list[str]) -> Identity:
    manifests = helm.template(sets=sets)
    daemonset = next(m for m in manifests if m["kind"] == "DaemonSet")
    pod: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    context = pod["containers"][0]["securityContext"]
    # What setpriv applies below: no capability at all, and no way to regain any.
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    pod_context = pod["securityContext"]
    return Identity(
        pod_context["runAsUser"],
        pod_context["runAsGroup"],
        tuple(pod_context.get("supplementalGroups", ())),
    )


@pytest.fixture
def host_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, so another uid could not even reach it.
    with tempfile.TemporaryDirectory(prefix="kata-pulse-priv-", dir="/tmp") as name:
        root = Path(name)
        root.chmod(0o711)
        yield root


@pytest.fixture
def listening_socket(host_dir: Path) -> Iterator[Path]:
    """A root-owned 0600 socket in a root-owned 0700 directory, like a shim's."""
    sandbox = host_dir / "sbs" / "0123abcd"
    sandbox.mkdir(parents=True)
    sandbox.parent.chmod(0o700)
    sandbox.chmod(0o700)
    path = sandbox / "shim-monitor.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)  # connect() completes against the backlog; nothing needs to accept
    path.chmod(0o600)
    os.chown(path, 0, 0)
    yield path
    server.close()


def connect_through_read_only_mount(
    identity: Identity, socket_path: Path, host_root: Path
) -> dict[str, str]:
    """Bind-mount host_root read-only at a new path, then connect as identity with no caps."""
    mounted = Path(tempfile.mkdtemp(prefix="kata-pulse-mnt-", dir="/tmp"))
    try:
        mounted.chmod(0o711)
        inside = mounted / socket_path.relative_to(host_root)
        groups = ",".join(map(str, identity.groups)) if identity.groups else None
        setpriv = [
            tool("setpriv"),
            f"--reuid={identity.uid}",
            f"--regid={identity.gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
        script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
        command = [
            tool("unshare"), "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", str(host_root), str(mounted),
            *setpriv, str(SYSTEM_PYTHON), "-c", CLIENT, str(inside), str(inside.parent / "probe"),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            pytest.fail(f"could not run the client in a mount namespace:\n{result.stderr}")
        outcome: dict[str, str] = json.loads(result.stdout)
        return outcome
    finally:
        mounted.rmdir()


def test_chart_identity_connects_to_a_root_owned_socket_without_capabilities(
    helm: Helm, listening_socket: Path, host_dir: Path
) -> None:
    identity = chart_identity(helm, [])
    assert identity.uid == 0
    outcome = connect_through_read_only_mount(identity, listening_socket, host_dir)
    assert outcome["cap_eff"] == "0000000000000000"
    assert outcome["cap_prm"] == "0000000000000000"
    assert outcome["no_new_privs"] == "1"
    assert outcome["connect"] == "ok"
    # The mount really is read-only: the process, root and owner of the directory, cannot write.
    assert outcome["write"] == errno.errorcode[errno.EROFS]


def test_without_capabilities_root_is_refused_on_a_socket_it_does_not_own(
    helm: Helm, listening_socket: Path, host_dir: Path
) -> None:
    # Shows the DAC check is enforced: ownership is what lets the agent in, not a capability.
    os.chown(listening_socket, OTHER_UID, OTHER_UID)
    outcome = connect_through_read_only_mount(chart_identity(helm, []), listening_socket, host_dir)
    assert outcome["connect"] == errno.errorcode[errno.EACCES]


def test_a_non_root_user_is_refused_on_the_root_owned_socket(
    helm: Helm, listening_socket: Path, host_dir: Path
) -> None:
    # Why the chart does not default to a non-root uid. The directory is opened up so the refusal
    # comes from the socket itself.
    listening_socket.parent.chmod(0o711)
    listening_socket.parent.parent.chmod(0o711)
    identity = chart_identity(helm, ["runAsUser=2001", "runAsGroup=2001"])
    outcome = connect_through_read_only_mount(identity, listening_socket, host_dir)
    assert outcome["connect"] == errno.errorcode[errno.EACCES]


def test_run_as_user_override_works_where_the_node_grants_a_socket_group(
    helm: Helm, listening_socket: Path, host_dir: Path
) -> None:
    # The documented alternative: the node gives the sockets a group, the chart adds that group.
    listening_socket.parent.chmod(0o711)
    listening_socket.parent.parent.chmod(0o711)
    os.chown(listening_socket, 0, 2002)
    listening_socket.chmod(0o660)
    sets = ["runAsUser=2001", "runAsGroup=2001", "supplementalGroups={2002}"]
    identity = chart_identity(helm, sets)
    assert identity.groups == (2002,)
    outcome = connect_through_read_only_mount(identity, listening_socket, host_dir)
    assert outcome["connect"] == "ok"
    assert outcome["cap_eff"] == "0000000000000000"
