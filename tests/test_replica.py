"""Replica: order-insensitive convergence, digests, change index, watermark, purge, stores."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekv.crdt import META, Put, Register, Replica, SeqRanges, ZAdd, ZSet
from edgekv.crdt.merkle import DEPTH, MerkleTree, leaf_of
from strategies import (
    KEYS,
    STORES,
    History,
    SimOrigin,
    canon,
    histories,
    replay,
    snapshot,
    written_at_of,
)


def check_indexes(replica: Replica) -> None:
    """Every incrementally maintained index equals one rebuilt from the states."""
    for name, sr in replica.stores.items():
        assert list(sr.keys) == sorted(sr.states)
        fresh = MerkleTree()
        for key, state in sr.states.items():
            fresh.add_key(leaf_of(key), key)
            fresh.toggle(leaf_of(key), state.digest(key))
        assert sr.tree.nodes() == fresh.nodes(), name
        assert {k: sorted(v) for k, v in sr.tree.leaf_map().items()} == {
            k: sorted(v) for k, v in fresh.leaf_map().items()
        }
        by_seq = sorted(sr.states, key=lambda k: sr.states[k].seq)
        assert list(sr.changes.since(0, sr.states)) == by_seq
        if sr.changes.ordered and sr.changes.checked:  # every stale entry is marked
            live = [k for k in sr.changes.keys if k is not None]
            assert sorted(live) == sorted(sr.states), name
        sr.changes.compact(sr.states)
        assert sr.changes.keys == by_seq
        assert list(sr.changes.seqs) == [sr.states[k].seq for k in by_seq]
        assert sr.tombstones == {
            k for k, s in sr.states.items() if isinstance(s, Register) and s.value is None
        }


@given(history=histories(), data=st.data())
def test_replica_reads_match_a_plain_model(history: History, data: st.DataObject) -> None:
    """What readers see after any delivery order is what the operations mean."""
    sim = history.sim
    assert sim is not None and sim.mismatches == []
    replica = replay(history.items, shuffled_with_duplicates(data, len(history.items)))
    assert replica.store_names() == sorted(sim.model)
    now = written_at_of(history.last_seq) + data.draw(st.sampled_from([0, 1, 5, 20]))
    for name in sim.model:
        view = sim.model_view(name, now)
        sr = replica.store(name)
        assert sr.scan("*", now) == sorted(view)
        for key in KEYS:
            kind, value, _ = view.get(key, ("missing", None, None))
            if kind == "bytes":
                assert sr.get(key, now) == value
            elif kind == "zset":
                want = sorted(((m, s) for m, s in value.items()), key=lambda ms: (ms[1], ms[0]))
                assert sr.zrange_by_score(key, -math.inf, math.inf, now) == want
            elif kind == "bloom":
                assert all(sr.bf_exists(key, item, now) for item in value)
            else:
                assert sr.get(key, now) is None
                assert sr.zrange_by_score(key, -math.inf, math.inf, now) == []
                assert sr.bf_exists(key, b"x", now) is False


def shuffled_with_duplicates(data: st.DataObject, n: int) -> list[int]:
    extra = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)) if n else []
    return data.draw(st.permutations(list(range(n)) + extra))


@given(history=histories())
def test_in_order_replay_equals_the_origin(history: History) -> None:
    replica = replay(history.items)
    assert snapshot(replica) == snapshot(history.origin)
    assert replica.root == history.origin.root
    assert replica.roots() == history.origin.roots()
    assert replica.watermark == history.last_seq
    assert replica.store_names() == history.origin.store_names()
    check_indexes(replica)


@given(history=histories(), data=st.data())
def test_any_order_with_duplicates_converges(history: History, data: st.DataObject) -> None:
    order = shuffled_with_duplicates(data, len(history.items))
    batch = data.draw(st.integers(0, 5))
    replica = replay(history.items, order, batch)
    assert snapshot(replica) == snapshot(history.origin)
    assert replica.roots() == history.origin.roots()
    assert replica.root == history.origin.root
    assert replica.store_names() == history.origin.store_names()
    assert replica.watermark == history.last_seq
    check_indexes(replica)


@given(history=histories(), data=st.data())
def test_interleaved_replicas_converge(history: History, data: st.DataObject) -> None:
    """Two replicas fed different orders, then one syncs from the other's changes_since."""
    n = len(history.items)
    a = replay(history.items, shuffled_with_duplicates(data, n))
    part = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)) if n else []
    b = replay(history.items, part)
    b.apply_batch(list(a.changes_since(0)), list(a.covered))
    assert snapshot(b) == snapshot(a) == snapshot(history.origin)
    assert b.root == a.root


