"""A fast, tolerant parser for the Prometheus text format (0.0.4) that Kata shims serve.

Why not a per-line loop: a shim body is ~1,500 lines and is parsed for every sandbox at every
collection, so the whole body is cut into *runs* (consecutive valid sample lines of one metric
name), header lines and bad lines by a single compiled regular expression running in C. Python
code then touches each run and header once, never each sample line. Samples themselves are only
materialized when a family's `samples` are first read, so families nobody looks at (the agent's
and shim's own metrics, for the cAdvisor conversion) cost nothing beyond the validating scan.

Tolerance: every line is validated by that same scan (metric and label names, quoted label
values with their escapes, Go e-notation, plain decimals, NaN, ±Inf, optional timestamp). A line
that does not validate is counted in `malformed_lines` and skipped; the rest of the body is kept.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final, NamedTuple

METRIC_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})

# Sample-name suffixes that belong to the family without them, for these family types.
_CHILD_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*+"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*+"
# The unrolled form ("normal* (escape normal*)*") is several times faster in `re` than an
# alternation per character.
_LABEL_VALUE = r'"[^"\\\n]*+(?:\\[\\"n][^"\\\n]*+)*+"'
_PAIR = rf"[ \t]*+{_LABEL_NAME}[ \t]*+=[ \t]*+{_LABEL_VALUE}[ \t]*+"
_LABELS = rf"\{{(?:{_PAIR}(?:,{_PAIR})*+,?)?[ \t]*+\}}"
# What Go's strconv.ParseFloat and Python's float() both accept, minus hex floats.
_VALUE = (
    r"[+-]?(?:[0-9]++(?:\.[0-9]*+)?(?:[eE][+-]?[0-9]++)?"
    r"|\.[0-9]++(?:[eE][+-]?[0-9]++)?"
    r"|(?i:inf(?:inity)?|nan))"
)
_SAMPLE_REST = rf"(?:[ \t]*+{_LABELS})?[ \t]++{_VALUE}(?:[ \t]++-?[0-9]++)?[ \t]*+\n"


def _run(group: int) -> str:
    """Consecutive valid sample lines with the same metric name, that name captured as `group`."""
    return rf"({_NAME}){_SAMPLE_REST}(?:\{group}(?![a-zA-Z0-9_:]){_SAMPLE_REST})*+"


# Cuts a body into: a family block (HELP, TYPE for the same name, then the run of samples that
# follows, the shape every client library writes: one match per family in the common case); a
# lone header line; a run of consecutive valid samples of one name; another comment or a blank
# line; or a bad line. Every alternative ends at a newline, so the scan never skips text.
_STRUCTURE = re.compile(
    rf"#[ \t]++HELP[ \t]++({_NAME})(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
    rf"#[ \t]++TYPE[ \t]++\1[ \t]++(counter|gauge|histogram|summary|untyped)[ \t]*+\n"
    rf"(?:{_run(4)})?"
    rf"|#[ \t]++(HELP|TYPE)[ \t]++({_NAME})(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
    rf"|{_run(8)}"
    r"|#(?![ \t]++(?:HELP|TYPE)\b)[^\n]*+\n"
    r"|[ \t]*+\n"
    r"|([^\n]*+)\n"
)

# Applied only to runs the scan above has validated, so they can be loose.
_SAMPLE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*+)(?:[ \t]*+\{(.*)\})?[ \t]++(\S++)(?:[ \t]++(\S++))?[ \t]*+$",
    re.MULTILINE,
)
_LABEL_PAIR = re.compile(rf"({_LABEL_NAME})[ \t]*+=[ \t]*+\"([^\"\\]*+(?:\\.[^\"\\]*+)*+)\"")
_LABEL_ESCAPE = re.compile(r"\\(.)")
_LABEL_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPE = re.compile(r"\\([\\n])")


class Sample(NamedTuple):
    """One sample line: its metric name (e.g. `foo_bucket`), label pairs in body order, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int | None = None

    def label(self, key: str, default: str = "") -> str:
        for name, value in self.labels:
            if name == key:
                return value
        return default


