"""The kata-monitor compatible aggregation served at /metrics/kata.

Every family of every shim, each sample's labels followed by `sandbox_id`, `cri_uid`,
`cri_name`, `cri_namespace` (kata-monitor's order), the shim's Go collectors renamed
`kata_shim_go_*` / `kata_shim_process_*`, one HELP/TYPE per family, families sorted by name.

Rendering works on the parser's validated chunks with plain string replacements (C speed) for
the canonical shape every client library writes, and a few regular-expression substitutions
for anything else, instead of re-encoding sample by sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pulse.expo.parser import Family, ParsedBody
from pulse.expo.text import escape_help, escape_label_value
from pulse.model import Labels

_RENAMED_PREFIXES = ("go_", "process_")
_RENAME_PREFIX = "kata_shim_"
_SAMPLE_SUFFIXES = ("", "_sum", "_count", "_created")  # the names that can come without labels

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*+"
_LABEL_VALUE = r'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
# Lines as client libraries write them: no blanks inside or around the label set, no empty or
# trailing-comma label set, one space before the value, no timestamp.
_CANONICAL_CHUNK = re.compile(
    rf"(?:{_NAME}(?:\{{{_NAME}={_LABEL_VALUE}(?:,{_NAME}={_LABEL_VALUE})*+\}})? [^ \n]++\n)*+"
)
# In a canonical chunk, every `"} ` closes a label set, unless it is `\"} ` (an escaped quote,
# or an escaped backslash then the closing quote) or `="} ` (a value starting with "} ").
_AMBIGUOUS_LABEL_SET_ENDS = ('\\"} ', '="} ')

# The general path, applied in this order on validated lines:
# 1. `name{}` / `name{ }`: an empty label set is the same as none.
_EMPTY_LABEL_SET = re.compile(rf"^({_NAME})[ \t]*+\{{[ \t]*+\}}", re.MULTILINE)
# 2. The closing brace of a non-empty label set: the last `}` of the line, since neither the
#    value nor the timestamp can contain one (an optional trailing comma is dropped).
_LABEL_SET_END = re.compile(
    r"[ \t]*+,?[ \t]*+\}([ \t]++[^ \t\n}]++(?:[ \t]++-?[0-9]++)?[ \t]*+)$", re.MULTILINE
)
# 3. A name directly followed by its value: no label set at all.
_NO_LABEL_SET = re.compile(rf"^({_NAME})[ \t]++(?=[^ \t{{])", re.MULTILINE)


class KataBlock:
    """One sandbox's share of /metrics/kata, by emitted family name; lines are rendered only
    when asked for.

    Rendered whole, the output is about 0.3 MB a sandbox (each line gains four labels): holding
    every sandbox's lines and then their join took the agent to 440 MiB at 500 sandboxes.
    Rendered as it is sent (`kata_pieces`), a request holds the parsed bodies and about a
    megabyte of output: 190 MiB.
    """

    __slots__ = ("_families", "_injected", "sandbox_id", "types")

    def __init__(self, parsed: ParsedBody, labels: Labels) -> None:
        self.sandbox_id = labels.sandbox_id
        self._injected = identity_labels(labels)
        self._families = {
            emitted_name(family.name): family
            for family in parsed.families.values()
            if family.chunks
        }
        self.types = {name: family.type for name, family in self._families.items()}

    def header(self, name: str) -> bytes:
        return _header(name, self._families[name])

    def lines(self, name: str) -> bytes | None:
        family = self._families.get(name)
        return None if family is None else _lines(name, family, self._injected)


def emitted_name(family: str) -> str:
    return _RENAME_PREFIX + family if family.startswith(_RENAMED_PREFIXES) else family


def identity_labels(labels: Labels) -> str:
    """The labels appended to every sample, already escaped, without braces."""
    return ",".join(
        f'{name}="{escape_label_value(value)}"'
        for name, value in (
            ("sandbox_id", labels.sandbox_id),
            ("cri_uid", labels.uid),
            ("cri_name", labels.pod_name),
            ("cri_namespace", labels.namespace),
        )
    )


def _header(name: str, family: Family) -> bytes:
    return f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {family.type}\n".encode()


def _lines(name: str, family: Family, injected: str) -> bytes:
    text = "".join(family.chunks)
    if _CANONICAL_CHUNK.fullmatch(text) and not any(
        ambiguous in text for ambiguous in _AMBIGUOUS_LABEL_SET_ENDS
    ):
        lines = _inject_canonical(text, family.name, injected)
    else:
        lines = _inject_general(text, injected)
    if name != family.name:
        lines = ("\n" + lines).replace("\n" + family.name, "\n" + name)[1:]
    return lines.encode()


def _inject_canonical(text: str, family: str, injected: str) -> str:
    # A newline can only separate lines (label values escape theirs), so "\nname " is the start
    # of a sample of that name without labels.
    if text.count('"} ') == text.count("\n"):  # every line has labels
        return text.replace('"} ', f'",{injected}}} ')
    text = ("\n" + text).replace('"} ', f'",{injected}}} ')
    for suffix in _SAMPLE_SUFFIXES:
        sample = f"\n{family}{suffix} "
        if sample in text:
            text = text.replace(sample, f"\n{family}{suffix}{{{injected}}} ")
    return text[1:]


def _inject_general(text: str, injected: str) -> str:
    template = injected.replace("\\", "\\\\")  # templates interpret backslashes
    text = _EMPTY_LABEL_SET.sub(r"\1", text)
    text = _LABEL_SET_END.sub(f",{template}}}\\1", text)
    return _NO_LABEL_SET.sub(f"\\1{{{template}}} ", text)


def parse_filter_family(query_value: str | None) -> tuple[str, ...]:
    """`?filter_family=a,b` -> ("a", "b"); empty entries are ignored."""
    if not query_value:
        return ()
    return tuple(prefix.strip() for prefix in query_value.split(",") if prefix.strip())


def assemble_kata(blocks: Iterable[KataBlock], filter_family: Iterable[str] = ()) -> bytes:
    """The /metrics/kata body from the sandboxes' blocks, taken in sandbox id order."""
    return b"".join(kata_pieces(blocks, filter_family))


def kata_pieces(
    blocks: Iterable[KataBlock], filter_family: Iterable[str] = (), piece_size: int = 1 << 20
) -> Iterator[bytes]:
    """The /metrics/kata body in pieces of about `piece_size` bytes, each rendered when taken.

    When shims disagree on a family's TYPE, the TYPE (and HELP) of the sandbox with the lowest
    id is kept and the samples of the sandboxes that disagree are left out of that family:
    mixing them would make the whole exposition invalid. `filter_family` keeps only the
    families whose emitted name starts with one of the prefixes.
    """
    ordered = sorted(blocks, key=lambda kata_block: kata_block.sandbox_id)
    prefixes = tuple(filter_family)
    chosen: dict[str, tuple[str, KataBlock]] = {}  # name -> (type, the block its header is from)
    for kata_block in ordered:
        for name, family_type in kata_block.types.items():
            if name not in chosen and (not prefixes or name.startswith(prefixes)):
                chosen[name] = (family_type, kata_block)
    parts: list[bytes] = []
    size = 0
    for name in sorted(chosen):
        family_type, first = chosen[name]
        parts.append(first.header(name))
        for kata_block in ordered:
            if kata_block.types.get(name) == family_type and (lines := kata_block.lines(name)):
                parts.append(lines)
                size += len(lines)
                if size >= piece_size:
                    yield b"".join(parts)
                    parts, size = [], 0
    if parts:
        yield b"".join(parts)
