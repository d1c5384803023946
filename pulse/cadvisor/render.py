"""Sample lines of one sandbox, per family, in cAdvisor's shape."""

from __future__ import annotations

from pulse.cadvisor.families import CPU_USAGE, UNTIMESTAMPED
from pulse.cadvisor.rows import Row
from pulse.expo.text import Block, escape_label_value, format_value

Labels = tuple[tuple[str, str], ...]


class LabelTexts(dict[tuple[Row, Labels], str]):
    """The label text of each series a sandbox emits, kept across its collections.

    A sandbox writes the same hundred-odd series at every collection; only the values and the
    timestamp change. Escaping and sorting each series' labels once, instead of at every
    collection, is most of what rendering a block used to cost. Keyed by row and extra labels
    only (several families share one label text), which keeps it to a few kilobytes per
    sandbox. Looked up as `texts[row, extras]`: a dict lookup in C per sample, a method call
    only for a text not made yet. Bounded: a sandbox whose devices or containers keep
    changing starts afresh past MAX_ENTRIES.
    """

    MAX_ENTRIES = 1024

    __slots__ = ()

    def __missing__(self, key: tuple[Row, Labels]) -> str:
        if len(self) >= self.MAX_ENTRIES:
            self.clear()
        row, extras = key
        pairs = [*row.labels, *((name, escape_label_value(v)) for name, v in extras)]
        text = ",".join(f'{name}="{value}"' for name, value in sorted(pairs))
        self[key] = text
        return text


class BlockWriter:
    """Collects lines family by family; each family's lines stay in the order they were added.

    Label names inside a sample are sorted, as cAdvisor sorts them; every sample has the
    collection time as its timestamp except the families cAdvisor writes without one.
    """

    __slots__ = ("_label_texts", "_lines", "_timestamp")

    def __init__(self, timestamp_ms: int, label_texts: LabelTexts | None = None) -> None:
        self._timestamp = f" {timestamp_ms}\n"
        self._lines: dict[str, list[str]] = {}
        self._label_texts = label_texts if label_texts is not None else LabelTexts()

    def add(self, family: str, row: Row, value: float | None, extras: Labels = ()) -> None:
        """Add one sample; `extras` are raw (unescaped) label pairs. None values are skipped,
        and so is a zero CPU usage, as cAdvisor omits it."""
        if value is None or (family == CPU_USAGE and value == 0):
            return
        ending = "\n" if family in UNTIMESTAMPED else self._timestamp
        label_text = self._label_texts[row, extras]
        line = f"{family}{{{label_text}}} {format_value(value)}{ending}"
        lines = self._lines.get(family)
        if lines is None:
            self._lines[family] = [line]
        else:
            lines.append(line)

    def block(self) -> Block:
        return {family: "".join(lines).encode() for family, lines in self._lines.items()}
