"""Sample lines of one sandbox, per family, in cAdvisor's shape."""

from __future__ import annotations

from pulse.cadvisor.families import CPU_USAGE, UNTIMESTAMPED
from pulse.cadvisor.rows import Row
from pulse.expo.text import Block, escape_label_value, format_value

Labels = tuple[tuple[str, str], ...]


class BlockWriter:
    """Collects lines family by family; each family's lines stay in the order they were added.

    Label names inside a sample are sorted, as cAdvisor sorts them; every sample has the
    collection time as its timestamp except the families cAdvisor writes without one.
    """

    __slots__ = ("_lines", "_templates", "_timestamp")

    def __init__(self, timestamp_ms: int) -> None:
        self._timestamp = f" {timestamp_ms}\n"
        self._lines: dict[str, list[str]] = {}
        # (row, extra label names) -> the label text with a {} where each extra value goes:
        # a row's labels are escaped and sorted once, not for each of its samples.
        self._templates: dict[tuple[Row, tuple[str, ...]], str] = {}

    def _template(self, row: Row, names: tuple[str, ...]) -> str:
        key = (row, names)
        template = self._templates.get(key)
        if template is None:
            pairs = [(name, _braces(value)) for name, value in row.labels]
            pairs += [(name, "{}") for name in names]
            template = ",".join(f'{name}="{value}"' for name, value in sorted(pairs))
            self._templates[key] = template
        return template

    def add(self, family: str, row: Row, value: float | None, extras: Labels = ()) -> None:
        """Add one sample; `extras` are raw (unescaped) label pairs. None values are skipped,
        and so is a zero CPU usage, as cAdvisor omits it."""
        if value is None or (family == CPU_USAGE and value == 0):
            return
        template = self._template(row, tuple(name for name, _ in extras))
        # str.format fills the placeholders in template order, which is sorted label order.
        ordered = [escape_label_value(v) for _, v in sorted(extras)]
        label_text = template.format(*ordered) if extras else template
        ending = "\n" if family in UNTIMESTAMPED else self._timestamp
        self._lines.setdefault(family, []).append(
            f"{family}{{{label_text}}} {format_value(value)}{ending}"
        )

    def block(self) -> Block:
        return {family: "".join(lines).encode() for family, lines in self._lines.items()}


def _braces(value: str) -> str:
    """A value placed in a str.format template as literal text."""
    return value.replace("{", "{{").replace("}", "}}")
