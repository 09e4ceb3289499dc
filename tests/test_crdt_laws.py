"""Join laws of every state kind (register, sorted set, Bloom filter, mixed kinds) and merge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import Bloom, BloomDelta, Delta, Register, State, ZSet, as_state, join, merge
from edgekv.crdt.codec import encode_delta
from edgekv.errors import ConflictingVersion
from strategies import canon, deltas, register_at, written_at_of, zsets

KEY = "k"


def same(a: Delta, b: Delta) -> bool:
    """Equal as states (a BloomDelta equals the filter it would make), with equal digests."""
    sa, sb = as_state(a), as_state(b)
    return canon(sa) == canon(sb) and sa.digest(KEY) == sb.digest(KEY)


def single_kind(kind: str) -> st.SearchStrategy[Delta]:
    offset = {"bytes": 0, "zset": 1, "bloom": 2}[kind]
    return deltas(st.integers(0, 3).map(lambda i: 3 * i + offset + (3 if offset == 0 else 0)))


KINDS = {
    "register": single_kind("bytes"),
    "zset": single_kind("zset"),
    "bloom": single_kind("bloom"),
    "mixed": deltas(),
}


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(KINDS[kind]), data.draw(KINDS[kind])
    assert same(join(a, b), join(b, a))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(KINDS[kind]) for _ in range(3))
    assert same(join(join(a, b), c), join(a, join(b, c)))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_join_is_idempotent(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(KINDS[kind]), data.draw(KINDS[kind])
    assert same(join(a, a), a)
    ab = join(a, b)
    assert same(join(ab, b), ab)  # absorbing: joining a part again adds nothing


@given(a=deltas(), b=deltas())
def test_join_does_not_modify_its_arguments(a: Delta, b: Delta) -> None:
    before = (encode_delta(a), encode_delta(b))
    join(a, b)
    assert (encode_delta(a), encode_delta(b)) == before


@given(a=deltas(), b=deltas())
def test_join_is_an_upper_bound(a: Delta, b: Delta) -> None:
    ab = join(a, b)
    assert ab.reset == max(a.reset, b.reset)
    assert same(join(ab, a), ab) and same(join(ab, b), ab)


@given(a=deltas(), b=deltas())
def test_merge_in_place_agrees_with_join(a: Delta, b: Delta) -> None:
    state = as_state(a)
    state.digest(KEY)  # prime a zset's cached digest: merge must keep it up to date
    if isinstance(state, ZSet):
        state.wire_size()  # and its cached size (the origin's limit on a set)
    b_before = encode_delta(b)
    result = merge(state, b)
    final = state if result is None else result
    assert same(final, join(a, b))
    assert encode_delta(b) == b_before, "merge must not modify the delta"
    if result is None:
        assert same(join(a, b), a), "merge said nothing changed"
    # the cached digest of an in-place merged zset equals a fresh computation
    assert final.digest(KEY) == as_state(final).digest(KEY)
    if isinstance(final, ZSet):  # so does its cached size
        assert final.wire_size() == ZSet(final.reset, dict(final.members)).wire_size()


@given(a=deltas())
def test_merge_into_nothing_copies(a: Delta) -> None:
    state = merge(None, a)
    assert state is not None and same(state, a)
    if isinstance(a, ZSet | Bloom):
        assert state is not a, "a mutable delta must not become the stored state"


def test_equal_seq_with_different_register_value_conflicts() -> None:
    a = Register(5, written_at_of(5), b"one")
    b = Register(5, written_at_of(5), b"two")
    with pytest.raises(ConflictingVersion):
        join(a, b)
    with pytest.raises(ConflictingVersion):
        merge(a, b)


def test_two_kinds_at_one_reset_conflict() -> None:
    reg = register_at(4)
    zset = ZSet(4, {b"a": (4, 1.0)}, 4, written_at_of(4))
    bloom = Bloom(4, 64, 2, seq=4, written_at=written_at_of(4))
    pairs: list[tuple[State, State]] = [(reg, zset), (zset, bloom), (bloom, reg)]
    for x, y in pairs:
        with pytest.raises(ConflictingVersion):
            join(x, y)
        with pytest.raises(ConflictingVersion):
            merge(as_state(x), y)


@given(z=zsets(3))
def test_conflicting_zset_merge_leaves_the_state_untouched(z: ZSet) -> None:
    state = as_state(z)
    assert isinstance(state, ZSet)
    digest_before, canon_before = state.digest(KEY), canon(state)
    forged = {m: (s, 99.0 if sc is None else None) for m, (s, sc) in z.members.items()}
    forged[b"new"] = (z.seq + 1, 1.0)
    if not z.members:
        return
    with pytest.raises(ConflictingVersion):
        merge(state, ZSet(3, forged, z.seq + 1, written_at_of(z.seq + 1)))
    assert canon(state) == canon_before and state.digest(KEY) == digest_before


def test_conflicting_bloom_merge_leaves_the_state_untouched() -> None:
    bloom = Bloom(2, 64, 3, seq=5, written_at=written_at_of(5))
    before = canon(bloom)
    with pytest.raises(ConflictingVersion):
        merge(bloom, BloomDelta(2, 64, 3, frozenset({1, 2}), 5, written_at_of(5) + 1))
    with pytest.raises(ConflictingVersion):
        merge(bloom, BloomDelta(2, 72, 3, frozenset({1, 2}), 6, written_at_of(6)))
    assert canon(bloom) == before


def test_higher_reset_replaces_whole_and_lower_is_ignored() -> None:
    zset = ZSet(3, {b"a": (3, 1.0), b"b": (6, 2.0)}, 6, written_at_of(6))
    newer = register_at(7)
    assert same(join(zset, newer), newer)
    state = as_state(zset)
    assert merge(state, register_at(2)) is None
    replaced = merge(state, newer)
    assert isinstance(replaced, Register) and replaced.seq == 7


def test_zset_range_reads_follow_merges() -> None:
    state = ZSet(1, {b"a": (1, 5.0), b"b": (1, 1.0)}, 1, written_at_of(1))
    assert state.range_by_score(float("-inf"), float("inf")) == [(b"b", 1.0), (b"a", 5.0)]
    merge(state, ZSet(1, {b"a": (2, None), b"c": (2, 1.0)}, 2, written_at_of(2)))
    assert state.range_by_score(float("-inf"), float("inf")) == [(b"b", 1.0), (b"c", 1.0)]
