"""`KvStore`: the FastEdge-style API over one store of the local replica.

Reads (`get`, `get_entry`, `scan`, `zrange_by_score`, `zscan`, `bf_exists`) are synchronous and
local: they look at the node's in-memory `StoreReplica` and never touch the network.  `get` is
the hot path, so it inlines the dict lookup and reads the clock only when the value has an
expiry.  Writes build a request body (the origin's request schema) and hand it to the node's
`writer`, which forwards it to the origin and applies the answer locally before returning
(read-your-writes); a KvStore built without a writer is read-only.

`KvStore.open(name)` finds the running node through the `current_node` context variable, which
`EdgeNode` sets inside its `async with`, so application code can open stores without passing
the node around (as `fastedge::kv`'s `KvStore.open` does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from ..clock import wall_clock_ms
from ..crdt import META, StoreReplica
from ..crdt.ops import (
    DEFAULT_LIMITS,
    BfAdd,
    Delete,
    Limits,
    Op,
    Put,
    ZAdd,
    ZRem,
    op_body,
    validate_op,
)
from ..crdt.register import VALUE_AT, Register
from ..crdt.version import Entry, Version
from ..errors import EdgeKVError, InvalidInput, StoreNotFound, WrongKind

Writer = Callable[[str, dict[str, Any]], Awaitable[Version]]
"""`await writer(store_name, body)`: send a write to the origin, apply it locally, return its version."""

Clock = Callable[[], int]
"""Wall clock in ms since the epoch (used to decide whether a value has expired)."""


class Node(Protocol):
    """What `KvStore.open` needs from the node in `current_node`."""

    def open(self, name: str) -> KvStore: ...


current_node: ContextVar[Node] = ContextVar("edgekv_current_node")
"""The EdgeNode running in this context (set by `EdgeNode.__aenter__`)."""

_Register = Register  # module-level aliases: one global load each on the hot path
_VALUE = slice(VALUE_AT, None)  # a plain register's value: built once, not per call


class KvStore:
    """One store of the local replica: local reads, writes through the origin."""

    __slots__ = ("_clock", "_limits", "_lookup", "_states", "_store", "_writer", "name")

    def __init__(
        self,
        store: StoreReplica,
        *,
        writer: Writer | None = None,
        clock: Clock = wall_clock_ms,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if store.name == META or not store.live:
            raise StoreNotFound(f"no such store: {store.name!r}")
        self.name = store.name
        self._store = store
        self._states = store.states  # the same dict for the store's whole life
        self._lookup = self._states.get  # bound once: the hot path saves an attribute lookup
        self._writer = writer
        self._clock = clock
        self._limits = limits

    @classmethod
    def open(cls, name: str) -> KvStore:
        """The store `name` of the node running in this context (inside `async with EdgeNode`)."""
        node = current_node.get(None)
        if node is None:
            raise EdgeKVError(
                "KvStore.open() needs a running node: call it inside `async with EdgeNode(...)`,"
                " or use node.open(name)"
            )
        return node.open(name)

    def __repr__(self) -> str:
        return f"KvStore({self.name!r}, {len(self._states)} keys)"

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None when it is missing, deleted or expired."""
        try:
            st = self._lookup(key)
        except TypeError:  # unhashable key: zero cost on the hot path (3.11 exceptions)
            raise InvalidInput("a key must be a string") from None
        # the common case first: a plain value without expiry (flags 0, see crdt/register.py)
        if st.__class__ is _Register and not st[0] and self._store.live:
            return st[_VALUE]
        if not self._store.live:
            raise StoreNotFound(f"store {self.name!r} was dropped")
        if st is None:
            return None
        if st.__class__ is not _Register:
            raise WrongKind(f"key {key!r} holds a {st.kind} value; get() reads plain values")
        return st.read(self._clock())

    def get_entry(self, key: str) -> Entry | None:
        """The value with its version and expiry, or None when absent."""
        return self._live().get_entry(_key(key), self._clock())

    def scan(self, pattern: str, limit: int | None = None) -> list[str]:
        """Live keys matching the glob `pattern` (`*`, `?`, `[abc]`, `[^a]`, `\\x`), in key order."""
        if not isinstance(pattern, str):
            raise InvalidInput("a pattern must be a string")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise InvalidInput("limit must be an integer or None")
        if limit is not None and limit <= 0:
            return []
        return self._live().scan(pattern, self._clock(), limit)

    def zrange_by_score(self, key: str, min: float, max: float) -> list[tuple[bytes, float]]:
        """Members of the sorted set with min <= score <= max, ascending by score then member."""
        lo, hi = _bound(min), _bound(max)
        return self._live().zrange_by_score(_key(key), lo, hi, self._clock())

    def zscan(self, key: str, pattern: str | bytes) -> list[tuple[bytes, float]]:
        """Members of the sorted set whose member matches the glob `pattern`, by score."""
        if not isinstance(pattern, str | bytes):
            raise InvalidInput("a pattern must be str or bytes")
        return self._live().zscan(_key(key), pattern, self._clock())

    def bf_exists(self, key: str, item: bytes) -> bool:
        """Whether the Bloom filter may hold `item` (False for a missing key)."""
        if not isinstance(item, bytes | bytearray | memoryview):
            raise InvalidInput("a Bloom filter item must be bytes")
        return self._live().bf_exists(_key(key), bytes(item), self._clock())

    def _live(self) -> StoreReplica:
        store = self._store
        if not store.live:
            raise StoreNotFound(f"store {self.name!r} was dropped")
        return store

    # -- writes (through the origin) -------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        force: bool = False,
        if_version: int | None = None,
    ) -> Version:
        """Write a plain value (expiring after `ttl` seconds); `force` replaces another kind."""
        return await self._write(Put(key, value, ttl, force), if_version)

    async def delete(self, key: str, if_version: int | None = None) -> Version:
        """Delete `key` (any kind)."""
        return await self._write(Delete(key), if_version)

    async def zadd(
        self,
        key: str,
        members: Mapping[bytes, float],
        force: bool = False,
        if_version: int | None = None,
    ) -> Version:
        """Add members (or change their scores) in the sorted set under `key`."""
        return await self._write(ZAdd(key, members, force), if_version)

    async def zrem(
        self, key: str, members: Sequence[bytes], if_version: int | None = None
    ) -> Version:
        """Remove members from the sorted set under `key`."""
        return await self._write(ZRem(key, members), if_version)

    async def bf_add(
        self,
        key: str,
        items: Sequence[bytes],
        *,
        capacity: int | None = None,
        error_rate: float | None = None,
        m: int | None = None,
        k: int | None = None,
        force: bool = False,
        if_version: int | None = None,
    ) -> Version:
        """Add items to the Bloom filter under `key` (created with these parameters if absent)."""
        return await self._write(BfAdd(key, items, capacity, error_rate, m, k, force), if_version)

    async def _write(self, op: Op, if_version: int | None) -> Version:
        """Check `op` here (a bad one never reaches the origin), then send it through the node."""
        body: dict[str, Any] = op_body(validate_op(op, self._limits))
        if self._writer is None:
            raise EdgeKVError(f"store {self.name!r} was opened read-only (no writer)")
        if if_version is not None and (
            isinstance(if_version, bool) or not isinstance(if_version, int)
        ):
            raise InvalidInput("if_version must be an integer seq or None")
        self._live()
        body["store"] = self.name
        body["if_version"] = if_version
        return await self._writer(self.name, body)

    # `watch(prefix)` (a stream of changes under a prefix) is added by the EdgeNode module, which
    # owns the change feed; it is deliberately not defined here.


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInput("a key must be a string")
    return key


def _bound(x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise InvalidInput("score bounds must be numbers")
    return float(x)
