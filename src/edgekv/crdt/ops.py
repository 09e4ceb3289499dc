"""Write operations, their limits, and how the origin turns one into a delta.

`plan(op, current, seq, written_at)` is the origin's whole write logic for one key: it checks the
key-kind rule (writing a key of another kind needs `force`), picks the reset, and returns the
delta to commit, or None when the op changes nothing (deleting a missing key).  Pure: the
origin's sequencer and log supply `seq` and `written_at`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from ..errors import InvalidInput, WrongKind
from .bloom import Bloom, BloomDelta, bloom_params, check_params
from .register import Register
from .state import Delta, State, is_dead
from .zset import MAX_ZSET_BYTES, MAX_ZSET_MEMBERS, MEMBER_OVERHEAD, ZSet

STORE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits the origin enforces on every write."""

    max_key_bytes: int = 512
    max_value_bytes: int = 1 << 20
    max_member_bytes: int = 1 << 16
    max_items_per_op: int = 10_000
    max_ops_per_batch: int = 10_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    ttl: float | None = None  # seconds
    force: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class ZAdd:
    key: str
    members: Mapping[bytes, float]
    force: bool = False


@dataclass(frozen=True, slots=True)
class ZRem:
    key: str
    members: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class BfAdd:
    key: str
    items: Sequence[bytes]
    capacity: int | None = None
    error_rate: float | None = None
    m: int | None = None
    k: int | None = None
    force: bool = False
    params: tuple[int, int] = field(default=(0, 0), compare=False)


Op = Put | Delete | ZAdd | ZRem | BfAdd

DEFAULT_BLOOM_CAPACITY = 10_000
DEFAULT_BLOOM_ERROR_RATE = 0.01


def op_body(op: Op | Mapping[str, object]) -> dict[str, object]:
    """The request-body form of `op`: the fields `origin.requests.parse_op` reads back (the
    caller adds "store" and "if_version").  A ready body (a mapping) is copied as it is."""
    if isinstance(op, Put):
        return {"op": "put", "key": op.key, "value": op.value, "ttl": op.ttl, "force": op.force}
    if isinstance(op, Delete):
        return {"op": "delete", "key": op.key}
    if isinstance(op, ZAdd):
        return {"op": "zadd", "key": op.key, "members": dict(op.members), "force": op.force}
    if isinstance(op, ZRem):
        return {"op": "zrem", "key": op.key, "members": list(op.members)}
    if isinstance(op, Mapping):
        return dict(op)
    if not isinstance(op, BfAdd):
        raise TypeError(f"not an op: {op!r}")
    body: dict[str, object] = {"op": "bf_add", "key": op.key, "items": list(op.items)}
    params = {"capacity": op.capacity, "error_rate": op.error_rate, "m": op.m, "k": op.k}
    body.update((name, v) for name, v in params.items() if v is not None)  # absent = default
    body["force"] = op.force
    return body


