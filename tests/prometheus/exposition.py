"""A small reader of Prometheus text-format sample lines, independent of the agent's own parser.

The tests build their expectations from what the agent served; reading it with the agent's own
parser would let a shared mistake pass unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>[^\"}]*(?:\"[^\"\\]*(?:\\.[^\"\\]*)*\"[^\"}]*)*)\})?"
    r" (?P<value>\S+)(?: (?P<timestamp>-?\d+))?"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*(?:\\.[^"\\]*)*)"')
_LABEL_SET = re.compile(rf"\s*(?:{_LABEL.pattern}\s*(?:,\s*{_LABEL.pattern}\s*)*,?\s*)?")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MalformedLine(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels  # in the order served
    value: float
    timestamp_ms: int | None

    def label(self, key: str) -> str:
        """A label's value; "" when absent, which is what Prometheus makes of an empty value."""
        return dict(self.labels).get(key, "")

    @property
    def series(self) -> tuple[str, frozenset[tuple[str, str]]]:
        """The identity Prometheus gives the sample: its name and its non-empty labels."""
        return self.name, frozenset((k, v) for k, v in self.labels if v != "")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\[\\\"n]", lambda match: _UNESCAPE[match.group(0)], value)


def _labels(text: str) -> Labels:
    if _LABEL_SET.fullmatch(text) is None:
        raise MalformedLine(f"bad label set {{{text}}}")
    return tuple((key, _unescape(value)) for key, value in _LABEL.findall(text))


def parse_samples(text: str) -> Iterator[Sample]:
    """Every sample line of a text exposition (comments and blank lines skipped)."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise MalformedLine(f"line {number}: {line!r}")
        timestamp = match.group("timestamp")
        yield Sample(
            match.group("name"),
            _labels(match.group("labels") or ""),
            float(match.group("value")),
            int(timestamp) if timestamp is not None else None,
        )


def only_named(samples: Iterable[Sample], *names: str) -> list[Sample]:
    wanted = set(names)
    return [sample for sample in samples if sample.name in wanted]


def sample_line(name: str, labels: dict[str, str], value: float) -> str:
    """One sample in the text format (label values escaped as the format requires)."""
    escaped = {
        key: text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        for key, text in labels.items()
    }
    inner = ",".join(f'{key}="{text}"' for key, text in escaped.items())
    return f"{name}{{{inner}}} {value!r}"