class Family:
    """A metric family: every sample of the body that belongs to it, wherever it appeared.

    `chunks` are the family's validated sample lines exactly as the body had them (each chunk
    is one or more whole lines ending in a newline), in body order. Treat instances as
    immutable: a plain slotted class rather than a frozen dataclass because a body creates
    a hundred of them per collection, and `samples` is computed once, on first use.
    """

    __slots__ = ("_samples", "chunks", "help", "name", "type")

    def __init__(self, name: str, type: str, help: str, chunks: tuple[str, ...]) -> None:
        self.name: Final = name
        self.type: Final = type
        self.help: Final = help
        self.chunks: Final = chunks
        self._samples: tuple[Sample, ...] | None = None

    def __repr__(self) -> str:
        return f"Family(name={self.name!r}, type={self.type!r}, lines={self.line_count})"

    @property
    def line_count(self) -> int:
        return sum(chunk.count("\n") for chunk in self.chunks)

    @property
    def samples(self) -> tuple[Sample, ...]:
        if self._samples is None:
            self._samples = tuple(sample for chunk in self.chunks for sample in _parse_run(chunk))
        return self._samples

    def index(
        self, *keys: str, where: Mapping[str, Collection[str]] | None = None
    ) -> dict[tuple[str, ...], float]:
        """Values of the samples named like the family, by their values for the label `keys`.

        `where` keeps only samples whose label (one of `keys`) has one of the given values;
        asking for just what is needed is what makes this cheap. Samples lacking one of the
        keys are left out; for duplicate keys the first wins.

        Fast path for the shape every Kata shim writes (exactly these labels, in this order,
        no escapes, no timestamp): one C-level check and one C-level search per chunk. Any
        other shape falls back to the full samples, so the result never depends on how the
        body was formatted.
        """
        wanted = tuple(
            tuple(sorted(where[key])) if where and key in where else None for key in keys
        )
        shape, pattern = _canonical_patterns(self.name, keys, wanted)
        index: dict[tuple[str, ...], float] = {}
        for chunk in self.chunks:
            if shape.fullmatch(chunk) is None:
                return self._index_slowly(keys, wanted)
            for row in pattern.findall(chunk):
                if not keys:
                    index.setdefault((), float(row))
                    continue
                key = row[:-1]
                if key not in index:
                    index[key] = float(row[-1])
        return index

    def _index_slowly(
        self, keys: tuple[str, ...], wanted: tuple[tuple[str, ...] | None, ...]
    ) -> dict[tuple[str, ...], float]:
        index: dict[tuple[str, ...], float] = {}
        for sample in self.samples:
            if sample.name != self.name:
                continue
            labels = dict(sample.labels)
            if all(
                key in labels and (allowed is None or labels[key] in allowed)
                for key, allowed in zip(keys, wanted, strict=True)
            ):
                index.setdefault(tuple(labels[key] for key in keys), sample.value)
        return index


@dataclass(frozen=True, slots=True)
class ParsedBody:
    families: Mapping[str, Family]
    malformed_lines: int = 0
    first_error: str | None = None  # "line N: reason" of the first malformed line

    @property
    def sample_count(self) -> int:
        return sum(
            chunk.count("\n") for family in self.families.values() for chunk in family.chunks
        )


_PLAIN_LABEL_VALUE = r'[^"\\\n]*+'


