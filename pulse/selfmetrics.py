"""The agent's own metrics, all named kata_pulse_*.

Per-sandbox lines are rendered into each sandbox's `own` block when its view changes (by the
cache owner); the agent-wide families are small and rendered per response, because some of them
(HTTP requests, websocket clients) change with every request.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pulse import __version__
from pulse.expo.text import escape_label_value, format_value
from pulse.model import SandboxState, ScrapeFailure
from pulse.snapshot import Block, Histogram, SandboxView, Snapshot


def _header(name: str, kind: str, help_text: str) -> bytes:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()


SANDBOX_UP = "kata_pulse_sandbox_up"
SANDBOX_LAST_SUCCESS = "kata_pulse_sandbox_last_scrape_success_timestamp_seconds"
SANDBOX_FAILURES = "kata_pulse_sandbox_scrape_failures_total"

SANDBOX_HEADERS: Mapping[str, bytes] = {
    SANDBOX_UP: _header(
        SANDBOX_UP,
        "gauge",
        "1 if the last scrape of the sandbox's shim succeeded and its data is served, else 0.",
    ),
    SANDBOX_LAST_SUCCESS: _header(
        SANDBOX_LAST_SUCCESS,
        "gauge",
        "Unix time of the last successful scrape of the sandbox's shim.",
    ),
    SANDBOX_FAILURES: _header(
        SANDBOX_FAILURES, "counter", "Failed scrapes of the sandbox's shim since it was discovered."
    ),
}


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{escape_label_value(value)}"' for key, value in pairs)


def sandbox_labels(view: SandboxView) -> str:
    pod = view.pod
    return _labels(
        (
            ("namespace", pod.namespace if pod else ""),
            ("pod", pod.name if pod else ""),
            ("sandbox_id", view.sandbox_id),
        )
    )


def render_sandbox_own(view: SandboxView) -> Block:
    labels = sandbox_labels(view)
    up = 1 if view.state in (SandboxState.UP, SandboxState.DEGRADED) and view.has_data else 0
    block = {
        SANDBOX_UP: f"{SANDBOX_UP}{{{labels}}} {up}\n".encode(),
        SANDBOX_FAILURES: f"{SANDBOX_FAILURES}{{{labels}}} {view.failures_total}\n".encode(),
    }
    if view.last_success is not None:
        block[SANDBOX_LAST_SUCCESS] = (
            f"{SANDBOX_LAST_SUCCESS}{{{labels}}} {format_value(round(view.last_success, 3))}\n"
        ).encode()
    return block


@dataclass(frozen=True, slots=True)
class WebCounters:
    """What the web app counts itself; passed in at render time."""

    requests: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (handler, code)
    websocket_clients: int = 0


def _histogram_lines(name: str, histogram: Histogram, labels: str = "") -> list[str]:
    lines = []
    cumulative = 0
    prefix = f"{labels}," if labels else ""
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else format_value(bound)
        lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}')
    suffix = f"{{{labels}}}" if labels else ""
    lines.append(f"{name}_sum{suffix} {format_value(histogram.total)}")
    lines.append(f"{name}_count{suffix} {histogram.count}")
    return lines


def _family(name: str, kind: str, help_text: str, lines: list[str]) -> str:
    body = "".join(line + "\n" for line in lines)
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{body}"


def render_agent_state(snapshot: Snapshot) -> bytes:
    """The agent-wide kata_pulse_* families (everything not in a sandbox's own block) that
    depend on the snapshot alone, so can be reused with it; `render_web` renders the rest."""
    by_root_state: dict[tuple[str, str], int] = {}
    for view in snapshot.sandboxes.values():
        key = (str(view.root), view.state.value)
        by_root_state[key] = by_root_state.get(key, 0) + 1
    counters = snapshot.counters
    cri = snapshot.cri
    build = _labels((("python_version", platform.python_version()), ("version", __version__)))
    parts = [
        _family(
            "kata_pulse_build_info",
            "gauge",
            "A metric with a constant '1' value labeled by the agent's version.",
            [f"kata_pulse_build_info{{{build}}} 1"],
        ),
        _family(
            "kata_pulse_start_time_seconds",
            "gauge",
            "Unix time the agent started.",
            [f"kata_pulse_start_time_seconds {format_value(round(snapshot.started_at, 3))}"],
        ),
        _family(
            "kata_pulse_sandboxes",
            "gauge",
            "Sandboxes known to the agent, by sandbox root and state.",
            [
                f"kata_pulse_sandboxes{{{_labels((('root', root), ('state', state)))}}} {count}"
                for (root, state), count in sorted(by_root_state.items())
            ],
        ),
        _family(
            "kata_pulse_scrape_duration_seconds",
            "histogram",
            "Duration of shim scrapes (fetch and parse), successful or not.",
            _histogram_lines("kata_pulse_scrape_duration_seconds", counters.scrape_seconds),
        ),
        _family(
            "kata_pulse_scrape_failures_total",
            "counter",
            "Failed shim scrapes, by reason.",
            [
                f'kata_pulse_scrape_failures_total{{reason="{reason.value}"}} '
                f"{counters.scrape_failures.get(reason, 0)}"
                for reason in ScrapeFailure
            ],
        ),
        _family(
            "kata_pulse_parse_errors_total",
            "counter",
            "Malformed lines skipped while parsing shim bodies.",
            [f"kata_pulse_parse_errors_total {counters.parse_errors_total}"],
        ),
        _family(
            "kata_pulse_cri_up",
            "gauge",
            "1 if the last CRI sync succeeded, else 0.",
            [f"kata_pulse_cri_up {1 if cri.up else 0}"],
        ),
        _family(
            "kata_pulse_cri_sync_duration_seconds",
            "histogram",
            "Duration of CRI syncs, successful or not.",
            _histogram_lines("kata_pulse_cri_sync_duration_seconds", cri.sync_seconds),
        ),
        _family(
            "kata_pulse_cri_sync_errors_total",
            "counter",
            "Failed CRI sync attempts.",
            [f"kata_pulse_cri_sync_errors_total {cri.sync_errors_total}"],
        ),
        _family(
            "kata_pulse_cri_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful CRI sync (0 if none yet).",
            [
                "kata_pulse_cri_last_success_timestamp_seconds "
                f"{format_value(round(cri.last_success or 0.0, 3))}"
            ],
        ),
    ]
    return "".join(parts).encode()


def render_web(web: WebCounters) -> bytes:
    """The web app's own families, which change with every request."""
    parts = [
        _family(
            "kata_pulse_http_requests_total",
            "counter",
            "HTTP requests served, by handler and status code.",
            [
                f"kata_pulse_http_requests_total{{{_labels(pairs)}}} {count}"
                for (handler, code), count in sorted(web.requests.items())
                for pairs in [(("code", str(code)), ("handler", handler))]
            ],
        ),
        _family(
            "kata_pulse_websocket_clients",
            "gauge",
            "Websocket clients connected to /ws.",
            [f"kata_pulse_websocket_clients {web.websocket_clients}"],
        ),
    ]
    return "".join(parts).encode()
