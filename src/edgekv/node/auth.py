"""Bearer tokens with read or write scope per store, for the TCP and HTTP APIs.

Off by default (`tokens=None`: local use, everything allowed).  When configured, every request
must carry a known token whose scopes cover it; nothing unauthenticated gets in.  A scope is
"read:STORE" or "write:STORE", STORE may be "*"; write implies read.  Creating or dropping a
store needs write scope on it.  Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import InvalidInput, Unauthorized

TokenSpec = Mapping[str, str | Iterable[str]]


class Scopes:
    """What one token may do."""

    __slots__ = ("read", "write")

    def __init__(self, scopes: Iterable[str]) -> None:
        self.read: set[str] = set()
        self.write: set[str] = set()
        for scope in scopes:
            level, sep, store = scope.strip().partition(":")
            if level not in ("read", "write") or not sep or not store:
                raise InvalidInput(f"bad token scope {scope!r}: use read:STORE or write:STORE")
            (self.write if level == "write" else self.read).add(store)
        self.read |= self.write

    def allows(self, level: str, store: str) -> bool:
        granted = self.write if level == "write" else self.read
        return "*" in granted or store in granted


class TokenAuth:
    """Checks tokens against their scopes (see the module docstring)."""

    def __init__(self, tokens: TokenSpec | None) -> None:
        self.enabled = tokens is not None
        self._tokens: list[tuple[bytes, Scopes]] = []
        for token, scopes in (tokens or {}).items():
            if not isinstance(token, str) or not token:
                raise InvalidInput("a token must be a non-empty string")
            spec = scopes.split(",") if isinstance(scopes, str) else scopes
            self._tokens.append((token.encode(), Scopes(spec)))

    def _scopes(self, token: object) -> Scopes:
        if token is None:
            raise Unauthorized("a token is required")
        if not isinstance(token, str):
            raise Unauthorized("the token must be a string")
        raw = token.encode("utf-8", "surrogatepass")
        found: Scopes | None = None
        for known, scopes in self._tokens:  # check all: timing does not reveal which matched
            if hmac.compare_digest(raw, known):
                found = scopes
        if found is None:
            raise Unauthorized("unknown token")
        return found

    def check(self, token: object, level: str, store: str) -> None:
        """Raise Unauthorized unless `token` has `level` ("read" or "write") on `store`."""
        if not self.enabled:
            return
        if not self._scopes(token).allows(level, store):
            raise Unauthorized(f"the token has no {level} access to store {store!r}")

    def check_known(self, token: object) -> None:
        """Raise Unauthorized unless `token` is a known token (any scope): for the origin's
        status and metrics, which name stores but hold no values."""
        if self.enabled:
            self._scopes(token)

    def visible(self, token: object, names: Iterable[str]) -> list[str]:
        """The store names `token` may read (all of them when auth is off)."""
        if not self.enabled:
            return list(names)
        scopes = self._scopes(token)
        return [n for n in names if scopes.allows("read", n)]


def load_tokens(path: str | Path) -> dict[str, str]:
    """Tokens from a file of `TOKEN=SCOPES` lines (`#` comments and blank lines skipped), so
    that no token appears in a process list; InvalidInput if unreadable or malformed."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the tokens file {str(path)!r}: {exc}") from None
    tokens: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, sep, scopes = line.partition("=")
        if not sep or not token.strip() or not scopes.strip():
            raise InvalidInput(f"{path}:{n}: use TOKEN=read:STORE,write:STORE")
        tokens[token.strip()] = scopes.strip()
    TokenAuth(tokens)  # scopes checked now, not at the first request
    return tokens
