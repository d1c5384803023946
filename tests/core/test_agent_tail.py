"""The agent-wide tail of /metrics: rendered once per snapshot, reused for at most a second."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from pulse.snapshot import AgentCounters, CriStatus, Snapshot
from pulse.web.app import TAIL_MAX_AGE, WebState

COUNTER = 'kata_pulse_http_requests_total{code="200",handler="/metrics"}'


def _value(tail: bytes, line_start: str) -> str:
    [line] = [x for x in tail.decode().splitlines() if x.startswith(line_start)]
    return line.rsplit(" ", 1)[1]


async def test_the_tail_follows_each_snapshot_and_its_counters_lag_at_most_max_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = WebState()
    snapshot = Snapshot(1, 1.7e9, True, {}, CriStatus("x"), AgentCounters(parse_errors_total=3))
    web.requests[("/metrics", 200)] = 1
    first = web.agent_tail(snapshot)
    assert (_value(first, COUNTER), _value(first, "kata_pulse_parse_errors_total")) == ("1", "3")
    # Requests that follow the same snapshot share its tail...
    web.requests[("/metrics", 200)] = 2
    assert web.agent_tail(snapshot) == first
    # ...for at most TAIL_MAX_AGE, so counters move even when the snapshot does not.
    await trio.sleep(TAIL_MAX_AGE)
    assert _value(web.agent_tail(snapshot), COUNTER) == "2"
    # A new snapshot gets its own tail at once.
    web.requests[("/metrics", 200)] = 3
    newer = replace(snapshot, version=2, counters=AgentCounters(parse_errors_total=7))
    tail = web.agent_tail(newer)
    assert (_value(tail, COUNTER), _value(tail, "kata_pulse_parse_errors_total")) == ("3", "7")
