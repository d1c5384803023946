"""Row identities: which cAdvisor "containers" a Kata pod is shown as, and their labels.

kubelet's cAdvisor shows a pod as a pod row (its cgroup), a sandbox row (the pause container)
and one row per app container. For a Kata pod kata-pulse emits the same shapes:

- pod row: container="", image="", name="", id = the pod cgroup as kubelet names it;
- sandbox row: container="", image = the sandbox image, name = the sandbox id,
  id = <pod id>/<sandbox id>;
- app container rows: container = its name, image = its image, name = its id,
  id = <pod id>/<container id>, for running containers the CRI gave stats for;
- without such stats, one VM row: container = Config.vm_container_name, image = the sandbox
  image, name = that container name, id = <pod id>/<that name>.
"""

from __future__ import annotations

from typing import NamedTuple

from pulse.expo.text import escape_label_value
from pulse.model import ContainerInfo, ContainerStats, PodMeta

# When the CRI did not give a cgroup parent: an id that cannot be mistaken for kubelet's.
UNKNOWN_CGROUP_ROOT = "/kata"
# When the CRI did not give the sandbox image: non-empty, since the recording rules and
# dashboards keep only rows with image!="".
FALLBACK_SANDBOX_IMAGE = "kata-sandbox"
RUNNING_STATES = frozenset({"CONTAINER_RUNNING", ""})


class Row(NamedTuple):
    """One row's identity. A tuple, not a dataclass: rows key the per-sandbox memo of label
    texts, looked up for every sample, and tuples hash and compare in C."""

    container: str
    id: str
    image: str
    name: str
    namespace: str
    pod: str

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        """The six base labels, sorted by name, values escaped."""
        return (
            ("container", escape_label_value(self.container)),
            ("id", escape_label_value(self.id)),
            ("image", escape_label_value(self.image)),
            ("name", escape_label_value(self.name)),
            ("namespace", escape_label_value(self.namespace)),
            ("pod", escape_label_value(self.pod)),
        )


def cgroup_path(cgroup_parent: str) -> str:
    """A CRI cgroup parent as a cgroup path, the way cAdvisor's id label shows it.

    cgroupfs: "/kubepods/burstable/pod<uid>" stays. systemd: a bare slice name such as
    "kubepods-burstable-pod<uid>.slice" expands into its parent slices, as systemd nests them:
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice".
    """
    parent = cgroup_parent.strip().rstrip("/")
    if "/" not in parent and parent.endswith(".slice"):
        parts = parent.removesuffix(".slice").split("-")
        return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    return parent if parent.startswith("/") else "/" + parent


def pod_id(sandbox_id: str, pod: PodMeta | None) -> str:
    if pod is not None and pod.cgroup_parent.strip("/ "):
        return cgroup_path(pod.cgroup_parent)
    if pod is not None and pod.uid:
        return f"{UNKNOWN_CGROUP_ROOT}/pod{pod.uid}"
    return f"{UNKNOWN_CGROUP_ROOT}/{sandbox_id}"


def sandbox_image(pod: PodMeta | None) -> str:
    return pod.sandbox_image if pod is not None and pod.sandbox_image else FALLBACK_SANDBOX_IMAGE


def pod_row(sandbox_id: str, pod: PodMeta | None) -> Row:
    namespace, name = (pod.namespace, pod.name) if pod is not None else ("", "")
    return Row("", pod_id(sandbox_id, pod), "", "", namespace, name)


def sandbox_row(sandbox_id: str, pod: PodMeta | None) -> Row:
    namespace, name = (pod.namespace, pod.name) if pod is not None else ("", "")
    return Row(
        "",
        f"{pod_id(sandbox_id, pod)}/{sandbox_id}",
        sandbox_image(pod),
        sandbox_id,
        namespace,
        name,
    )


def vm_row(sandbox_id: str, pod: PodMeta, container_name: str) -> Row:
    return Row(
        container_name,
        f"{pod_id(sandbox_id, pod)}/{container_name}",
        sandbox_image(pod),
        container_name,
        pod.namespace,
        pod.name,
    )


def container_rows(
    sandbox_id: str, pod: PodMeta | None
) -> list[tuple[Row, ContainerInfo, ContainerStats]]:
    """Running app containers with stats, sorted by name then id."""
    if pod is None:
        return []
    base = pod_id(sandbox_id, pod)
    rows = [
        (
            Row(
                c.name, f"{base}/{c.container_id}", c.image, c.container_id, pod.namespace, pod.name
            ),
            c,
            c.stats,
        )
        for c in pod.containers
        if c.stats is not None and c.state in RUNNING_STATES
    ]
    return sorted(rows, key=lambda row: (row[0].container, row[0].name))
