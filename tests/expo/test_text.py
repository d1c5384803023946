"""Text rendering: Go's number formatting, escaping, and assembly of many sandboxes' blocks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.expo.parser import parse
from pulse.expo.text import (
    _format_any,
    assemble,
    escape_help,
    escape_label_value,
    format_value,
    header,
    sample_line,
)

CAPTURE = Path(__file__).parent.parent / "cadvisor" / "data" / "kubelet-cadvisor-capture.prom"


def test_every_value_of_the_kubelet_capture_is_formatted_as_go_did() -> None:
    # 8,000 values written by Go's expfmt: our formatting of the parsed float must give back
    # exactly the same text.
    sample_value = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})? (\S+)", re.MULTILINE)
    values = sample_value.findall(CAPTURE.read_text())
    assert len(values) > 8000
    mismatches = [v for v in values if format_value(float(v)) != v]
    assert mismatches == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.0, "-1"),
        (999999.0, "999999"),
        (1e6, "1e+06"),
        (1249280.0, "1.24928e+06"),
        (123456.5, "123456.5"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (2.4e-05, "2.4e-05"),
        (-3.5e-07, "-3.5e-07"),
        (1e21, "1e+21"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


@given(st.floats(allow_nan=False))
def test_formatted_values_round_trip(value: float) -> None:
    assert float(format_value(value)) == value or value == 0


@given(
    st.one_of(
        st.integers(-(10**15), 10**15),
        st.builds(lambda d, e: d * 10**e, st.integers(-999, 999), st.integers(0, 15)),
    ).map(float)
)
def test_large_integral_values_are_formatted_as_by_the_general_path(value: float) -> None:
    # The shortcut for byte counts and the like (integral, 1e6 and above) against the path
    # every other value takes.
    if abs(value) >= 1e6:
        assert format_value(value) == _format_any(value)


def test_escaping() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help('a\\b"c\nd') == 'a\\\\b"c\\nd'
    line = sample_line("m", [("a", 'x"y'), ("b", "")], 2.5, 1700000000000)
    assert line == 'm{a="x\\"y",b=""} 2.5 1700000000000\n'
    assert sample_line("m", [], 3.0) == "m 3\n"


@given(st.text(), st.text())
def test_escaped_label_values_and_help_parse_back(value: str, help_text: str) -> None:
    value = value.replace("\r", "")
    help_text = help_text.replace("\r", "")
    body = header("m", help_text, "gauge") + sample_line("m", [("l", value)], 1.0).encode()
    parsed = parse(body.decode())
    assert parsed.malformed_lines == 0
    family = parsed.families["m"]
    assert family.samples[0].labels == (("l", value),)
    assert family.help == help_text.strip(" \t") or family.help == help_text


def test_assemble_sorts_families_emits_each_header_once_and_keeps_block_order() -> None:
    headers = {"b": b"# TYPE b gauge\n", "a": b"# TYPE a gauge\n"}
    blocks = [
        {"b": b'b{s="1"} 1\n', "a": b'a{s="1"} 1\n'},
        {"a": b"", "c": b"c 3\n"},
        {"b": b'b{s="3"} 3\n'},
    ]
    assert assemble(headers, blocks) == (
        b'# TYPE a gauge\na{s="1"} 1\n# TYPE b gauge\nb{s="1"} 1\nb{s="3"} 3\nc 3\n'
    )
    assert assemble(headers, []) == b""
