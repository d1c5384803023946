"""Pure parts of the live view: origin rule, filters, diffs, encoding, content negotiation."""

from __future__ import annotations

import json
import socket

import pytest
from werkzeug.datastructures import MultiDict

from pulse.web.stream import (
    FilterError,
    RowEncoder,
    StreamFilter,
    StreamLimits,
    abort_stalled_peers,
    diff_messages,
    heartbeat_message,
    origin_allowed,
    parse_filter,
    prefers_html,
    sandbox_row,
    snapshot_message,
)

from .support import Publisher, make_view, sandbox_id


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "node:8090", (), True),  # not a browser
        ("http://node:8090", "node:8090", (), True),
        ("http://NODE:8090", "node:8090", (), True),
        ("http://node:8091", "node:8090", (), False),
        ("http://other:8090", "node:8090", (), False),
        ("https://node", "node:443", (), True),  # TLS proxy in front, default port implied
        ("https://node", "node", (), True),
        ("http://node", "node:8090", (), False),
        ("null", "node:8090", (), False),
        ("file://", "node:8090", (), False),
        ("not a url", "node:8090", (), False),
        ("http://node:99999", "node:99999", (), False),
        ("http://node:8090", None, (), False),
        ("https://grafana.example.com", "node:8090", ("https://grafana.example.com",), True),
        ("https://grafana.example.com", "node:8090", ("https://grafana.example.com:443/",), True),
        ("http://grafana.example.com", "node:8090", ("https://grafana.example.com",), False),
        ("http://evil.example", "node:8090", ("*",), True),
        ("null", "node:8090", ("*",), True),
        ("http://[::1]:8090", "[::1]:8090", (), True),
    ],
)
def test_origin_rule(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is expected


def test_filter_parsing() -> None:
    limits = StreamLimits(max_filter_values=3)
    args = MultiDict([("sandbox", sandbox_id(1)), ("sandbox", sandbox_id(2)), ("namespace", "web")])
    parsed = parse_filter(args, limits)
    assert parsed == StreamFilter(frozenset({sandbox_id(1), sandbox_id(2)}), frozenset({"web"}))
    assert parse_filter(MultiDict(), limits) == StreamFilter()
    with pytest.raises(FilterError, match="malformed sandbox id"):
        parse_filter(MultiDict([("sandbox", "a/b")]), limits)
    with pytest.raises(FilterError, match="at most 3"):
        parse_filter(MultiDict([("namespace", str(n)) for n in range(4)]), limits)
    with pytest.raises(FilterError, match="namespace"):
        parse_filter(MultiDict([("namespace", "")]), limits)


def test_filter_matching() -> None:
    web = make_view(1, namespace="web")
    unknown = make_view(2, namespace=None)
    assert StreamFilter().matches(unknown)
    assert StreamFilter(namespaces=frozenset({"web"})).matches(web)
    assert not StreamFilter(namespaces=frozenset({"web"})).matches(unknown)
    assert StreamFilter(sandbox_ids=frozenset({sandbox_id(2)})).matches(unknown)
    both = StreamFilter(frozenset({sandbox_id(1)}), frozenset({"batch"}))
    assert not both.matches(web)


def test_rows_are_encoded_once_per_view_and_forgotten_when_gone() -> None:
    publisher = Publisher([make_view(1), make_view(2)])
    encoder = RowEncoder()
    everything = StreamFilter()
    first = encoder.rows(publisher.board.current, everything)
    again = encoder.rows(publisher.board.current, everything)
    assert all(first[sid] is again[sid] for sid in first)  # shared, not re-encoded
    publisher.touch(1, cpu_cores=3.0)
    after = encoder.rows(publisher.board.current, everything)
    assert after[sandbox_id(2)] is first[sandbox_id(2)]
    assert json.loads(after[sandbox_id(1)])["cpu_cores"] == 3.0
    publisher.drop(sandbox_id(2))
    assert set(encoder.rows(publisher.board.current, everything)) == {sandbox_id(1)}
    assert sandbox_id(2) not in encoder._rows


def test_row_carries_the_live_figures() -> None:
    row = sandbox_row(make_view(5, cpu=1.25, memory=2048.0, namespace="batch"))
    assert row["pod"] == "pod-5"
    assert row["namespace"] == "batch"
    assert row["state"] == "up"
    assert row["cpu_cores"] == 1.25
    assert row["memory_working_set_bytes"] == 2048.0
    assert row["network_receive_bytes_per_second"] == 1000.0
    assert row["disk_write_bytes_per_second"] == 512.0
    unknown = sandbox_row(make_view(6, namespace=None, cpu=None, collected_at=None))
    assert (unknown["pod"], unknown["namespace"], unknown["cpu_cores"]) == ("", "", None)


def test_diff_orders_removals_first_and_skips_unchanged_rows() -> None:
    publisher = Publisher([make_view(1), make_view(2), make_view(3)])
    encoder = RowEncoder()
    old_snapshot = publisher.board.current
    old = encoder.rows(old_snapshot, StreamFilter())
    publisher.drop(sandbox_id(1))
    publisher.touch(3, cpu_cores=9.0)
    publisher.put(make_view(4))
    new = encoder.rows(publisher.board.current, StreamFilter())
    messages = [json.loads(m) for m in diff_messages(old, new, old_snapshot.sandboxes, 7, 1.5)]
    assert [(m["type"], m.get("sandbox_id") or m["sandbox"]["sandbox_id"]) for m in messages] == [
        ("removed", sandbox_id(1)),
        ("update", sandbox_id(3)),
        ("added", sandbox_id(4)),
    ]
    assert messages[0]["pod"] == "pod-1"
    assert {m["version"] for m in messages} == {7}
    assert diff_messages(new, new, {}, 8, 2.0) == []


def test_snapshot_and_heartbeat_messages_are_json() -> None:
    publisher = Publisher([make_view(1)])
    rows = RowEncoder().rows(publisher.board.current, StreamFilter())
    snapshot = json.loads(snapshot_message(publisher.board.current, rows, 10.0, 60.0, 15.0))
    assert snapshot["type"] == "snapshot"
    assert snapshot["interval_seconds"] == 60.0
    assert snapshot["heartbeat_seconds"] == 15.0
    assert [r["sandbox_id"] for r in snapshot["sandboxes"]] == [sandbox_id(1)]
    empty = json.loads(snapshot_message(Publisher().board.current, {}, 10.0, 60.0, 15.0))
    assert empty["sandboxes"] == []
    assert json.loads(heartbeat_message(3, 12.5)) == {
        "type": "heartbeat",
        "version": 3,
        "time": 12.5,
    }


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("application/xhtml+xml", True),
        ("TEXT/HTML", True),
        ("*/*", False),
        ("", False),
        ("text/plain", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", False),
        ("text/html;q=0", False),
        ("text/html;level=1;q=0.000", False),
        ("text/html;q=0,application/xhtml+xml", True),
        ("text/html;q=oops", True),
    ],
)
def test_browsers_get_the_page(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_listening_sockets_drop_stalled_peers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        abort_stalled_peers(tcp, 12.5)
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12_500
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        abort_stalled_peers(unix, 12.5)  # not TCP: left alone, no error