@lru_cache(maxsize=1024)
def _canonical_patterns(
    name: str, keys: tuple[str, ...], wanted: tuple[tuple[str, ...] | None, ...]
) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(whole chunk has the canonical shape, finder of the wanted canonical lines).

    The finder is not anchored at line starts: `re` then searches for its literal prefix
    (the family name) at C speed, several times faster than trying `^` at every position.
    That is safe inside a validated chunk of this family: a bare `name{key="` cannot occur
    inside a label value (its quote would be escaped) nor in another family's line.
    """
    escaped = re.escape(name)
    if not keys:
        line = rf"{escaped}(?:\{{\}})?[ \t]++(\S++)[ \t]*+\n"
        return re.compile(rf"(?:{line})*+"), re.compile(line)
    any_labels = ",".join(f'{re.escape(key)}="{_PLAIN_LABEL_VALUE}"' for key in keys)
    shape = re.compile(rf"(?:{escaped}\{{{any_labels}\}}[ \t]++\S++[ \t]*+\n)*+")
    captured = ",".join(
        f'{re.escape(key)}="({_PLAIN_LABEL_VALUE if allowed is None else _alternatives(allowed)})"'
        for key, allowed in zip(keys, wanted, strict=True)
    )
    return shape, re.compile(rf"{escaped}\{{{captured}\}}[ \t]++(\S++)[ \t]*+\n")


def _alternatives(values: tuple[str, ...]) -> str:
    return "|".join(re.escape(value) for value in values) if values else "(?!)"


def _unescape_label(value: str) -> str:
    return _LABEL_ESCAPE.sub(lambda m: _LABEL_UNESCAPES.get(m.group(1), m.group(0)), value)


def _labels_of(text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    pairs = _LABEL_PAIR.findall(text)
    if "\\" in text:
        return tuple((name, _unescape_label(value)) for name, value in pairs)
    return tuple(pairs)


def _parse_run(chunk: str) -> tuple[Sample, ...]:
    # Histogram runs repeat label sets (_sum and _count after the buckets); parse each once.
    cache: dict[str, tuple[tuple[str, str], ...]] = {}
    samples = []
    for name, labels_text, value_text, ts_text in _SAMPLE.findall(chunk):
        labels = cache.get(labels_text)
        if labels is None:
            labels = cache[labels_text] = _labels_of(labels_text)
        samples.append(Sample(name, labels, float(value_text), int(ts_text) if ts_text else None))
    return tuple(samples)


def _owner(sample_name: str, types: Mapping[str, str]) -> str:
    """The family a sample name belongs to, given the families the headers declared."""
    if sample_name in types:
        return sample_name
    for family_type, suffixes in _CHILD_SUFFIXES.items():
        for suffix in suffixes:
            if sample_name.endswith(suffix):
                base = sample_name[: -len(suffix)]
                if types.get(base) == family_type:
                    return base
    return sample_name


def _describe_bad_line(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith("#"):
        return "malformed HELP or TYPE line"
    if "{" in stripped and "}" not in stripped:
        return "unterminated label set"
    if "{" in stripped:
        return "invalid label set or value"
    if len(stripped.split()) < 2:
        return "sample without a value"
    return "invalid metric name, value or timestamp"


def parse(text: str) -> ParsedBody:
    """Parse a whole text-format body. Never raises on bad content; see `malformed_lines`."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    has_escapes = "\\" in text

    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    first_seen: dict[str, int] = {}  # family or sample name -> position, for output order
    runs: list[tuple[str, int, int]] = []
    malformed = 0
    first_error: str | None = None

    for match in _STRUCTURE.finditer(text):
        (
            block_name,
            block_help,
            block_type,
            block_run,
            header_kind,
            header_name,
            header_text,
            run_name,
            bad,
        ) = match.groups()
        if block_name is not None:
            types.setdefault(block_name, block_type)
            if block_name not in helps:
                helps[block_name] = _help_text(block_help, has_escapes)
            if block_name not in first_seen:
                first_seen[block_name] = match.start()
            if block_run is not None:
                runs.append((block_run, match.start(4), match.end()))
        elif run_name is not None:
            runs.append((run_name, match.start(), match.end()))
        elif header_kind is not None:
            if header_kind == "TYPE":
                family_type = (header_text or "").strip()
                if family_type not in METRIC_TYPES:
                    malformed += 1
                    if first_error is None:
                        first_error = _error_at(text, match.start(), "unknown metric type")
                    continue
                types.setdefault(header_name, family_type)
            elif header_name not in helps:
                helps[header_name] = _help_text(header_text, has_escapes)
            if header_name not in first_seen:
                first_seen[header_name] = match.start()
        elif bad is not None:
            malformed += 1
            if first_error is None:
                first_error = _error_at(text, match.start(), _describe_bad_line(bad))

    chunks: dict[str, list[str]] = {}
    for run_name, start, end in runs:
        owner = _owner(run_name, types)
        owner_chunks = chunks.get(owner)
        if owner_chunks is None:
            chunks[owner] = [text[start:end]]
            if first_seen.get(owner, start) >= start:
                first_seen[owner] = start
        else:
            owner_chunks.append(text[start:end])

    names = types.keys() | helps.keys() | chunks.keys()
    families = {
        name: Family(
            name, types.get(name, "untyped"), helps.get(name, ""), tuple(chunks.get(name, ()))
        )
        for name in sorted(names, key=first_seen.__getitem__)
    }
    return ParsedBody(MappingProxyType(families), malformed, first_error)


def _help_text(raw: str | None, has_escapes: bool) -> str:
    if raw is None:
        return ""
    return _HELP_ESCAPE.sub(_help_unescape, raw) if has_escapes else raw


def _help_unescape(match: re.Match[str]) -> str:
    return "\\" if match.group(1) == "\\" else "\n"


def _error_at(text: str, position: int, reason: str) -> str:
    return f"line {text.count(chr(10), 0, position) + 1}: {reason}"
