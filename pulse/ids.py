"""Sandbox ids: what the filesystem and query strings may name, and what they may not."""

from __future__ import annotations

import re

# Kata sandbox ids are CRI PodSandbox ids: 64 lowercase hex in practice. Other runtimes and tools
# use shorter or mixed-case ids, so accept a conservative superset. It rules out everything that
# could turn an id into a path: "/", NUL, leading dots ("." and ".."), whitespace.
MAX_SANDBOX_ID_LENGTH = 128
_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def is_sandbox_id(name: str) -> bool:
    return _SANDBOX_ID.fullmatch(name) is not None
