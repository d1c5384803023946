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
from itertools import pairwise
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
# The value grammar, for readers that match sample values themselves (cadvisor.layout).
SAMPLE_VALUE = _VALUE
_TOLERANT_REST = rf"(?:[ \t]*+{_LABELS})?[ \t]++{_VALUE}(?:[ \t]++-?[0-9]++)?[ \t]*+\n"
# The shape client libraries write (no blanks around labels, one space, no timestamp, Go's or
# Rust's number formatting) is checked first and cheaply; a line that does not have it is
# checked against the whole grammar, alone.
_CANONICAL_LABELS = rf"\{{{_LABEL_NAME}={_LABEL_VALUE}(?:,{_LABEL_NAME}={_LABEL_VALUE})*+\}}"
_CANONICAL_VALUE = r"-?[0-9]++(?:\.[0-9]++)?+(?:e[+-][0-9]++)?+"
_CANONICAL_REST = rf"(?:{_CANONICAL_LABELS})? {_CANONICAL_VALUE}\n"


def _canonical_run(group: int) -> str:
    """Consecutive canonical sample lines with the same metric name, captured as `group`."""
    return rf"({_NAME}){_CANONICAL_REST}(?:\{group}(?![a-zA-Z0-9_:]){_CANONICAL_REST})*+"


def _tolerant_line(group: int) -> str:
    return rf"({_NAME}){_TOLERANT_REST}"


