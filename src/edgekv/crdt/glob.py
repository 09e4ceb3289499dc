"""Redis-style glob patterns for `scan` and `zscan`, compiled to regular expressions.

Semantics follow Redis's `stringmatchlen` (what FastEdge's SCAN MATCH / ZSCAN MATCH use):
`*` any run of characters, `?` one character, `\\x` the character x, `[abc]` a set with ranges
`a-z` (a reversed range `z-a` is the same range), `[^abc]` (or `[!abc]`) its complement; inside
a set `\\x` is x.  `[]` matches nothing, `[^]` any one character, and an unterminated `[abc`
is a set running to the end of the pattern.  No pattern is an error: every string compiles.
"""

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


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else re.escape(c)


def _translate(pattern: str) -> str:
    i, n, out = 0, len(pattern), []
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            neg = i < n and pattern[i] in "^!"
            if neg:
                i += 1
            items: list[str] = []
            while i < n and pattern[i] != "]":
                c = pattern[i]
                if c == "\\" and i + 1 < n:
                    items.append(_class_char(pattern[i + 1]))
                    i += 2
                elif i + 2 < n and pattern[i + 1] == "-":
                    lo, hi = sorted((c, pattern[i + 2]))
                    items.append(f"{_class_char(lo)}-{_class_char(hi)}")
                    i += 3
                else:
                    items.append(_class_char(c))
                    i += 1
            i += 1  # the closing "]" (or the end of an unterminated set)
            if items:
                out.append(f"[{'^' if neg else ''}{''.join(items)}]")
            else:
                out.append("." if neg else "(?!)")
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
