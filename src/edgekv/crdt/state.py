"""The state of one key and its join.

A key holds one of three kinds: `Register` (plain bytes or a tombstone), `ZSet`, `Bloom`.  Each
carries `reset`, the seq of the last whole-key write (put, delete, create, force).  Join is
lexicographic: the higher reset wins whole; equal resets join kind-wise (register: must be the
same write; zset: member-wise; bloom: OR).  Because reset is totally ordered and each kind's
same-reset join is a semilattice, the whole is a join-semilattice: commutative, associative,
idempotent (property-tested in tests/test_crdt_laws.py).  In any history the origin produces,
every member or bit of a state was written at or after its reset, so nothing is lost.
"""

from __future__ import annotations

from ..errors import ConflictingVersion
from .bloom import Bloom, BloomDelta
from .register import Register
from .zset import ZSet

State = Register | ZSet | Bloom
Delta = Register | ZSet | Bloom | BloomDelta


def as_state(delta: Delta) -> State:
    """A fresh state object equal to `delta` (never shares mutable parts with it)."""
    if isinstance(delta, BloomDelta):
        return delta.to_state()
    return delta.copy()


def join(a: Delta, b: Delta) -> Delta:
    """Pure join: a new value, neither argument is modified."""
    if a.reset != b.reset:
        return (a if a.reset > b.reset else b).copy()
    if isinstance(a, Register) and isinstance(b, Register):
        a.check_same(b)
        return a
    if isinstance(a, ZSet) and isinstance(b, ZSet):
        out = a.copy()
        out.merge_same_reset(b)
        return out
    if isinstance(a, BloomDelta) and isinstance(b, BloomDelta):
        return a.join_same_reset(b)
    if isinstance(a, Bloom | BloomDelta) and isinstance(b, Bloom | BloomDelta):
        if isinstance(a, BloomDelta):
            a, b = b, a
        assert isinstance(a, Bloom)
        bloom = a.copy()
        bloom.merge_same_reset(b)
        return bloom
    raise ConflictingVersion(f"two kinds of value share reset seq {a.reset}")


def merge(state: State | None, delta: Delta) -> State | None:
    """Join `delta` into `state`, in place where possible.

    Returns the new state object when anything changed, None when `delta` added nothing.
    Never stores `delta` itself if it is mutable, so queued deltas stay intact.
    """
    if state is None or delta.reset > state.reset:
        return as_state(delta)
    if delta.reset < state.reset:
        return None
    if isinstance(state, Register):
        if isinstance(delta, Register):
            state.check_same(delta)
            return None
    elif isinstance(state, ZSet):
        if isinstance(delta, ZSet):
            return state if state.merge_same_reset(delta) else None
    elif isinstance(delta, Bloom | BloomDelta):
        return state if state.merge_same_reset(delta) else None
    raise ConflictingVersion(f"two kinds of value share reset seq {delta.reset}")


def is_dead(state: State, now_ms: int) -> bool:
    """True when the key reads as absent: a tombstone or an expired value."""
    return isinstance(state, Register) and not state.live(now_ms)


def state_equal(a: State | None, b: State | None) -> bool:
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and a == b  # each kind's == is its `same`