# Cuts a body into: a family block (HELP, TYPE for the same name, then the run of samples that
# follows: the shape every client library writes, one match per family in the common case); a
# lone header line; a run of consecutive canonical samples of one name; one valid sample line
# of another shape; another comment or a blank line; or a bad line. Every alternative ends at
# a newline, so the scan never skips text. Groups: 1-5 block (name, help, type, canonical run
# name, other-shape line name), 6-8 lone header (kind, name, text), 9 canonical run name,
# 10 other-shape line name, 11 bad line.
_STRUCTURE = re.compile(
    rf"#[ \t]++HELP[ \t]++({_NAME})(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
    rf"#[ \t]++TYPE[ \t]++\1[ \t]++(counter|gauge|histogram|summary|untyped)[ \t]*+\n"
    rf"(?:{_canonical_run(4)}|{_tolerant_line(5)})?"
    rf"|#[ \t]++(HELP|TYPE)[ \t]++({_NAME})(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
    rf"|{_canonical_run(9)}"
    rf"|{_tolerant_line(10)}"
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
_PIECE_NAME = re.compile(r"[^ \t\n]*+")  # always matches, possibly empty


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
    is one or more whole lines ending in a newline, all of one sample name), in body order;
    `canonical[i]` tells whether every line of chunk i has the shape client libraries write
    (`name{a="1",b="2"} 3`: no blanks around labels, one space, no timestamp). Treat
    instances as immutable: a plain slotted class rather than a frozen dataclass because a
    body creates a hundred of them per collection, and `samples` is computed on first use.
    """

    __slots__ = ("_keyed", "_samples", "canonical", "chunks", "help", "name", "type")

    def __init__(
        self,
        name: str,
        type: str,
        help: str,
        chunks: tuple[str, ...],
        canonical: tuple[bool, ...] | None = None,
    ) -> None:
        self.name: Final = name
        self.type: Final = type
        self.help: Final = help
        self.chunks: Final = chunks
        self.canonical: Final = canonical if canonical is not None else (False,) * len(chunks)
        self._samples: tuple[Sample, ...] | None = None
        self._keyed: dict[tuple[str, ...], bool] = {}  # keys -> every chunk has that shape

    def __repr__(self) -> str:
        return f"Family(name={self.name!r}, type={self.type!r}, lines={self.line_count})"

    def mark_keyed(self, keys: tuple[str, ...]) -> None:
        """Record that every sample has exactly the labels `keys` in that order and no escapes
        (the caller has proved it), so that `index` by them needs no further check."""
        self._keyed[keys] = True

    @property
    def line_count(self) -> int:
        return sum(chunk.count("\n") for chunk in self.chunks)

    @property
    def samples(self) -> tuple[Sample, ...]:
        if self._samples is None:
            self._samples = tuple(
                sample
                for chunk, canonical in zip(self.chunks, self.canonical, strict=True)
                for sample in (_parse_canonical_run(chunk) if canonical else None)
                or _parse_run(chunk)
            )
        return self._samples

    def index(
        self, *keys: str, where: Mapping[str, Collection[str]] | None = None
    ) -> dict[tuple[str, ...], float]:
        """Values of the samples named like the family, by their values for the label `keys`.

        `where` keeps only samples whose label (one of `keys`) has one of the given values;
        asking for just what is needed is what makes this cheap. Samples lacking one of the
        keys are left out; for duplicate keys the first wins.

        Fast path for the shape every Kata shim writes (exactly these labels, in this order):
        a few substring counts prove every line of a canonical chunk has it, then one C-level
        search finds the wanted lines. Anything else falls back to the full samples, so the
        result never depends on how the body was formatted.
        """
        wanted = tuple(
            tuple(sorted(where[key])) if where and key in where else None for key in keys
        )
        if not self._is_keyed(keys):
            return self._index_slowly(keys, wanted)
        finder = _finder(self.name, keys, wanted)
        index: dict[tuple[str, ...], float] = {}
        for chunk in self.chunks:
            for row in finder.findall(chunk):
                if not keys:
                    index.setdefault((), float(row))
                    continue
                key = row[:-1]
                if key not in index:
                    index[key] = float(row[-1])
        return index

    def label_values(self, key: str, where: tuple[str, str]) -> list[str]:
        """The values label `key` takes on the samples whose label `where[0]` is `where[1]`,
        each once, in body order: the same as the first elements of
        `index(key, where[0], where={where[0]: (where[1],)})`, cheaper. (In a chunk that is
        only assumed keyed, see `parse_selected(validate=False)`, a line must also start with
        the family's name, where `index` would take a match from the middle of a line.)

        Fast path for a family keyed by exactly `(key, where[0])` (the disks of a diskstat
        family, say): `split` at the text that ends each wanted line's labels runs in C, and
        the value of `key` is the end of each piece. A regular expression would try every line
        of the family; in a 26-disk diskstat family that was half of reading a shim body.
        """
        keys = (key, where[0])
        if not self._is_keyed(keys):
            return [found for found, _ in self.index(*keys, where={where[0]: (where[1],)})]
        line_start = f'\n{self.name}{{{key}="'
        wanted_end = f'",{where[0]}="{where[1]}"}} '
        values: dict[str, None] = {}
        for chunk in self.chunks:
            pieces = ("\n" + chunk).split(wanted_end)
            for piece, after in pairwise(pieces):
                _, found, value = piece.rpartition(line_start)
                # What index's pattern requires. A validated chunk always has it; a chunk only
                # assumed keyed may hold a broken line, which must give no name.
                if (
                    found
                    and '"' not in value
                    and "\\" not in value
                    and "\n" not in value
                    and _VALUE_ENDING_LINE.match(after)
                ):
                    values[value] = None
        return list(values)

    def _is_keyed(self, keys: tuple[str, ...]) -> bool:
        keyed = self._keyed.get(keys)
        if keyed is None:
            keyed = self._keyed[keys] = all(
                canonical and _has_label_keys(chunk, self.name, keys)
                for chunk, canonical in zip(self.chunks, self.canonical, strict=True)
            )
        return keyed

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
    def has_samples(self) -> bool:
        return any(family.chunks for family in self.families.values())


_PLAIN_LABEL_VALUE = r'[^"\\\n]*+'
_VALUE_ENDING_LINE = re.compile(r"\S++\n")


def _has_label_keys(chunk: str, name: str, keys: tuple[str, ...]) -> bool:
    """Whether every line of a canonical chunk has exactly the labels `keys`, in this order.

    Without backslashes in the chunk, a bare quote only ever delimits a label value, so `",`
    occurs exactly once between two labels and `name{k="` only at the start of a line.
    """
    if "\\" in chunk or len(keys) > 2:
        return False
    lines = chunk.count("\n")
    if not keys:
        return ("\n" + chunk).count(f"\n{name} ") == lines
    if chunk.count(f'{name}{{{keys[0]}="') != lines:
        return False
    if chunk.count('",') != lines * (len(keys) - 1):
        return False
    return all(chunk.count(f'",{key}="') == lines for key in keys[1:])


@lru_cache(maxsize=1024)
def _finder(
    name: str, keys: tuple[str, ...], wanted: tuple[tuple[str, ...] | None, ...]
) -> re.Pattern[str]:
    """Finds the wanted lines of a chunk known to have the canonical shape with `keys`.

    Not anchored at line starts: `re` then searches for its literal prefix (the family name)
    at C speed, several times faster than trying `^` at every position. That is safe inside a
    validated chunk of this family: a bare `name{key="` cannot occur inside a label value (its
    quote would be escaped) nor in another family's line.
    """
    escaped = re.escape(name)
    if not keys:
        return re.compile(rf"{escaped} (\S++)\n")
    captured = ",".join(
        f'{re.escape(key)}="({_PLAIN_LABEL_VALUE if allowed is None else _alternatives(allowed)})"'
        for key, allowed in zip(keys, wanted, strict=True)
    )
    return re.compile(rf"{escaped}\{{{captured}\}} (\S++)\n")


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


# Starting at the brace or comma before a label lets `re` skip ahead to those characters.
_CANONICAL_PAIR = re.compile(r'[{,]([a-zA-Z_][a-zA-Z0-9_]*+)="([^"]*+)"')
# Builds a Sample without the Python-level __new__ a NamedTuple has: a third of the cost of
# reading every sample of a body.
_new_tuple = tuple.__new__
_CANONICAL_VALUE_AT_END = re.compile(r" (\S++)\n")


def _parse_canonical_run(chunk: str) -> tuple[Sample, ...] | None:
    """All samples of a canonical run at C speed, or None when its shape needs `_parse_run`.

    A canonical run has one sample name, no timestamps and, without backslashes, label pairs
    that the pair pattern finds exactly; when every line has the same number of labels the
    flat list of pairs cuts into one label set per line.
    """
    if "\\" in chunk:
        return None
    lines = chunk.count("\n")
    brace = chunk.find("{")
    name_end = chunk.find(" ")
    values = map(float, _CANONICAL_VALUE_AT_END.findall(chunk))
    if brace == -1 or brace > name_end:  # no labels on the first line, so on none of them
        if chunk.count("{") != 0:
            return None
        name = chunk[:name_end]
        return tuple(_new_tuple(Sample, (name, (), value, None)) for value in values)
    name = chunk[:brace]
    pairs = _CANONICAL_PAIR.findall(chunk)
    width, extra = divmod(len(pairs), lines)
    if extra or not width:
        return None
    first_key = pairs[0][0]
    # Only a line's first label can start right after "{": lines of unequal widths would put
    # another label at one of these positions.
    if chunk.count(f'{name}{{{first_key}="') != lines or any(
        key != first_key for key, _ in pairs[::width]
    ):
        return None
    if width == 1:
        label_sets = [(pair,) for pair in pairs]
    else:
        label_sets = [tuple(pairs[i : i + width]) for i in range(0, len(pairs), width)]
    return tuple(
        _new_tuple(Sample, (name, labels, value, None))
        for labels, value in zip(label_sets, values, strict=True)
    )


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
    runs: list[tuple[str, int, int, bool]] = []  # sample name, start, end, canonical
    malformed = 0
    first_error: str | None = None

    for match in _STRUCTURE.finditer(text):
        # The last group that took part tells which alternative matched (see _STRUCTURE).
        last = match.lastindex
        if last is None:
            continue  # another comment, or a blank line
        if last <= 5:  # a family block
            name = match[1]
            types.setdefault(name, match[3])
            if name not in helps:
                helps[name] = _help_text(match[2], has_escapes)
            if name not in first_seen:
                first_seen[name] = match.start()
            if last >= 4:
                runs.append((match[last], match.start(last), match.end(), last == 4))
        elif last >= 9:
            if last == 11:
                malformed += 1
                if first_error is None:
                    first_error = _error_at(text, match.start(), _describe_bad_line(match[11]))
            else:
                runs.append((match[last], match.start(), match.end(), last == 9))
        else:  # a lone header
            kind, name, header_text = match[6], match[7], match[8]
            if kind == "TYPE":
                family_type = (header_text or "").strip()
                if family_type not in METRIC_TYPES:
                    malformed += 1
                    if first_error is None:
                        first_error = _error_at(text, match.start(), "unknown metric type")
                    continue
                types.setdefault(name, family_type)
            elif name not in helps:
                helps[name] = _help_text(header_text, has_escapes)
            if name not in first_seen:
                first_seen[name] = match.start()

    chunks: dict[str, list[tuple[str, bool]]] = {}
    owners: dict[str, str] = {}
    for run_name, start, end, canonical in runs:
        owner = owners.get(run_name)
        if owner is None:
            owner = owners[run_name] = _owner(run_name, types)
        owner_chunks = chunks.get(owner)
        if owner_chunks is None:
            chunks[owner] = [(text[start:end], canonical)]
            if first_seen.get(owner, start) >= start:
                first_seen[owner] = start
        else:
            owner_chunks.append((text[start:end], canonical))

    names = types.keys() | helps.keys() | chunks.keys()
    families = {
        name: Family(
            name,
            types.get(name, "untyped"),
            helps.get(name, ""),
            tuple(chunk for chunk, _ in chunks.get(name, ())),
            tuple(canonical for _, canonical in chunks.get(name, ())),
        )
        for name in sorted(names, key=first_seen.__getitem__)
    }
    return ParsedBody(MappingProxyType(families), malformed, first_error)


def parse_selected(
    text: str, shapes: Mapping[str, tuple[str, ...]], *, validate: bool = True
) -> ParsedBody | None:
    """Parse only the families named in `shapes`, or None when the body's layout does not allow
    it. `shapes` maps each family to the labels its samples are expected to have (in order):
    the ones the caller will `index` it by.

    Why: the agent converts six of a shim body's hundred-odd families at every collection, and
    validating the other 1,000 lines each time was most of its parsing cost. This works when
    every family is written as client libraries write it: a `# HELP` line, then its `# TYPE`
    line and samples. The stretch of the body where the names occur is cut at `# HELP` lines
    (C-speed `split`), and one search of the other pieces proves that no line starting with a
    named family lies outside its own piece. A piece whose every sample has exactly the
    expected labels and a plainly written value is validated by one match of a pattern made
    for it, and its family is marked as indexable by those labels; any other piece goes
    through `parse`. None (parse the whole body instead) when the proof fails or a selected
    line is malformed, so that errors are reported with the whole body's line numbers.

    `validate=False` skips the per-line check of a plainly written block: its samples are
    taken as they are, and only the lines its family is indexed by are ever read. A malformed
    line then either goes unread, gives a value `float` refuses (`index` raises ValueError), or
    leaves its figure out; the caller must detect the last case (see `digest_body`).
    """
    if "\r" in text:
        return None
    marker, stray_line = _selection(frozenset(shapes))
    first = text.find(marker) if marker else 0
    if first == -1:
        return ParsedBody(MappingProxyType({}))
    start = text.rfind("\n", 0, first) + 1
    end = text.find("\n", text.rfind(marker) if marker else len(text))
    section = "\n" + text[start : len(text) if end == -1 else end + 1]
    selected: list[tuple[str, str]] = []
    others: list[str] = []
    for piece in section.split("\n# HELP "):
        name = _piece_name(piece)
        if name in shapes:
            selected.append((name, piece if piece.endswith("\n") else piece + "\n"))
        else:
            others.append(piece)
    if others and stray_line.search("\n" + "\n".join(others)):
        return None  # a sample of a wanted family outside its own block
    families: dict[str, Family] = {}
    for name, piece in selected:
        keys = shapes[name]
        if validate:
            block = _keyed_block(name, keys).fullmatch(piece)
        else:
            block = _block_head(name).match(piece)
        if block is not None and name not in families:
            help_text, family_type = block[1], block[2]
            samples = block[3] if validate else piece[block.end() :]
            family = Family(
                name,
                family_type,
                _help_text(help_text, "\\" in help_text) if help_text else "",
                (samples,) if samples else (),
                (True,) if samples else (),
            )
            family.mark_keyed(keys)
            families[name] = family
            continue
        parsed = parse("# HELP " + "# HELP ".join(piece for _, piece in selected))
        if parsed.malformed_lines:
            return None
        return ParsedBody(
            MappingProxyType({n: f for n, f in parsed.families.items() if n in shapes})
        )
    return ParsedBody(MappingProxyType(families))


def is_plain_block(piece: str, name: str, keys: tuple[str, ...]) -> bool:
    """Whether `piece` (a family's block after its `# HELP `, through its last newline) is
    written as `parse_selected` reads without the full parser: a `# HELP` and a `# TYPE` line,
    then samples that all have exactly the labels `keys`, without escapes, and a value as
    client libraries write it."""
    return _keyed_block(name, keys).fullmatch(piece) is not None


@lru_cache(maxsize=64)
def _keyed_block(name: str, keys: tuple[str, ...]) -> re.Pattern[str]:
    """A family piece (after its `# HELP `) whose samples all have exactly the labels `keys`,
    without escapes, and a value as client libraries write it. Groups: help, type, samples."""
    escaped = re.escape(name)
    labels = ",".join(f'{re.escape(key)}="{_PLAIN_LABEL_VALUE}"' for key in keys)
    label_set = rf"\{{{labels}\}}" if keys else ""
    sample = rf"{escaped}{label_set} {_CANONICAL_VALUE}\n"
    return re.compile(
        rf"{escaped}(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
        rf"#[ \t]++TYPE[ \t]++{escaped}[ \t]++(counter|gauge|untyped)[ \t]*+\n"
        rf"((?:{sample})*+)"
    )


@lru_cache(maxsize=64)
def _block_head(name: str) -> re.Pattern[str]:
    """The HELP and TYPE lines that start a family piece (after its `# HELP `), as
    `_keyed_block` has them; its samples follow, unchecked. Groups: help, type."""
    escaped = re.escape(name)
    return re.compile(
        rf"{escaped}(?:[ \t]++([^\n]*+)|[ \t]*+)\n"
        rf"#[ \t]++TYPE[ \t]++{escaped}[ \t]++(counter|gauge|untyped)[ \t]*+\n"
    )


@lru_cache(maxsize=16)
def _selection(names: frozenset[str]) -> tuple[str, re.Pattern[str]]:
    """The prefix every name shares, and a pattern for a line starting with one of them."""
    low, high = min(names, default=""), max(names, default="")
    shared = 0
    while shared < min(len(low), len(high)) and low[shared] == high[shared]:
        shared += 1
    alternatives = "|".join(re.escape(name) for name in sorted(names)) or "(?!)"
    return low[:shared], re.compile(rf"\n(?:{alternatives})(?![a-zA-Z0-9_:])")


def _piece_name(piece: str) -> str:
    match = _PIECE_NAME.match(piece)
    return match[0] if match else ""


def _help_text(raw: str | None, has_escapes: bool) -> str:
    if raw is None:
        return ""
    return _HELP_ESCAPE.sub(_help_unescape, raw) if has_escapes else raw


def _help_unescape(match: re.Match[str]) -> str:
    return "\\" if match.group(1) == "\\" else "\n"


def _error_at(text: str, position: int, reason: str) -> str:
    return f"line {text.count(chr(10), 0, position) + 1}: {reason}"
