"""The golden cases: fixed shim bodies, pods and collection times, and the outputs they give.

Shared by tests/cadvisor/test_golden.py and scripts/regen-golden, so the files are always
regenerated exactly the way the test renders them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from pulse import katamon
from pulse.cadvisor import HEADERS, ConversionOptions, ConversionState, convert, extract_guest
from pulse.expo.parser import parse
from pulse.expo.text import Block, assemble
from pulse.model import ContainerInfo, ContainerStats, Labels, PodMeta
from pulse.sim.bodies import Flavour, SimulatedGuest

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "shim"
GOLDEN = ROOT / "tests" / "golden"

RENDERED_AT = (1_761_003_600.0, 1_761_003_630.0)  # when the two fixture bodies of a flavour were
COLLECTED_AT = (1_761_003_600.123, 1_761_003_630.123)  # when we say we collected them
BOOTED_AT = RENDERED_AT[0] - 5400
POD_CREATED_NS = int((BOOTED_AT - 2) * 1e9)
TRICKY = "tricky"


def sandbox_id(name: str) -> str:
    return hashlib.sha256(f"kata-pulse golden {name}".encode()).hexdigest()


def _container(
    name: str, image: str, cpu_seconds: float, working_set: int, faults: int, at: float
) -> ContainerInfo:
    return ContainerInfo(
        container_id=sandbox_id(f"{name} of {image}"),
        name=name,
        image=image,
        image_ref="sha256:" + sandbox_id(image),
        state="CONTAINER_RUNNING",
        created_at_ns=POD_CREATED_NS + 3_000_000_000,
        stats=ContainerStats(
            timestamp_ns=int(at * 1e9),
            cpu_usage_core_ns=int(cpu_seconds * 1e9),
            memory_working_set_bytes=working_set,
            memory_usage_bytes=working_set + 20_000_000,
            memory_rss_bytes=working_set // 2,
            memory_page_faults=faults,
            memory_major_page_faults=faults // 1000,
            memory_swap_bytes=0,
        ),
    )


@dataclass(frozen=True)
class Case:
    name: str  # a Flavour value, or TRICKY
    seed: int
    pods: tuple[PodMeta | None, PodMeta | None]  # what the CRI said at each collection

    @property
    def sandbox_id(self) -> str:
        return sandbox_id(self.name)

    def fixture(self, collection: int) -> Path:
        if self.name == TRICKY:
            return FIXTURES / "tricky.prom"
        return FIXTURES / f"{self.name}.{collection}.prom"


def _pod(name: str, **fields: object) -> PodMeta:
    uid = sandbox_id(f"uid {name}")[:32]
    uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
    values: dict[str, object] = {
        "sandbox_id": sandbox_id(name),
        "name": f"{name.replace('.', '-')}-7d9f8-x2x5q",
        "namespace": "golden",
        "uid": uid,
        "runtime_handler": "kata",
        "created_at_ns": POD_CREATED_NS,
        "state": "SANDBOX_READY",
        "cgroup_parent": f"/kubepods/burstable/pod{uid}",
        "sandbox_image": "registry.k8s.io/pause:3.10",
    }
    values.update(fields)
    return PodMeta(**values)  # type: ignore[arg-type]


def _with_containers(pod: PodMeta, at: float, cpu: float, ws: int, faults: int) -> PodMeta:
    """The pod with an app and a sidecar container whose stats cover part of the VM."""
    app = _container("app", "docker.io/library/nginx:1.27", cpu * 0.7, ws * 6 // 10, faults, at)
    sidecar = _container(
        "sidecar", "docker.io/envoyproxy/envoy:v1.31", cpu * 0.1, ws // 10, faults // 9, at
    )
    return replace(pod, containers=(app, sidecar))


def _cases() -> tuple[Case, ...]:
    t0, t1 = COLLECTED_AT
    go = _pod(Flavour.GO.value)
    ticks = _pod(Flavour.GO_TICKS.value)
    ticks = replace(
        ticks,
        # The systemd cgroup driver's slice name, and a container without stats: the VM row.
        cgroup_parent=f"kubepods-besteffort-pod{ticks.uid.replace('-', '_')}.slice",
        containers=(
            ContainerInfo(
                container_id=sandbox_id("ticks app"),
                name="app",
                image="quay.io/example/worker:0.9",
                image_ref="sha256:" + sandbox_id("worker"),
                state="CONTAINER_RUNNING",
                created_at_ns=POD_CREATED_NS,
            ),
        ),
    )
    # A runtime that did not say the cgroup parent or the sandbox image.
    rust = replace(
        _pod(Flavour.RUST.value), cgroup_parent="", sandbox_image="", runtime_handler="kata-qemu"
    )
    fc = _pod(Flavour.FIRECRACKER.value)
    fc = replace(fc, cgroup_parent=f"/kubepods/pod{fc.uid}", runtime_handler="kata-fc")
    no_guest = _pod(Flavour.NO_GUEST.value)
    return (
        Case(
            Flavour.GO.value,
            101,
            (
                _with_containers(go, t0, 2111.2, 956_325_888, 3_479_376),
                # The CRI's CPU figure is ahead of the shim's: the sandbox row's remainder
                # would go back, and must not.
                _with_containers(go, t1, 2140.0, 990_822_400, 3_505_983),
            ),
        ),
        Case(Flavour.GO_TICKS.value, 102, (ticks, ticks)),
        Case(
            Flavour.RUST.value,
            103,
            (
                _with_containers(rust, t0, 2888.2, 717_275_136, 12_769_337),
                _with_containers(rust, t1, 2896.9, 736_677_888, 12_808_042),
            ),
        ),
        Case(Flavour.FIRECRACKER.value, 104, (fc, fc)),
        Case(
            Flavour.NO_GUEST.value,
            105,
            (
                _with_containers(no_guest, t0, 1812.3, 765_579_264, 5_551_714),
                _with_containers(no_guest, t1, 1820.0, 713_494_528, 5_575_140),
            ),
        ),
        Case(TRICKY, 0, (None, None)),  # a sandbox the CRI does not know
    )


CASES = _cases()


def regenerate_fixtures() -> list[Path]:
    """Write the simulated shim bodies (tricky.prom is hand-written and left alone)."""
    written = []
    for case in CASES:
        if case.name == TRICKY:
            continue
        guest = SimulatedGuest(case.sandbox_id, Flavour(case.name), case.seed, BOOTED_AT)
        for collection, at in enumerate(RENDERED_AT):
            path = case.fixture(collection)
            path.write_bytes(guest.render(at))
            written.append(path)
    return written


def render_outputs() -> dict[str, bytes]:
    """Golden file name -> content, from the checked-in fixture bodies."""
    options = ConversionOptions()
    first: list[Block] = []
    second: list[Block] = []
    kata: list[katamon.KataBlock] = []
    for case in CASES:
        state: ConversionState | None = None
        for collection, collected_at in enumerate(COLLECTED_AT):
            parsed = parse(case.fixture(collection).read_text())
            pod = case.pods[collection]
            guest = extract_guest(parsed, options.disk_exclude)
            block, state = convert(case.sandbox_id, guest, pod, collected_at, state, options)
            (first if collection == 0 else second).append(block)
            if collection == 1:
                kata.append(katamon.KataBlock(parsed, Labels.of(case.sandbox_id, pod)))
    return {
        "cadvisor-first-collection.prom": assemble(HEADERS, first),
        "cadvisor.prom": assemble(HEADERS, second),
        "kata.prom": katamon.assemble_kata(kata),
        "kata-filtered.prom": katamon.assemble_kata(kata, ("kata_guest_cpu", "kata_shim_go_")),
    }
