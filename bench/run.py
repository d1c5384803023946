"""Run the whole benchmark against the simulator and write bench/RESULTS.md.

    .venv/bin/python -m bench            # full: N = 500 (memory also at 100 and 1,000)
    .venv/bin/python -m bench --quick    # CI: N = 20, one repetition, well under a minute

Every figure about the agent's process (CPU, memory) is read from /proc/<agent pid>; the
simulated fleet (shims and CRI), the load generator and the bare baseline each run in their own
process. No figure is asserted here: the targets are printed next to the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "RESULTS.md"
DEFAULT_INTERVAL = 60.0  # the agent's default --metrics-interval-secs
STEADY_AFTER_INTERVALS = 2.5  # from all sandboxes in /metrics to the CPU windows
MEMORY_TARGET_MIB = 150e6 / 2**20  # the 150 MB, in the MiB the figures are given in
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UP_LINE = re.compile(rb"^kata_pulse_sandbox_up\{[^}]*\} 1$", re.MULTILINE)
SCRAPE_COUNT = re.compile(rb"^kata_pulse_scrape_duration_seconds_count (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Settings:
    quick: bool
    sandboxes: int
    memory_sizes: tuple[int, ...]
    repeat: int
    interval: float
    cpu_window: float
    load_seconds: float
    discovery_trials: int
    parser_repeat: int
    output: Path

    @classmethod
    def of(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            n = args.sandboxes or 20
            return cls(True, n, (10, n), 1, 1.0, 3.0, 1.5, 3, 3, args.output)
        n = args.sandboxes or 500
        sizes = tuple(sorted({100, n, 1000}))
        return cls(False, n, sizes, args.repeat, 5.0, 20.0, 8.0, 40, 15, args.output)


# --- small tools ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(
    port: int, target: str, *, gzip_ok: bool = False, timeout: float = 30.0
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def try_get(port: int, target: str) -> tuple[int, bytes] | None:
    try:
        return http_get(port, target, timeout=5.0)
    except OSError:
        return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the smallest value with q% at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: utime and stime are fields 14 and 15 of the whole line.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reset_peak_rss(pid: int) -> bool:
    """Set a process's peak resident memory (VmHWM) to its current one, so that the peak read
    next is that of what happened since; whether that was done (Linux 4.0 and later)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def sampling_rss(pid: int, samples: list[int], every: float = 0.5) -> Iterator[None]:
    """Append a process's resident memory (KiB) to `samples` every `every` seconds meanwhile."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            try:
                samples.append(memory_kib(pid)["VmRSS"])
            except (OSError, KeyError):  # gone, or a zombie (no VmRSS line)
                return

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def up_sandboxes(body: bytes) -> int:
    return len(UP_LINE.findall(body))


def scrape_count(body: bytes) -> int:
    match = SCRAPE_COUNT.search(body)
    return int(match.group(1)) if match else 0


def wait_for(probe: Callable[[], bool], limit: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(every)
    return False


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the processes ----------------------------------------------------------------------------


class Fleet:
    """bench.fleet_server in its own process: N shims and a simulated CRI."""

    def __init__(self, base: Path, count: int) -> None:
        self.base = base
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_server", str(base), str(count)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        ready = json.loads(self._line())["ready"]
        self.roots = [Path(root) for root in ready["roots"]]
        self.cri = Path(ready["cri"])
        self.ids: list[str] = ready["sandboxes"]

    def _line(self) -> bytes:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet server exited ({self.process.wait()})")
        return line

    def command(self, text: str) -> dict[str, object]:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()
        reply: dict[str, object] = json.loads(self._line())
        return reply

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.process.stdin is not None
            self.process.stdin.write(b"quit\n")
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)


class Agent:
    """`python -m pulse` against the fleet, as a DaemonSet would run it."""

    def __init__(self, fleet: Fleet, interval: float, logs: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "pulse"]
        for root in fleet.roots:
            command += ["--sandbox-dir", str(root)]
        command += [
            "--runtime-endpoint",
            f"unix://{fleet.cri}",
            "--listen-address",
            f"127.0.0.1:{self.port}",
            "--metrics-interval-secs",
            f"{interval:g}",
        ]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=logs.open("ab")
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self, *, gzip_ok: bool = False) -> bytes:
        status, body = http_get(self.port, "/metrics", gzip_ok=gzip_ok)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return body

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(*closables: Fleet | Agent) -> Iterator[None]:
    try:
        yield
    finally:
        for closable in reversed(closables):
            closable.close()


# --- the figures ------------------------------------------------------------------------------


@dataclass
class Results:
    settings: Settings
    figures: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def measure_parser(settings: Settings) -> dict[str, object]:
    from prometheus_client.parser import text_string_to_metric_families

    from pulse.expo.parser import parse
    from pulse.sim.bodies import Flavour, SimulatedGuest

    text = SimulatedGuest("a" * 64, Flavour.GO, seed=3).render(1_761_003_600.0).decode()

    def per_call(run: Callable[[], object], number: int) -> float:
        times = []
        for _ in range(settings.parser_repeat):
            start = time.perf_counter()
            for _ in range(number):
                run()
            times.append((time.perf_counter() - start) / number * 1e3)
        return statistics.median(times)

    theirs = per_call(lambda: [f.samples for f in text_string_to_metric_families(text)], 5)
    ours_all = per_call(lambda: [f.samples for f in parse(text).families.values()], 20)
    ours_lazy = per_call(lambda: parse(text), 50)
    return {
        "lines": text.count("\n"),
        "bytes": len(text),
        "prometheus_client_ms": theirs,
        "pulse_every_sample_ms": ours_all,
        "pulse_parse_ms": ours_lazy,
        "ratio_every_sample": theirs / ours_all,
        "ratio_parse": theirs / ours_lazy,
    }


# Shorter than the 10 ms between two collections at 500 sandboxes and 5 s, so the figure errs
# low rather than high.
IDLE_PAUSE = 0.005


def measure_idle_penalty(settings: Settings) -> dict[str, object]:
    """CPU time of one sandbox's digest and render in this process, taken back to back and
    each after an idle pause: what this host charges work done in short bursts, as the
    agent's collections are. A control for the CPU figure, not part of it.

    Why: on a virtual machine whose cores serve other guests while this one idles, a burst
    starts with cold caches. The agent's collections are spread across the interval, so each
    one is such a burst, and the CPU figure moves with the host's neighbours (see
    docs/benchmark.md).
    """
    from pulse.config import Config
    from pulse.model import ContainerInfo, ContainerStats, PodMeta
    from pulse.pipeline import Renderer, SandboxRendering, digest_body
    from pulse.sim.bodies import Flavour, SimulatedGuest

    start = 1_761_003_600.0
    guest = SimulatedGuest("a" * 64, Flavour.GO, seed=3, boot_time=start - 3600)
    bodies = [guest.render(start + 5 * i) for i in range(20)]
    stats = ContainerStats(int(start * 1e9), cpu_usage_core_ns=10**12)
    container = ContainerInfo(
        "b" * 64, "app", "nginx:1.27", "sha256:1", "CONTAINER_RUNNING", 1, stats
    )
    pod = PodMeta(guest.sandbox_id, "web-1", "shop", "uid-1", containers=(container,))
    config = Config()
    renderer = Renderer(config)
    first = digest_body(bodies[0], config.disk_exclude, whole=False)
    rendering: SandboxRendering | None = None
    calls = 0

    def collection() -> int:
        nonlocal rendering, calls
        calls += 1
        begun = time.thread_time_ns()
        digest = digest_body(
            bodies[calls % len(bodies)],
            config.disk_exclude,
            whole=False,
            checked_against=first.guest,
        )
        rendering = renderer.render(guest.sandbox_id, pod, start + 5 * calls, digest, rendering)
        return time.thread_time_ns() - begun

    rounds, number = (2, 25) if settings.quick else (8, 50)
    for _ in range(number):
        collection()  # warm up: imports, caches of compiled patterns
    back_to_back: list[int] = []
    after_idle: list[int] = []
    # In alternating rounds, so that the host changing during the measurement changes both.
    for _ in range(rounds):
        back_to_back += [collection() for _ in range(number)]
        for _ in range(number):
            time.sleep(IDLE_PAUSE)
            after_idle.append(collection())
    hot, cold = statistics.median(back_to_back) / 1e6, statistics.median(after_idle) / 1e6
    return {
        "back_to_back_ms": hot,
        "after_idle_ms": cold,
        "ratio": cold / hot if hot > 0 else float("nan"),
    }


def measure_imports(settings: Settings) -> dict[str, object]:
    """Seconds to start Python and import the agent: the floor under start-to-ready."""
    times = []
    for _ in range(max(3, settings.repeat)):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import pulse.agent, pulse.cli"], cwd=REPO, check=True
        )
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times)}


def start_to_ready(agent: Agent, n: int, limit: float = 60.0) -> tuple[float, float]:
    """Seconds from spawning the agent to /readyz 200, and to all n sandboxes up in /metrics."""

    def ready() -> bool:
        reply = try_get(agent.port, "/readyz")
        return reply is not None and reply[0] == 200

    if not wait_for(ready, limit, every=0.01):
        raise RuntimeError("agent never became ready")
    ready_at = time.perf_counter() - agent.started

    def all_up() -> bool:
        reply = try_get(agent.port, "/metrics")
        return reply is not None and up_sandboxes(reply[1]) >= n

    if not wait_for(all_up, limit, every=0.1):
        raise RuntimeError("not every sandbox reached /metrics")
    return ready_at, time.perf_counter() - agent.started


def measure_cpu(agent: Agent, fleet: Fleet, settings: Settings) -> dict[str, object]:
    per_cycle = []
    windows = []
    for _ in range(settings.repeat):
        count_before = scrape_count(agent.metrics())
        cpu_before, fleet_before = cpu_seconds(agent.pid), fleet.cpu_seconds()
        started = time.monotonic()
        time.sleep(settings.cpu_window)
        cpu_after, fleet_after = cpu_seconds(agent.pid), fleet.cpu_seconds()
        elapsed = time.monotonic() - started
        collections = scrape_count(agent.metrics()) - count_before
        cpu = cpu_after - cpu_before
        per_cycle.append(cpu / collections * 1e3 if collections else float("nan"))
        windows.append(
            {
                "seconds": round(elapsed, 2),
                "collections": collections,
                "agent_cpu_s": round(cpu, 3),
                "agent_cpu_share": round(cpu / elapsed, 3),
                "fleet_cpu_share": round((fleet_after - fleet_before) / elapsed, 3),
            }
        )
    return {"ms_per_sandbox_cycle": statistics.median(per_cycle), "windows": windows}


def _answers_ready(port: int) -> bool:
    return (try_get(port, "/readyz") or (0,))[0] == 200


def measure_load(agent: Agent, settings: Settings, work: Path, encoding: str) -> dict[str, object]:
    """The agent's /metrics under load, against two bare servers of the same bytes in the same
    run: a Quart-Trio route (the issue's baseline) and a bare ASGI route (no Quart), in turn."""
    gzip_ok = encoding == "gzip"
    captured = work / f"captured-{encoding}.bin"
    captured.write_bytes(agent.metrics(gzip_ok=gzip_ok))
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def load(port: int) -> dict[str, object]:
        command = [
            sys.executable, "-m", "bench.loadgen", f"http://127.0.0.1:{port}/metrics",
            "--concurrency", "4", "--seconds", f"{settings.load_seconds:g}",
        ]  # fmt: skip
        out = subprocess.run(
            [*command, "--gzip"] if gzip_ok else command,
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        result: dict[str, object] = json.loads(out)
        return result

    try:
        for name, flags in (("quart", []), ("asgi", ["--asgi"])):
            port = free_port()
            command = [sys.executable, "-m", "bench.bare_server", str(captured), str(port), *flags]
            servers[name] = (
                subprocess.Popen(
                    [*command, "--gzip"] if gzip_ok else command,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=(work / "bare.log").open("ab"),
                ),
                port,
            )
            if not wait_for(partial(_answers_ready, port), 30, 0.05):
                raise RuntimeError(f"bare {name} baseline never came up")

        latencies: dict[str, list[float]] = {"agent": [], "quart": [], "asgi": []}
        rates: dict[str, list[float]] = {"agent": [], "quart": [], "asgi": []}
        errors = 0
        for _ in range(settings.repeat):
            ports = {"agent": agent.port, **{name: port for name, (_, port) in servers.items()}}
            for name, port in ports.items():
                result = load(port)
                assert isinstance(result["latencies_ms"], list)
                latencies[name] += result["latencies_ms"]
                rate = float(result["requests"]) / float(result["elapsed"])  # type: ignore[arg-type]
                rates[name].append(rate)
                errors += int(result["errors"])  # type: ignore[call-overload]
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()

    def ratio(baseline: str) -> float:
        return statistics.median(
            a / b for a, b in zip(rates["agent"], rates[baseline], strict=True)
        )

    return {
        "body_bytes": captured.stat().st_size,
        "p50_ms": percentile(latencies["agent"], 50),
        "p99_ms": percentile(latencies["agent"], 99),
        "requests": len(latencies["agent"]),
        "bare_p50_ms": percentile(latencies["quart"], 50),
        "bare_p99_ms": percentile(latencies["quart"], 99),
        "asgi_p50_ms": percentile(latencies["asgi"], 50),
        "asgi_p99_ms": percentile(latencies["asgi"], 99),
        "agent_rps": [round(r, 1) for r in rates["agent"]],
        "bare_rps": [round(r, 1) for r in rates["quart"]],
        "asgi_rps": [round(r, 1) for r in rates["asgi"]],
        "ratio": ratio("quart"),
        "asgi_ratio": ratio("asgi"),
        "errors": errors,
    }


def measure_discovery(agent: Agent, fleet: Fleet, settings: Settings) -> dict[str, object]:
    to_sandboxes: list[float] = []
    to_metrics: list[float] = []
    for _ in range(settings.discovery_trials):
        reply = fleet.command("add")
        sandbox_id, t0 = str(reply["id"]), float(reply["t0"])  # type: ignore[arg-type]
        seen_sandboxes: float | None = None
        seen_metrics: float | None = None
        deadline = time.monotonic() + 10
        while (seen_sandboxes is None or seen_metrics is None) and time.monotonic() < deadline:
            if seen_sandboxes is None:
                answer = try_get(agent.port, "/sandboxes")
                if answer and answer[0] == 200 and sandbox_id.encode() in answer[1]:
                    seen_sandboxes = time.time() - t0
            if seen_metrics is None:
                answer = try_get(agent.port, f"/metrics?sandbox={sandbox_id}")
                if answer and answer[0] == 200 and up_sandboxes(answer[1]) == 1:
                    seen_metrics = time.time() - t0
            time.sleep(0.01)
        if seen_sandboxes is None or seen_metrics is None:
            raise RuntimeError(f"sandbox {sandbox_id} not visible within 10 s")
        to_sandboxes.append(seen_sandboxes * 1e3)
        to_metrics.append(seen_metrics * 1e3)
        fleet.command(f"remove {sandbox_id}")
        time.sleep(0.2)
    return {
        "trials": settings.discovery_trials,
        "sandboxes_p50_ms": percentile(to_sandboxes, 50),
        "sandboxes_p99_ms": percentile(to_sandboxes, 99),
        "metrics_p50_ms": percentile(to_metrics, 50),
        "metrics_p99_ms": percentile(to_metrics, 99),
        "sandboxes_ms": [round(v) for v in to_sandboxes],
        "metrics_ms": [round(v) for v in to_metrics],
    }


def body_sizes(agent: Agent, n: int) -> dict[str, int]:
    plain = agent.metrics()
    packed = agent.metrics(gzip_ok=True)
    assert gzip.decompress(packed)[:64] == plain[:64]
    return {"n": n, "plain": len(plain), "gzip": len(packed)}


def measure_size(n: int, settings: Settings, work: Path) -> dict[str, object]:
    """An agent at n sandboxes: RSS over two intervals once all are collected, and body sizes."""
    fleet = Fleet(Path(tempfile.mkdtemp(prefix="kp", dir="/tmp")), n)
    agent = Agent(fleet, settings.interval, work / f"agent-{n}.log")
    with running(fleet, agent):
        start_to_ready(agent, n)
        samples = []
        until = time.monotonic() + 2 * settings.interval
        while time.monotonic() < until:
            time.sleep(0.5)
            samples.append(memory_kib(agent.pid)["VmRSS"])
        sizes = body_sizes(agent, n)
        return {
            "n": n,
            "rss_mib": statistics.median(samples) / 1024,
            "hwm_mib": memory_kib(agent.pid)["VmHWM"] / 1024,
            **{f"body_{k}": v for k, v in sizes.items() if k != "n"},
        }


def run_all(settings: Settings) -> Results:
    results = Results(settings)
    work = Path(tempfile.mkdtemp(prefix="kpb", dir="/tmp"))
    n = settings.sandboxes
    try:
        log("interpreter and import time")
        results.figures["imports"] = measure_imports(settings)
        log("parser speed")
        results.figures["parser"] = measure_parser(settings)
        log("cost of work in bursts on this host")
        results.figures["idle_penalty"] = measure_idle_penalty(settings)

        log(f"fleet of {n}")
        fleet = Fleet(Path(tempfile.mkdtemp(prefix="kp", dir="/tmp")), n)
        with running(fleet):
            starts = []
            for attempt in range(settings.repeat):
                log(f"start to ready, run {attempt + 1}")
                agent = Agent(fleet, settings.interval, work / "agent.log")
                try:
                    starts.append(start_to_ready(agent, n))
                finally:
                    if attempt < settings.repeat - 1:
                        agent.close()
            results.figures["start"] = {
                "runs": [(round(a, 3), round(b, 3)) for a, b in starts],
                "ready_s": statistics.median(a for a, _ in starts),
                "all_s": statistics.median(b for _, b in starts),
            }
            with running(agent):
                # The steady state: every sandbox collected three times. Its first collection
                # reads only what the conversion needs, its second (at a random phase of the
                # first interval) the whole body, and its third makes the layout its next ones
                # are read with (pulse/pipeline.py, wants_layout). Measured: 2.3 to
                # 2.5 ms a collection in the first 6 s after all are in /metrics, 1.9 in the
                # next 6 s, 1.3 to 1.6 from then on.
                warm_count, warm_cpu = scrape_count(agent.metrics()), cpu_seconds(agent.pid)
                time.sleep(settings.interval * STEADY_AFTER_INTERVALS)
                warm_collections = scrape_count(agent.metrics()) - warm_count
                results.figures["warmup"] = {
                    "seconds": settings.interval * STEADY_AFTER_INTERVALS,
                    "collections": warm_collections,
                    "ms_per_collection": (cpu_seconds(agent.pid) - warm_cpu)
                    / max(1, warm_collections)
                    * 1e3,
                }
                log("cpu per sandbox per cycle")
                results.figures["cpu"] = measure_cpu(agent, fleet, settings)
                results.figures["sizes"] = body_sizes(agent, n)
                # The load phases' own peak. The start's (all sandboxes found at once) is in
                # the rows by N, each measured on an agent of its own.
                load_rss: list[int] = []
                peak_since = "the load phases began" if reset_peak_rss(agent.pid) else "start"
                with sampling_rss(agent.pid, load_rss):
                    for encoding in ("gzip", "plain"):
                        log(f"/metrics latency and throughput ({encoding})")
                        results.figures[f"load_{encoding}"] = measure_load(
                            agent, settings, work, encoding
                        )
                results.figures["memory_main"] = {
                    "n": n,
                    "rss_mib": statistics.median(load_rss or [memory_kib(agent.pid)["VmRSS"]])
                    / 1024,
                    "hwm_mib": memory_kib(agent.pid)["VmHWM"] / 1024,
                    "peak_since": peak_since,
                }
                # Let the collections the load starved catch up: discovery is measured on an
                # agent in its steady state, not on one draining a backlog.
                time.sleep(settings.interval)
                log("discovery latency")
                results.figures["discovery"] = measure_discovery(agent, fleet, settings)
            # The same load at the agent's default interval: fewer snapshot versions per second,
            # so more requests find their version's body already assembled and compressed.
            log(f"/metrics latency and throughput (gzip) at the default {DEFAULT_INTERVAL:g} s")
            calm = Agent(fleet, DEFAULT_INTERVAL, work / "agent-default.log")
            with running(calm):
                start_to_ready(calm, n)
                if not settings.quick:
                    # Steady state, as for the main agent: every sandbox collected twice. Right
                    # after start, sandboxes found together were collected within moments of
                    # each other from the fleet's few pre-rendered bodies, so their values
                    # coincide and the gzip body is about half its steady size: the baseline
                    # would serve smaller bytes than the agent soon does.
                    time.sleep(DEFAULT_INTERVAL * 1.2)
                results.figures["load_default_interval"] = measure_load(
                    calm, settings, work, "gzip"
                )
        memory = []
        for size in settings.memory_sizes:
            log(f"memory at {size}")
            memory.append(measure_size(size, settings, work))
        results.figures["memory"] = memory
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# --- the report -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpu": f"{model}, {os.cpu_count()} CPUs",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(results: Results, host: dict[str, str]) -> str:
    s = results.settings
    f = results.figures
    n = s.sandboxes
    cpu, parser, start, disc = f["cpu"], f["parser"], f["start"], f["discovery"]
    warm = f["warmup"]
    assert isinstance(warm, dict)
    gz, plain, sizes, main_mem = f["load_gzip"], f["load_plain"], f["sizes"], f["memory_main"]
    memory = f["memory"]
    calm = f["load_default_interval"]
    assert isinstance(calm, dict)
    imports, idle = f["imports"], f["idle_penalty"]
    assert isinstance(imports, dict) and isinstance(idle, dict)
    assert isinstance(cpu, dict) and isinstance(parser, dict) and isinstance(start, dict)
    assert isinstance(disc, dict) and isinstance(gz, dict) and isinstance(plain, dict)
    assert isinstance(sizes, dict) and isinstance(main_mem, dict) and isinstance(memory, list)
    rss_at = {m["n"]: m for m in memory}
    rows = [
        (
            "agent CPU time per sandbox per collection cycle",
            "≤ 1.5 ms",
            f"{cpu['ms_per_sandbox_cycle']:.3f} ms",
            verdict(cpu["ms_per_sandbox_cycle"] <= 1.5),
        ),
        (
            "reference: one sandbox's digest and render in-process, CPU back to back / each "
            f"after a {IDLE_PAUSE * 1e3:g} ms pause (the host's charge for work in bursts)",
            "—",
            f"{idle['back_to_back_ms']:.3f} / {idle['after_idle_ms']:.3f} ms "
            f"({idle['ratio']:.2f}x)",
            "—",
        ),
        (
            "/metrics latency, 4 concurrent scrapers, gzip (p50 / p99)",
            "p99 ≤ 20 ms",
            f"{gz['p50_ms']:.1f} / {gz['p99_ms']:.1f} ms",
            verdict(gz["p99_ms"] <= 20),
        ),
        (
            "/metrics latency, 4 concurrent scrapers, plain (p50 / p99)",
            "p99 ≤ 20 ms",
            f"{plain['p50_ms']:.1f} / {plain['p99_ms']:.1f} ms",
            verdict(plain["p99_ms"] <= 20),
        ),
        (
            "reference: bare Hypercorn + Quart-Trio, same bytes, same load, gzip (p50 / p99)",
            "—",
            f"{gz['bare_p50_ms']:.1f} / {gz['bare_p99_ms']:.1f} ms",
            "—",
        ),
        (
            "reference: bare Hypercorn + Quart-Trio, same bytes, same load, plain (p50 / p99)",
            "—",
            f"{plain['bare_p50_ms']:.1f} / {plain['bare_p99_ms']:.1f} ms",
            "—",
        ),
        (
            "/metrics throughput vs bare Hypercorn + Quart-Trio, gzip",
            "≥ 0.8",
            f"{gz['ratio']:.2f}",
            verdict(gz["ratio"] >= 0.8),
        ),
        (
            "/metrics throughput vs bare Hypercorn + Quart-Trio, plain",
            "≥ 0.8",
            f"{plain['ratio']:.2f}",
            verdict(plain["ratio"] >= 0.8),
        ),
        (
            "stricter: /metrics throughput vs a bare ASGI route on Hypercorn (no Quart), "
            "gzip / plain",
            "recorded",
            f"{gz['asgi_ratio']:.2f} / {plain['asgi_ratio']:.2f}",
            "—",
        ),
        (
            f"at the default {DEFAULT_INTERVAL:g} s interval, gzip: latency p50 / p99; "
            "throughput ratio",
            "p99 ≤ 20 ms; ≥ 0.8",
            f"{calm['p50_ms']:.1f} / {calm['p99_ms']:.1f} ms; {calm['ratio']:.2f}",
            verdict(calm["p99_ms"] <= 20 and calm["ratio"] >= 0.8),
        ),
    ]
    for size in s.memory_sizes:
        m = rss_at[size]
        target = "≤ 150 MB" if size == n else "recorded"
        ok = verdict(m["hwm_mib"] <= MEMORY_TARGET_MIB) if size == n else "—"
        rows.append(
            (
                f"agent resident memory at N = {size} (median / peak)",
                target,
                f"{m['rss_mib']:.0f} / {m['hwm_mib']:.0f} MiB",
                ok,
            )
        )
    rows += [
        (
            f"agent resident memory at N = {n} during the load phases (median / peak)",
            "≤ 150 MB",
            f"{main_mem['rss_mib']:.0f} / {main_mem['hwm_mib']:.0f} MiB",
            verdict(main_mem["hwm_mib"] <= MEMORY_TARGET_MIB),
        ),
        (
            "discovery latency → /sandboxes (p50 / p99)",
            "p99 ≤ 250 ms",
            f"{disc['sandboxes_p50_ms']:.0f} / {disc['sandboxes_p99_ms']:.0f} ms",
            verdict(disc["sandboxes_p99_ms"] <= 250),
        ),
        (
            "discovery latency → /metrics (p50 / p99)",
            "p99 ≤ 250 ms",
            f"{disc['metrics_p50_ms']:.0f} / {disc['metrics_p99_ms']:.0f} ms",
            verdict(disc["metrics_p99_ms"] <= 250),
        ),
        (
            f"start to ready with {n} sandboxes present",
            "≤ 1 s",
            f"{start['ready_s']:.2f} s",
            verdict(start["ready_s"] <= 1.0),
        ),
        (
            "reference: start Python and import the agent (floor of start to ready)",
            "—",
            f"{imports['median_s']:.2f} s",
            "—",
        ),
        (
            f"start to all {n} sandboxes in /metrics",
            "≤ 3 s",
            f"{start['all_s']:.2f} s",
            verdict(start["all_s"] <= 3.0),
        ),
        (
            "parser speed vs prometheus_client, every sample materialised",
            "≥ 4",
            f"{parser['ratio_every_sample']:.1f}x",
            verdict(parser["ratio_every_sample"] >= 4),
        ),
        (
            "parser speed vs prometheus_client, parse only (samples on demand)",
            "≥ 4",
            f"{parser['ratio_parse']:.1f}x",
            verdict(parser["ratio_parse"] >= 4),
        ),
    ]
    smallest, largest = rss_at[min(rss_at)], rss_at[max(rss_at)]
    spread = largest["n"] - smallest["n"]
    marginal_plain = (largest["body_plain"] - smallest["body_plain"]) / spread
    marginal_gzip = (largest["body_gzip"] - smallest["body_gzip"]) / spread
    rows.append(
        (
            "bytes of /metrics per sandbox, plain / gzip",
            "recorded",
            f"{sizes['plain'] / n:,.0f} / {sizes['gzip'] / n:,.0f} B "
            f"(marginal {marginal_plain:,.0f} / {marginal_gzip:,.0f} B)",
            "—",
        )
    )

    out = [
        "# kata-pulse benchmark results",
        "",
        "Written by `.venv/bin/python -m bench"
        + (" --quick" if s.quick else "")
        + "` (see docs/benchmark.md). Do not edit by hand.",
        "",
        "## Machine and run",
        "",
        *[f"- {key}: {value}" for key, value in host.items()],
        f"- mode: {'quick (CI; figures not meaningful)' if s.quick else 'full'}; N = {n}; "
        f"repetitions = {s.repeat}; collection interval = {s.interval:g} s; "
        f"CPU window = {s.cpu_window:g} s; load run = {s.load_seconds:g} s per side",
        "- shim bodies: simulated Go shim (Kata 2.5+), about 1,500 lines / 95 kB each",
        "",
        "## Figures",
        "",
        "| figure | target | result | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "## Details",
        "",
        f"- CPU windows (agent utime+stime from /proc, divided by the collections the agent "
        f"counted in kata_pulse_scrape_duration_seconds_count; includes serving, CRI syncs and "
        f"two /metrics reads per window; nothing subtracted): {json.dumps(cpu['windows'])}",
        f"- CPU before the windows, the warm-up (the {warm['seconds']:g} s from every sandbox in "
        "/metrics: first collections, whole-body checks, layouts made): "
        f"{warm['ms_per_collection']:.3f} ms per collection over {warm['collections']} collections",
        f"- start to ready / to all in /metrics, per run (s): {start['runs']}",
        f"- load, gzip: {gz['requests']} requests, body {gz['body_bytes']:,} B, agent req/s "
        f"{gz['agent_rps']}, bare req/s {gz['bare_rps']}, bare ASGI req/s {gz['asgi_rps']} "
        f"(p50 / p99 {gz['asgi_p50_ms']:.1f} / {gz['asgi_p99_ms']:.1f} ms), errors {gz['errors']}",
        f"- load, plain: {plain['requests']} requests, body {plain['body_bytes']:,} B, agent "
        f"req/s {plain['agent_rps']}, bare req/s {plain['bare_rps']}, bare ASGI req/s "
        f"{plain['asgi_rps']} (p50 / p99 {plain['asgi_p50_ms']:.1f} / {plain['asgi_p99_ms']:.1f} "
        f"ms), errors {plain['errors']}",
        f"- discovery: {disc['trials']} sandboxes added one at a time to the running fleet; "
        "time from just before the sandbox directory is created to the first poll (every "
        "10 ms) that sees it; per trial, ms, /sandboxes: "
        f"{disc['sandboxes_ms']}; /metrics: {disc['metrics_ms']}",
        f"- parser: body of {parser['lines']} lines / {parser['bytes']:,} B; prometheus_client "
        f"{parser['prometheus_client_ms']:.2f} ms, pulse parse {parser['pulse_parse_ms']:.2f} ms, "
        f"pulse parse + every sample {parser['pulse_every_sample_ms']:.2f} ms (medians)",
        "- memory per N: "
        + "; ".join(
            f"N={m['n']}: RSS {m['rss_mib']:.1f} MiB (peak {m['hwm_mib']:.1f}), /metrics "
            f"{m['body_plain']:,} B plain, {m['body_gzip']:,} B gzip"
            for m in memory
        ),
        f"- memory at N={main_mem['n']} during the load phases (gzip, then plain; the agent "
        "loaded a third of the time, in turn with the two bare servers): RSS every 0.5 s, "
        f"median {main_mem['rss_mib']:.1f} MiB; peak since {main_mem['peak_since']} "
        f"{main_mem['hwm_mib']:.1f} MiB",
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in results.notes],
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, one repetition (CI)")
    parser.add_argument("--sandboxes", type=int, default=0, help="N (default 500; quick: 20)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (full mode)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the report file")
    parser.add_argument("--note", action="append", default=[], help="a line for the Notes")
    args = parser.parse_args(argv)
    settings = Settings.of(args)
    host = machine()
    results = run_all(settings)
    results.notes += [
        f"The machine has {os.cpu_count()} CPUs, shared with other work during the run (load "
        f"average at the start: {host['load']}); the agent, the simulated fleet, the load "
        "generator and the baseline all compete for them.",
        "The simulated fleet serves a pool of 8 pre-rendered guest bodies refreshed every "
        "second, so that its own cost stays small; the agent still fetches, parses, converts "
        "and renders every sandbox on every cycle.",
        "Why targets are missed, with profiles, and what would fix them: docs/benchmark.md "
        "(Findings).",
        *args.note,
    ]
    report = render(results, host)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    return 0
