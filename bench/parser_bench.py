"""Side-by-side timing of our parser and prometheus_client's on a ~1,500-line simulated body,
and of the whole per-collection path (parse, extract, convert and render one sandbox).

    .venv/bin/python bench/parser_bench.py [--repeat N]

Prints figures only; no test asserts a speed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from pulse.cadvisor import ConversionOptions, convert, extract_guest
from pulse.expo.parser import parse
from pulse.katamon import KataBlock
from pulse.model import ContainerInfo, ContainerStats, Labels, PodMeta
from pulse.sim.bodies import Flavour, SimulatedGuest

NOW = 1_761_003_600.0


def best_of(repeat: int, number: int, run: Callable[[], object]) -> float:
    """The best per-call time in milliseconds over `repeat` rounds of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    guest = SimulatedGuest("a" * 64, Flavour.GO, seed=3, boot_time=NOW - 3600)
    body = guest.render(NOW)
    text = body.decode()
    lines = text.count("\n")
    ours = best_of(args.repeat, 100, lambda: parse(text))
    theirs = best_of(args.repeat, 10, lambda: list(text_string_to_metric_families(text)))
    # Reading every sample too, for a like-for-like comparison (prometheus_client always does).
    ours_all = best_of(args.repeat, 50, lambda: [f.samples for f in parse(text).families.values()])
    print(
        f"body: {lines} lines, {len(body)} bytes (Go shim, Kata 2.5+, {guest.profile.ncpu} vCPUs)"
    )
    print(f"prometheus_client text_string_to_metric_families: {theirs:.3f} ms")
    print(f"pulse parse:                  {ours:.3f} ms   ratio {theirs / ours:.1f}x")
    print(f"pulse parse + every sample:   {ours_all:.3f} ms   ratio {theirs / ours_all:.1f}x")

    options = ConversionOptions()
    stats = ContainerStats(int(NOW * 1e9), cpu_usage_core_ns=10**12, memory_working_set_bytes=10**8)
    pod = PodMeta(
        guest.sandbox_id, "web-1", "shop", "uid-1", created_at_ns=1,
        cgroup_parent="/kubepods/burstable/poduid-1", sandbox_image="registry.k8s.io/pause:3.10",
        containers=(ContainerInfo("b" * 64, "app", "nginx:1.27", "sha256:1", "CONTAINER_RUNNING", 1, stats),),  # noqa: E501
    )  # fmt: skip
    previous = guest.render(NOW - 30).decode()
    _, state = convert(
        guest.sandbox_id, extract_guest(parse(previous)), pod, NOW - 30, None, options
    )

    def collection() -> object:
        guest_sample = extract_guest(parse(body.decode()), options.disk_exclude)
        return convert(guest.sandbox_id, guest_sample, pod, NOW, state, options)

    parsed = parse(text)
    sample = extract_guest(parsed, options.disk_exclude)
    extract = best_of(args.repeat, 100, lambda: extract_guest(parse(text), options.disk_exclude))
    print(f"extract_guest (after parse):  {extract - ours:.3f} ms")
    conversion = best_of(
        args.repeat, 100, lambda: convert(guest.sandbox_id, sample, pod, NOW, state, options)
    )
    print(f"convert + render cAdvisor:    {conversion:.3f} ms")
    print(f"decode+parse+extract+convert: {best_of(args.repeat, 100, collection):.3f} ms")
    labels = Labels.of(guest.sandbox_id, pod)
    kata = best_of(args.repeat, 50, lambda: KataBlock(parsed, labels))
    print(f"katamon render (on request):  {kata:.3f} ms")


if __name__ == "__main__":
    main()
