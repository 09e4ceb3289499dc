"""Redis-style glob patterns: `*`, `?`, `[abc]`, `[^a-c]` / `[!a-c]`, and `\\x` escapes."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, overload

_META = "*?["


def literal_prefix(pattern: str) -> str:
    """The part of `pattern` before its first wildcard (the sorted-index fast path)."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in _META:
            break
        if c == "\\" and i + 1 < len(pattern):
            i += 1
            c = pattern[i]
        out.append(c)
        i += 1
    return "".join(out)


def _translate(pattern: str) -> str:
    i, n, out = 0, len(pattern), []
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^' if neg else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out) + r"\Z"


@overload
def compile_glob(pattern: str) -> Callable[[str], Any]: ...
@overload
def compile_glob(pattern: bytes) -> Callable[[bytes], Any]: ...
@lru_cache(maxsize=256)
def compile_glob(pattern: str | bytes) -> Callable[[Any], Any]:
    """A `match(text)` function for the glob (str patterns match str, bytes match bytes)."""
    if isinstance(pattern, bytes):
        text = _translate(pattern.decode("latin-1"))
        return re.compile(text.encode("latin-1"), re.DOTALL).match
    return re.compile(_translate(pattern), re.DOTALL).match