def validate_store_name(name: object) -> str:
    if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
        raise InvalidInput(f"bad store name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return name


def validate_key(key: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidInput("a key must be a non-empty string")
    try:
        n = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidInput("a key must be valid UTF-8") from None
    if n > limits.max_key_bytes:
        raise InvalidInput(f"key of {n} bytes exceeds the limit of {limits.max_key_bytes}")
    return key


def _validate_bytes(what: str, value: object, limit: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > limit:
        raise InvalidInput(f"{what} of {len(value)} bytes exceeds the limit of {limit}")
    return value


def _validate_count(what: str, n: int, limits: Limits) -> None:
    if n > limits.max_items_per_op:
        raise InvalidInput(f"{n} {what} exceed the limit of {limits.max_items_per_op} per op")


_OP_TYPES = (Put, Delete, ZAdd, ZRem, BfAdd)


@overload
def validate_op(op: BfAdd, limits: Limits = DEFAULT_LIMITS) -> BfAdd: ...


@overload
def validate_op(op: object, limits: Limits = DEFAULT_LIMITS) -> Op: ...


def validate_op(op: object, limits: Limits = DEFAULT_LIMITS) -> Op:
    """Check an op against the limits and normalise it; raise InvalidInput when it breaks one."""
    if not isinstance(op, _OP_TYPES):
        raise InvalidInput(f"not a write operation: {op!r}")
    validate_key(op.key, limits)
    if isinstance(op, Put):
        value = _validate_bytes("value", op.value, limits.max_value_bytes)
        ttl = op.ttl
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, int | float):
                raise InvalidInput("ttl must be a number of seconds")
            if not math.isfinite(ttl) or ttl <= 0 or ttl > 100 * 365 * 86400:
                raise InvalidInput("ttl must be a positive, finite number of seconds")
        if value is op.value and op.force.__class__ is bool:
            return op  # already in normal form (and immutable): no copy
        return Put(op.key, value, ttl, bool(op.force))
    if isinstance(op, ZAdd):
        if not isinstance(op.members, Mapping) or not op.members:
            raise InvalidInput("zadd needs a non-empty mapping of member -> score")
        _validate_count("members", len(op.members), limits)
        members = {}
        for member, score in op.members.items():
            m = _validate_bytes("member", member, limits.max_member_bytes)
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise InvalidInput(f"score of {m!r} must be a number")
            if math.isnan(score):
                raise InvalidInput(f"score of {m!r} is NaN")
            members[m] = float(score)
        return ZAdd(op.key, members, bool(op.force))
    if isinstance(op, ZRem):
        if isinstance(op.members, bytes | str) or not isinstance(op.members, Sequence):
            raise InvalidInput("zrem needs a list of members")
        _validate_count("members", len(op.members), limits)
        return ZRem(
            op.key, [_validate_bytes("member", m, limits.max_member_bytes) for m in op.members]
        )
    if isinstance(op, BfAdd):
        if isinstance(op.items, bytes | str) or not isinstance(op.items, Sequence) or not op.items:
            raise InvalidInput("bf_add needs a non-empty list of items")
        _validate_count("items", len(op.items), limits)
        items = [_validate_bytes("item", i, limits.max_value_bytes) for i in op.items]
        if op.m is not None or op.k is not None:
            if op.m is None or op.k is None:
                raise InvalidInput("bf_add needs both m and k, or capacity and error_rate")
            check_params(op.m, op.k)
            params = (op.m, op.k)
        else:
            params = bloom_params(
                op.capacity if op.capacity is not None else DEFAULT_BLOOM_CAPACITY,
                op.error_rate if op.error_rate is not None else DEFAULT_BLOOM_ERROR_RATE,
            )
        return BfAdd(op.key, items, op.capacity, op.error_rate, op.m, op.k, bool(op.force), params)
    return op


def _check_zset_room(op: ZAdd, cur: ZSet | None) -> None:
    """InvalidInput when `op` would grow `cur` (None: a new set) past MAX_ZSET_MEMBERS or
    MAX_ZSET_BYTES: a set travels whole in one frame (crdt/zset.py)."""
    new = [m for m in op.members if cur is None or m not in cur.members]
    if not new:
        return
    count = len(new) + (len(cur.members) if cur is not None else 0)
    size = sum(map(len, new)) + MEMBER_OVERHEAD * len(new)
    size += cur.wire_size() if cur is not None else 0
    if count > MAX_ZSET_MEMBERS or size > MAX_ZSET_BYTES:
        raise InvalidInput(
            f"zadd to {op.key!r} would make the set {count:,} members and {size:,} bytes "
            f"(removed members count until the key is replaced); a set holds at most "
            f"{MAX_ZSET_MEMBERS:,} members and {MAX_ZSET_BYTES:,} bytes"
        )


def plan(op: Op, current: State | None, seq: int, written_at: int) -> Delta | None:
    """The delta that applies validated `op` at `seq` on top of `current`, or None (no-op).

    Raises WrongKind when the key holds another kind and the op does not say `force`.
    """
    if current is not None and is_dead(current, written_at):
        current = None
    if isinstance(op, Put):
        _check_kind(current, Register, op.force, op.key)
        expiry = None if op.ttl is None else written_at + max(1, round(op.ttl * 1000))
        return Register(seq, written_at, op.value, expiry)
    if isinstance(op, Delete):
        return None if current is None else Register(seq, written_at, None, None)
    if isinstance(op, ZAdd):
        cur = _check_kind(current, ZSet, op.force, op.key)
        _check_zset_room(op, cur if isinstance(cur, ZSet) else None)
        reset = cur.reset if isinstance(cur, ZSet) else seq
        members: dict[bytes, tuple[int, float | None]] = {
            m: (seq, s) for m, s in op.members.items()
        }
        return ZSet(reset, members, seq, written_at)
    if isinstance(op, ZRem):
        cur = _check_kind(current, ZSet, False, op.key)
        if not isinstance(cur, ZSet):
            return None
        gone: dict[bytes, tuple[int, float | None]] = {
            m: (seq, None) for m in op.members if m in cur.members and cur.members[m][1] is not None
        }
        return ZSet(cur.reset, gone, seq, written_at) if gone else None
    cur = _check_kind(current, Bloom, op.force, op.key)
    if isinstance(cur, Bloom):
        return BloomDelta.for_items(cur.reset, cur.m, cur.k, list(op.items), seq, written_at)
    m, k = op.params if op.params != (0, 0) else validate_op(op).params
    return BloomDelta.for_items(seq, m, k, list(op.items), seq, written_at)


def _check_kind(current: State | None, kind: type[State], force: bool, key: str) -> State | None:
    """Return `current` when it has the wanted kind, None when it is absent or forced over."""
    if current is None or isinstance(current, kind):
        return current
    if force:
        return None
    raise WrongKind(f"key {key!r} holds a {current.kind} value, not {kind.kind}; use force=True")