@given(history=histories(max_ops=25), data=st.data())
def test_digests_are_equal_exactly_when_states_are(history: History, data: st.DataObject) -> None:
    n = len(history.items)
    indexes = st.lists(st.integers(0, max(n - 1, 0)), max_size=n) if n else st.just([])
    first = data.draw(indexes)
    second = data.draw(st.one_of(indexes, st.permutations(first), indexes.map(lambda x: first + x)))
    a, b = replay(history.items, first), replay(history.items, second)
    assert (snapshot(a) == snapshot(b)) == (a.root == b.root)
    for name in set(a.stores) | set(b.stores):
        sa = {k: canon(v) for k, v in a.store(name).states.items()}
        sb = {k: canon(v) for k, v in b.store(name).states.items()}
        assert (sa == sb) == (a.store(name).digest == b.store(name).digest), name


@given(history=histories(), data=st.data())
def test_changes_since_equals_a_brute_force_filter(history: History, data: st.DataObject) -> None:
    replica = replay(history.items, shuffled_with_duplicates(data, len(history.items)))
    for w in range(history.last_seq + 2):
        got = list(replica.changes_since(w))
        want = {(s, k) for s, k, state in replica.iter_states() if state.seq > w}
        assert {(s, k) for s, k, _ in got} == want
        assert len(got) == len(want)
        for s, k, state in got:
            assert state is replica.state(s, k)
        stores = [s for s, _, _ in got]
        assert stores == sorted(stores), "store by store"
        for name in set(stores):
            seqs = [state.seq for s, _, state in got if s == name]
            assert seqs == sorted(seqs)


@given(history=histories(), data=st.data())
def test_purge_never_resurrects(history: History, data: st.DataObject) -> None:
    n = len(history.items)
    cut = data.draw(st.integers(0, n))
    horizon = history.items[cut - 1][0] if cut else 0
    now = written_at_of(horizon)
    replica = replay(history.items[:cut])
    removed = replica.purge(horizon, now)
    assert replica.purged == horizon
    for store, key, state in removed:
        assert state is None and replica.state(store, key) is None
    for store, _, state in replica.iter_states():  # nothing dead at or below the horizon is left
        if store != META and isinstance(state, Register) and state.seq <= horizon:
            assert state.value is not None
            assert state.expiry is None or state.expiry > now
    check_indexes(replica)
    # everything again, in any order, with duplicates: old deltas of purged keys are ignored
    order = shuffled_with_duplicates(data, n)
    for i in order:
        seq, store, key, delta = history.items[i]
        replica.apply(store, key, delta)
        replica.covered.add(seq, seq)
    history.origin.purge(horizon, now)
    assert snapshot(replica) == snapshot(history.origin)
    assert replica.root == history.origin.root
    check_indexes(replica)


def test_purge_stops_at_the_watermark() -> None:
    replica = Replica()
    replica.apply(META, "s", Register(1, written_at_of(1), b""))
    replica.apply("s", "k", Register(2, written_at_of(2), b"v"))
    replica.apply("s", "k", Register(3, written_at_of(3), None))
    replica.covered.update([(1, 1), (3, 3)])  # seq 2 not claimed: watermark is 1
    assert replica.watermark == 1
    assert replica.purge(10, written_at_of(10)) == []
    assert replica.purged == 1
    assert replica.state("s", "k") is not None
    replica.covered.add(2, 2)
    assert [c.key for c in replica.purge(10, written_at_of(10))] == ["k"]
    # a late duplicate of the put must not bring the key back
    assert replica.apply("s", "k", Register(2, written_at_of(2), b"v")) is None
    assert replica.state("s", "k") is None


def test_expired_values_are_purged_only_below_the_horizon() -> None:
    origin = SimOrigin()
    origin.create_store("s")
    origin.write("s", Put("a", b"1", ttl=0.001))
    origin.write("s", Put("b", b"2", ttl=0.001))
    replica = origin.replica
    far = written_at_of(100)
    assert [c.key for c in replica.purge(2, far)] == ["a"]
    assert replica.state("s", "b") is not None
    assert [c.key for c in replica.purge(3, far)] == ["b"]
    check_indexes(replica)


def test_drop_removes_keys_and_recreate_starts_empty() -> None:
    origin = SimOrigin()
    origin.create_store("s1")
    origin.write("s1", Put("k", b"v"))
    origin.write("s1", ZAdd("z", {b"m": 1.0}))
    drop = origin.drop_store("s1")
    assert origin.replica.has_store("s1") is False and len(origin.replica.store("s1")) == 0
    origin.create_store("s1")
    origin.write("s1", ZAdd("z", {b"n": 2.0}))
    items = origin.history.items
    assert drop is not None
    # the old zset member arrives last, after the recreated set: it stays dead
    replica = replay(items, [0, 5, 4, 3, 1, 2])
    state = replica.state("s1", "z")
    assert isinstance(state, ZSet) and set(state.members) == {b"n"}
    assert replica.state("s1", "k") is None
    assert replica.store_names() == ["s1"]
    assert snapshot(replica) == snapshot(origin.replica)


