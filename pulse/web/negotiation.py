"""Reading the lists clients send in Accept and Accept-Encoding (RFC 9110, 12.5)."""

from __future__ import annotations

from collections.abc import Collection


def lists_any(header: str, wanted: Collection[str]) -> bool:
    """Whether a comma-separated Accept or Accept-Encoding value names one of `wanted` (lower
    case) with a quality above zero. Wildcards name nothing here: both callers want a client
    that asked for the thing by name."""
    for item in header.split(","):
        token, *params = item.split(";")
        if token.strip().lower() in wanted and _quality(params) > 0:
            return True
    return False


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 1.0  # a quality nobody can read does not refuse
    return 1.0
