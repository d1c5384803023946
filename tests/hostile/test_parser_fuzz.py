"""The text-format parser against arbitrary and adversarial input.

Shim bodies come from inside a guest VM, which the agent must not trust: whatever a body holds,
parsing it never raises, and costs time linear in its size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse.expo.parser import parse
from pulse.katamon import KataBlock, assemble_kata
from pulse.model import Labels
from pulse.pipeline import digest_body

# Pieces of the format, so generated bodies reach deep into the grammar rather than being
# rejected at the first character.
FRAGMENTS = [
    "# HELP ",
    "# TYPE ",
    "#",
    " counter",
    " gauge",
    " histogram",
    " summary",
    " untyped",
    "kata_guest_meminfo",
    "kata_guest_cpu_time",
    "kata_guest_netdev_stat",
    "kata_guest_diskstat",
    "_bucket",
    "_sum",
    "_count",
    "{",
    "}",
    "=",
    ",",
    '"',
    "\\",
    '\\"',
    "\\\\",
    "\\n",
    'item="mem_total"',
    'cpu="0"',
    'le="+Inf"',
    " ",
    "\t",
    "\n",
    "\r\n",
    "1",
    "-1.5e+06",
    "NaN",
    "+Inf",
    "-Inf",
    "0x1p3",
    "1_000",
    " 1700000000000",
    "é",
    "\x00",
    "\ufeff",
]
bodies = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join),
    st.lists(
        st.tuples(st.sampled_from(FRAGMENTS), st.text(max_size=8)).map("".join), max_size=40
    ).map("".join),
)


def exercise(text: str) -> None:
    """Everything the agent does with a parsed body, each of which must not raise."""
    parsed = parse(text)
    assert parsed.malformed_lines >= 0
    assert (parsed.first_error is None) == (parsed.malformed_lines == 0)
    for family in parsed.families.values():
        for chunk in family.chunks:
            assert chunk.endswith("\n") and chunk in text.replace("\r\n", "\n") + "\n"
        for sample in family.samples:
            assert isinstance(sample.value, float)
        family.index()
        family.index("item")
        family.index("cpu", "item", where={"item": ["user"]})
    # What the collector and /metrics/kata do with the same body.
    digest_body(text.encode("utf-8", "surrogatepass"))
    kata = assemble_kata([KataBlock(parsed, Labels.of("a" * 64, None))])
    assert parse(kata.decode()).malformed_lines == 0  # whatever came in, the output parses


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_no_exception_escapes_the_parser(text: str) -> None:
    exercise(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_a_body_like_any_other(body: bytes) -> None:
    digest = digest_body(body)
    assert digest.malformed_lines >= 0


# --- linear time ------------------------------------------------------------------------------
#
# Not a speed test: the cost of a body is compared with the cost of one an eighth of its size,
# on this machine, in this run. Linear growth gives a ratio near 8; a quadratic step (a
# backtracking regular expression, a rescan per line) gives 64 and more.

LARGE = 10 * 1024 * 1024  # a 10 MB single line, as the issue asks
GROWTH = 8
RATIO_LIMIT = 24  # three times linear: room for cache effects, far from quadratic


def _repeat(unit: str, size: int, head: str = "", tail: str = "") -> str:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


HOSTILE: dict[str, Callable[[int], str]] = {
    "one long name": lambda n: _repeat("a", n, tail=" 1\n"),
    "one long unterminated label value": lambda n: _repeat("x", n, 'm{l="'),
    "deeply repeated labels": lambda n: _repeat('a="b",', n, "m{", "} 1\n"),
    "repeated labels, never closed": lambda n: _repeat('a="b",', n, "m{"),
    "escapes without end": lambda n: _repeat('\\"', n, 'm{l="'),
    "open braces": lambda n: _repeat("{", n, "m"),
    "blanks before the value": lambda n: _repeat(" ", n, 'm{l="v"}', "1\n"),
    "a long number": lambda n: _repeat("1", n, "m "),
    "a long comment": lambda n: _repeat("x", n, "# HELP m "),
}
# Bodies of many lines cost Python work per line; 2 MB of them show the trend as well.
MANY_LINES = 2 * 1024 * 1024
HOSTILE_LINES: dict[str, Callable[[int], str]] = {
    "many tiny bad lines": lambda n: _repeat("{\n", n),
    "many samples of one name": lambda n: _repeat('m{a="1"} 1\n', n),
    "alternating names": lambda n: _repeat('m{a="1"} 1\nn{a="1"} 1\n', n),
}


def _cost(text: str) -> float:
    """CPU seconds of the cheapest of three parses (the least disturbed by anything else)."""
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        parse(text)
        best = min(best, time.process_time() - started)
    return max(best, 1e-4)


def test_cost_is_linear_in_the_size_of_hostile_bodies() -> None:
    ratios = {}
    cases = [(LARGE, name, make) for name, make in HOSTILE.items()]
    cases += [(MANY_LINES, name, make) for name, make in HOSTILE_LINES.items()]
    for size, name, make in cases:
        small, large = make(size // GROWTH), make(size)
        assert len(large) >= size - 16
        exercise(small[:4096])  # and none of them raises
        ratios[name] = _cost(large) / _cost(small)
    too_steep = {name: round(r, 1) for name, r in ratios.items() if r > RATIO_LIMIT}
    assert not too_steep, f"cost grows faster than linearly: {too_steep}"