def test_store_names_and_unknown_stores() -> None:
    replica = Replica()
    assert replica.store_names() == [] and not replica.has_store("nope")
    assert not replica.has_store(META)
    for name in STORES:
        replica.apply(META, name, Register(len(name), written_at_of(1), b""))
    assert replica.store_names() == sorted(STORES)
    assert len(replica) == 0


# -- SeqRanges against a set model ---------------------------------------------------------------


@given(adds=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 8)), max_size=25))
def test_seq_ranges_match_a_set_model(adds: list[tuple[int, int]]) -> None:
    ranges, model = SeqRanges(), set[int]()
    for lo, length in adds:
        hi = lo + length - 1  # length 0 is an empty range
        ranges.add(lo, hi)
        model.update(range(lo, hi + 1))
        spans = list(ranges)
        assert all(lo <= hi for lo, hi in spans)
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(spans))
        assert {s for lo, hi in spans for s in range(lo, hi + 1)} == model
        for seq in range(0, 72):
            assert (seq in ranges) == (seq in model)
        w = 0
        while w + 1 in model:
            w += 1
        assert ranges.watermark == w
        assert ranges.high == max(model, default=0)
        for lo2 in range(1, 70, 3):  # `covers` against the model, for spans of 1-9 seqs
            for hi2 in range(lo2, lo2 + 9, 2):
                held = all(s in model for s in range(lo2, hi2 + 1))
                assert ranges.covers(lo2, hi2) == held
        for seq in (0, 5, 30):
            assert {s for lo, hi in ranges.above(seq) for s in range(lo, hi + 1)} == {
                s for s in model if s > seq
            }
    assert SeqRanges(list(ranges)) == ranges == ranges.copy()
    assert "x" not in ranges


def test_merkle_depth_spreads_keys() -> None:
    leaves = {leaf_of(f"key-{i}") for i in range(2000)}
    assert len(leaves) > 1900  # 16**DEPTH leaves: few collisions among 2,000 keys
    assert all(0 <= leaf < 16**DEPTH for leaf in leaves)


def test_change_log_compacts_and_sorts_out_of_order_changes() -> None:
    import random

    from edgekv.crdt.changelog import SLACK, ChangeLog

    class St:
        def __init__(self, seq: int) -> None:
            self.seq = seq

    rng = random.Random(7)
    seqs = list(range(1, 3 * SLACK))
    rng.shuffle(seqs)
    states: dict[str, St] = {}
    log = ChangeLog()
    for seq in seqs:  # three keys, each updated many times, in random seq order
        key = f"k{seq % 3}"
        if key not in states or states[key].seq < seq:
            states[key] = St(seq)
            log.add(seq, key, states)
        assert len(log) <= 2 * len(states) + SLACK + 1
    for w in (0, 5, max(seqs) - 10, max(seqs)):
        want = sorted((k for k, s in states.items() if s.seq > w), key=lambda k: states[k].seq)
        assert list(log.since(w, states)) == want
    # removing a key and re-adding the same state yields it once
    state = states.pop("k0")
    log.add(state.seq, "k0", states)
    states["k0"] = state
    log.add(state.seq, "k0", states)
    assert list(log.since(0, states)).count("k0") == 1


@pytest.mark.slow
@settings(max_examples=2000)
@given(history=histories(max_ops=80), data=st.data())
def test_any_order_converges_long_histories(history: History, data: st.DataObject) -> None:
    """The convergence property over longer histories and many more examples (run with -m slow)."""
    order = shuffled_with_duplicates(data, len(history.items))
    replica = replay(history.items, order, data.draw(st.integers(0, 7)))
    assert snapshot(replica) == snapshot(history.origin)
    assert replica.root == history.origin.root
    check_indexes(replica)


@given(
    values=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 10**9)), max_size=300),
    probes=st.lists(st.integers(-3, 10**9 + 3), max_size=20),
)
def test_change_log_locate_equals_bisect(values: list[int], probes: list[int]) -> None:
    from array import array
    from bisect import bisect_left

    from edgekv.crdt.changelog import _locate

    seqs = array("q", sorted(values))
    for x in [*probes, *values[:10], *(v + 1 for v in values[:10])]:
        assert _locate(seqs, x) == bisect_left(seqs, x)
