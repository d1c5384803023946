"""One line per event, logfmt by default and JSON on request."""

from __future__ import annotations

import io
import json
import logging

from pulse.logs import configure, get_logger


def _emit(json_format: bool) -> str:
    stream = io.StringIO()
    root = logging.getLogger("pulse")
    saved = (root.level, root.propagate, list(root.handlers))
    configure("debug", json_format, stream)
    try:
        get_logger("collector").warning(
            "scrape failed", sandbox_id="abc", error='bad "quote"\nnext line', count=3
        )
    finally:
        # Leave the logger tree as found: a DEBUG level left behind makes every later test
        # record (and keep, in pytest's log capture) every debug line.
        root.setLevel(saved[0])
        root.propagate, root.handlers[:] = saved[1], saved[2]
    return stream.getvalue()


def test_logfmt_line_keeps_fields_escaped_on_one_line() -> None:
    line = _emit(json_format=False)
    assert line.count("\n") == 1
    assert "level=warning logger=collector" in line
    assert 'msg="scrape failed" sandbox_id=abc error="bad \\"quote\\"\\nnext line" count=3' in line


def test_json_line_parses_with_typed_fields() -> None:
    line = _emit(json_format=True)
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["msg"] == "scrape failed"
    assert record["error"] == 'bad "quote"\nnext line'
    assert record["count"] == 3 and record["level"] == "warning"
