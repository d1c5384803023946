"""The agent-wide tail of /metrics: the snapshot's part once per snapshot, counters always fresh."""

from __future__ import annotations

from dataclasses import replace

from pulse.snapshot import AgentCounters, CriStatus, Snapshot
from pulse.web.app import WebState


def _value(tail: bytes, line_start: str) -> str:
    [line] = [x for x in tail.decode().splitlines() if x.startswith(line_start)]
    return line.rsplit(" ", 1)[1]


def test_request_counters_are_fresh_while_the_snapshot_part_follows_the_snapshot() -> None:
    web = WebState()
    snapshot = Snapshot(1, 1.7e9, True, {}, CriStatus("x"), AgentCounters(parse_errors_total=3))
    web.requests[("/metrics", 200)] = 1
    first = web.agent_tail(snapshot)
    web.requests[("/metrics", 200)] = 2
    second = web.agent_tail(snapshot)
    counter = 'kata_pulse_http_requests_total{code="200",handler="/metrics"}'
    assert (_value(first, counter), _value(second, counter)) == ("1", "2")
    assert _value(second, "kata_pulse_parse_errors_total") == "3"
    newer = replace(snapshot, version=2, counters=AgentCounters(parse_errors_total=7))
    assert _value(web.agent_tail(newer), "kata_pulse_parse_errors_total") == "7"
