"""Writing the Prometheus text format (0.0.4) exactly as Go's client_golang writes it.

cAdvisor and the Kata shims are Go programs; matching their number formatting byte for byte
keeps golden files stable and the output indistinguishable from kubelet's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence

# A Block: one sandbox's sample lines per family (each line ends with "\n").
Block = Mapping[str, bytes]

_INTEGER_DIGITS_LIMIT = 1e6  # Go's shortest %g switches to e-notation at exponent 6
_EXACT_INTEGER_LIMIT = 1e15


def format_value(value: float) -> str:
    """Like Go's strconv.FormatFloat(value, 'g', -1, 64), with expfmt's special cases.

    Shortest round-trip digits (Python's repr gives the same digits as Go), e-notation when
    the decimal exponent is below -4 or at least 6, exponent with a sign and two digits at
    least: 1.24928e+06, 2.4e-05, 57736.472, 20480.
    """
    value = float(value)  # an int is a valid argument, but lacks is_integer() on Python 3.11
    # The common cases first, with as few calls as possible: this runs for every sample the
    # agent renders. is_integer() is False for NaN and the infinities.
    if value.is_integer():
        if -_INTEGER_DIGITS_LIMIT < value < _INTEGER_DIGITS_LIMIT:
            return str(int(value))  # also "0" for -0, as expfmt does
        if -_EXACT_INTEGER_LIMIT < value < _EXACT_INTEGER_LIMIT:
            # Byte counts and the like: below 1e15 an integral float's decimal digits are
            # exactly its shortest round-trip digits, so %e asked for all its significant
            # digits writes Go's text (exponent signed, two digits at least).
            significant = len(str(int(abs(value))).rstrip("0"))
            return f"{value:.{significant - 1}e}"
    elif 1e-4 <= value < _INTEGER_DIGITS_LIMIT or -_INTEGER_DIGITS_LIMIT < value <= -1e-4:
        return repr(value)  # Python's repr is Go's shortest %g in this range
    return _format_any(value)


def _format_any(value: float) -> str:
    """format_value without its shortcuts: from the shortest round-trip digits of repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    integer_part, _, fraction = mantissa.partition(".")
    all_digits = integer_part + fraction
    leading_zeros = len(all_digits) - len(all_digits.lstrip("0"))
    digits = all_digits[leading_zeros:].rstrip("0")
    point = len(integer_part) - leading_zeros + (int(exponent) if exponent else 0)
    sign = "-" if value < 0 else ""
    decimal_exponent = point - 1
    if decimal_exponent < -4 or decimal_exponent >= 6:
        head, tail = digits[0], digits[1:]
        exp_sign = "-" if decimal_exponent < 0 else "+"
        body = f"{head}.{tail}" if tail else head
        return f"{sign}{body}e{exp_sign}{abs(decimal_exponent):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    if "\\" in text or "\n" in text:
        return text.replace("\\", "\\\\").replace("\n", "\\n")
    return text


def format_labels(labels: Iterable[tuple[str, str]]) -> str:
    """`{a="1",b="2"}` in the given order, or "" for no labels."""
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return f"{{{inner}}}" if inner else ""


def sample_line(
    name: str,
    labels: Iterable[tuple[str, str]],
    value: float,
    timestamp_ms: int | None = None,
) -> str:
    rendered = f"{name}{format_labels(labels)} {format_value(value)}"
    return f"{rendered} {timestamp_ms}\n" if timestamp_ms is not None else f"{rendered}\n"


def header(name: str, help_text: str, metric_type: str) -> bytes:
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {metric_type}\n".encode()


def assemble(headers: Mapping[str, bytes], blocks: Sequence[Block]) -> bytes:
    """One exposition from many sandboxes' blocks: families sorted by name, each with its
    header once (when `headers` has one) followed by every block's lines in the given order.

    Only joins pre-rendered bytes: the blocks are rendered once per collection and assembled
    for every request.
    """
    # One piece, which join returns as it is: no second copy.
    return b"".join(assemble_pieces(headers, blocks, sys.maxsize))


def assemble_pieces(
    headers: Mapping[str, bytes], blocks: Sequence[Block], piece_size: int
) -> Iterator[bytes]:
    """`assemble`'s exposition as consecutive pieces of about `piece_size` bytes (a block's lines
    of a family are never split), made one at a time.

    For callers on an event loop: at hundreds of sandboxes a whole body is megabytes of joins,
    and they yield to others between pieces.
    """
    names: set[str] = set()
    for block in blocks:
        names.update(block)
    parts: list[bytes] = []
    size = 0
    for name in sorted(names):
        chunks = [chunk for block in blocks if (chunk := block.get(name))]
        if not chunks:
            continue
        family_header = headers.get(name)
        if family_header is not None:
            parts.append(family_header)
            size += len(family_header)
        family_size = sum(map(len, chunks))
        if size + family_size < piece_size:
            parts.extend(chunks)  # the common case, without a Python step per chunk
            size += family_size
            continue
        for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= piece_size:
                yield b"".join(parts)
                parts.clear()
                size = 0
    if parts:
        yield b"".join(parts)
