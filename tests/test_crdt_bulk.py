"""crdt.bulk: a bulk-loaded replica equals one built by `Replica.apply`, index by index."""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import (
    META,
    BfAdd,
    Change,
    Delete,
    Delta,
    Put,
    Register,
    Replica,
    ZAdd,
    ZSet,
    bulk_load,
    bulk_load_stores,
    treebuild,
)
from edgekv.crdt import bulk as bulk_mod
from edgekv.crdt.merkle import leaf_of
from edgekv.errors import EdgeKVError
from strategies import (
    KEYS,
    STORES,
    History,
    SimOrigin,
    histories,
    replay,
    snapshot,
    written_at_of,
)
from test_replica import check_indexes


def assert_same(bulk: Replica, ref: Replica, every_watermark: bool = True) -> None:
    """Every observable part of two replicas is equal (`changes_since` at every watermark, or
    at a sample of them for large replicas)."""
    assert snapshot(bulk) == snapshot(ref)
    assert bulk.roots() == ref.roots()
    assert bulk.root == ref.root
    assert bulk.store_names() == ref.store_names()
    assert list(bulk.covered) == list(ref.covered)
    assert bulk.watermark == ref.watermark
    assert bulk.purged == ref.purged
    assert len(bulk) == len(ref)
    high = max([st.seq for _, _, st in ref.iter_states()], default=0)
    sample = range(0, high + 2) if every_watermark else range(0, high + 2, max(1, high // 20))
    for w in sample:
        assert list(bulk.changes_since(w)) == list(ref.changes_since(w)), w
    for name, sr in ref.stores.items():
        other = bulk.stores[name]
        assert (other.epoch, other.live) == (sr.epoch, sr.live), name
        assert other.tree.nodes() == sr.tree.nodes(), name
        assert other.tombstones == sr.tombstones, name
    assert sorted(bulk._expiring) == sorted(e for e in ref._expiring if _current(ref, e))
    check_indexes(bulk)


def _current(replica: Replica, entry: tuple[int, int, str, str]) -> bool:
    """An expiry-heap entry for the key's current state (others are skipped when popped)."""
    st = replica.state(entry[2], entry[3])
    return isinstance(st, Register) and st.seq == entry[1]


def reads_match(bulk: Replica, ref: Replica, now: int) -> None:
    for name in STORES:
        a, b = bulk.store(name), ref.store(name)
        for pattern in ("*", "k*", "x", "k?"):
            assert a.scan(pattern, now) == b.scan(pattern, now)
        for key in KEYS:
            assert a.states.get(key) == b.states.get(key)
            if isinstance(b.states.get(key), Register):
                assert a.get_entry(key, now) == b.get_entry(key, now)


@given(history=histories(), data=st.data())
def test_bulk_load_of_final_states_equals_apply(history: History, data: st.DataObject) -> None:
    """What persistence does: the final states (one per key), covered ranges and purge mark."""
    ref = replay(history.items)
    covered = list(ref.covered)
    states = list(ref.iter_states())
    order = data.draw(st.permutations(range(len(states))))
    bulk = Replica()
    n = bulk_load(bulk, [states[i] for i in order], covered, ref.purged)
    assert n == sum(len(sr) for sr in ref.stores.values())
    assert_same(bulk, ref)
    reads_match(bulk, ref, written_at_of(history.last_seq) + data.draw(st.sampled_from([0, 5, 60])))


@given(history=histories(), data=st.data())
def test_bulk_load_of_raw_deltas_equals_apply(history: History, data: st.DataObject) -> None:
    """What a log recovery does: every committed delta, keys repeated, stores dropped/recreated."""
    ref = replay(history.items)
    items = [(s, k, d) for _, s, k, d in history.items]
    if data.draw(st.booleans()):
        items = [items[i] for i in data.draw(st.permutations(range(len(items))))]
    bulk = Replica()
    bulk_load(bulk, items, [(1, history.last_seq)] if history.last_seq else [])
    assert_same(bulk, ref)


@given(history=histories(), data=st.data())
def test_bulk_loaded_replica_keeps_working(history: History, data: st.DataObject) -> None:
    """After a bulk load, apply and purge behave as on the apply-built replica."""
    cut = data.draw(st.integers(0, len(history.items)))
    ref = replay(history.items[:cut])
    bulk = Replica()
    bulk_load(bulk, list(ref.iter_states()), list(ref.covered))
    apply_then_purge(bulk, ref, history, cut, data)
    assert_same(bulk, ref)


def apply_then_purge(
    bulk: Replica, ref: Replica, history: History, cut: int, data: st.DataObject
) -> None:
    """The history's items from `cut` on applied to both replicas, then a purge at a drawn
    horizon: each apply and the purge must do the same on both."""
    for seq, store, key, delta in history.items[cut:]:
        assert (bulk.apply(store, key, delta) is None) == (ref.apply(store, key, delta) is None)
        bulk.covered.add(seq, seq)
        ref.covered.add(seq, seq)
    now = written_at_of(history.last_seq) + 100
    horizon = data.draw(st.integers(0, history.last_seq + 1))
    assert sorted(bulk.purge(horizon, now)) == sorted(ref.purge(horizon, now))


@given(history=histories(), data=st.data())
def test_deferred_change_log_ends_as_the_loaded_one(history: History, data: st.DataObject) -> None:
    """A load with its indexes deferred leaves its change logs pending (crdt/changelog.py
    rule 5); writes and purges go on, and whether the logs get their entries from a copy
    built off the loop, or a reader comes first and rebuilds them, `changes_since` at every
    watermark is the apply-built replica's, and a log in order and checked has one entry
    per key (no stale entry left unmarked)."""
    n = len(history.items)
    cut = data.draw(st.integers(n // 2, max(n - 1, n // 2)))  # most loaded, something after
    ref = replay(history.items[:cut])
    lazy = Replica()
    groups = {name: sr.states_copy() for name, sr in ref.stores.items()}  # a bulk load owns them
    bulk_load_stores(lazy, groups, list(ref.covered), trees=False)
    copies = lazy.defer_trees()
    # every store the load left without a tree has a copy, and its log is pending
    assert {sr.name for sr, _ in copies} == {
        n for n, sr in lazy.stores.items() if not sr.tree_built
    }
    assert all(sr.changes.pending for sr, _ in copies)
    job = [(sr, bulk_mod.log_entries(states)) for sr, states in copies]  # the worker's part
    read_first = data.draw(st.booleans())
    apply_then_purge(lazy, ref, history, cut, data)
    if read_first:
        list(lazy.changes_since(0))  # rebuilds every pending log from its states
        assert lazy.install_logs(job) == 0
    else:
        assert lazy.install_logs(job) == len(job)
    for sr in lazy.stores.values():
        log = sr.changes
        assert not log.pending
        if log.ordered and log.checked:
            live = [(k, q) for k, q in zip(log.keys, log.seqs, strict=True) if k is not None]
            assert sorted(live) == sorted((k, st.seq) for k, st in sr.states.items()), sr.name
    assert_same(lazy, ref)


def test_deferred_change_log_takes_the_loads_entries_before_later_changes() -> None:
    """Keys loaded out of seq order, then written again, created and removed before the log
    gets the load's entries: the log ends in seq order, every stale entry marked."""
    items: list[tuple[str, str, Delta]] = [(META, "s", Register(1, 0, b"", None))]
    items += [("s", f"k{i}", Register(20 - i, 0, b"v", None)) for i in range(10)]  # k9 first
    ref = Replica()
    bulk_load(ref, items)
    lazy = Replica()
    bulk_load_stores(lazy, bulk_mod._group(items), trees=False)
    ((sr, copy),) = lazy.defer_trees()
    entries = bulk_mod.log_entries(copy)  # a worker thread's part
    assert sr.changes.pending and len(sr.changes) == 0
    for r in (lazy, ref):
        r.apply("s", "k3", Register(30, 0, b"w", None))  # a loaded key again
        r.apply("s", "new", Register(31, 0, b"w", None))
        r.apply("s", "k5", Register(32, 0, None, None))  # deleted, then purged
        r.purge(33, 10**12)
    assert sr.changes.missed  # the loaded entries of k3 and k5, not in the log yet
    assert lazy.install_logs([(sr, entries)]) == 1
    log = sr.changes
    assert log.ordered and log.checked and not log.pending
    live = [(k, q) for k, q in zip(log.keys, log.seqs, strict=True) if k is not None]
    assert live == sorted(((k, st.seq) for k, st in sr.states.items()), key=lambda e: e[1])
    assert_same(lazy, ref)


def test_purged_mark_set_last() -> None:
    """Keys at or below the purge mark are loaded (they are the persisted state), and later
    deltas for missing keys at or below it are ignored, as on the replica that was saved."""
    bulk = Replica()
    items = [
        (META, "s", Register(1, 1, b"", None)),
        ("s", "a", Register(2, 2, b"x", None)),
        ("s", "b", Register(3, 3, None, None)),
    ]
    bulk_load(bulk, items, [(1, 5)], purged=4)
    assert bulk.store("s").get("a", 0) == b"x"
    assert bulk.purged == 4 and bulk.watermark == 5
    assert bulk.apply("s", "c", Register(4, 4, b"old", None)) is None
    assert bulk.apply("s", "c", Register(6, 6, b"new", None)) is not None


def test_dropped_store_keys_are_skipped() -> None:
    items = [
        ("s", "old", Register(2, 2, b"x", None)),  # before the drop at 3: dead
        ("s", "new", Register(5, 5, b"y", None)),
        (META, "s", Register(4, 4, b"", None)),  # recreated at 4 (any input order)
    ]
    bulk = Replica()
    assert bulk_load(bulk, items) == 2
    assert sorted(bulk.store("s").states) == ["new"]
    assert bulk.store_names() == ["s"]


def test_refuses_a_non_empty_replica() -> None:
    r = Replica()
    r.apply(META, "s", Register(1, 1, b"", None))
    with pytest.raises(ValueError):
        bulk_load(r, [])
    r = Replica()
    r.covered.add(1, 1)
    with pytest.raises(ValueError):
        bulk_load(r, [])


def test_gc_is_restored_even_on_error() -> None:
    def bad() -> list[tuple[str, str, Register]]:
        raise RuntimeError("boom")

    class Items:
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield ("s", "a", Register(1, 1, b"", None))
            bad()

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        bulk_load(Replica(), Items())
    assert gc.isenabled()


@given(key=st.text(max_size=40), seq=st.integers(1, (1 << 63) - 1))
def test_inlined_hashes_equal_the_crdt_functions(key: str, seq: int) -> None:
    assert treebuild.FAST_HASHES
    assert treebuild._fast_leaf_and_digest(key, seq) == (
        leaf_of(key),
        Register(seq, 0, None, None).digest(key),
    )


def test_slow_hash_path_gives_the_same_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [("s", f"k{i}", Register(i + 2, 0, b"v", None)) for i in range(200)]
    items.append((META, "s", Register(1, 0, b"", None)))
    fast = Replica()
    bulk_load(fast, items)
    monkeypatch.setattr(treebuild, "FAST_HASHES", False)
    slow = Replica()
    bulk_load(slow, items)
    assert_same(slow, fast)


def _big_store_items(n: int) -> list[tuple[str, str, Delta]]:
    """n keys in one store (enough for the per-leaf lists of treebuild), a few of other kinds."""
    items: list[tuple[str, str, Delta]] = [(META, "s", Register(1, 0, b"", None))]
    items += [("s", f"k{i}", Register(i + 2, 0, b"v" if i % 9 else None, None)) for i in range(n)]
    items.append(("s", "z", ZSet(n + 2, {b"m": (n + 2, 1.0)})))
    return items


def test_large_store_tree_equals_per_key_apply() -> None:
    items = _big_store_items(treebuild._BUCKETS_FROM + 100)
    bulk = Replica()
    bulk_load(bulk, items)
    ref = Replica()
    for store, key, delta in items:
        ref.apply(store, key, delta)
    assert_same(bulk, ref, every_watermark=False)


def test_trees_left_unbuilt_are_built_in_the_background_or_on_first_use() -> None:
    items = _big_store_items(3000)
    ref = Replica()
    bulk_load(ref, items)
    lazy = Replica()
    bulk_load_stores(lazy, bulk_mod._group(items), trees=False)
    assert lazy.trees_pending and not lazy.stores["s"].tree_built
    assert lazy.store("s").get("k1", 0) == b"v"  # reads need no tree
    built = lazy.build_pending_trees()  # what a worker thread does
    assert lazy.install_trees(built) == 1 and not lazy.trees_pending
    assert_same(lazy, ref, every_watermark=False)
    # a change before the background build is installed builds the tree itself, first
    lazy2 = Replica()
    bulk_load_stores(lazy2, bulk_mod._group(items), trees=False)
    built = lazy2.build_pending_trees()
    delta = Register(10_000, 0, b"new", None)
    lazy2.apply("s", "k5", delta)
    ref.apply("s", "k5", delta)
    assert lazy2.install_trees(built) == 0  # stale: never installed over the fresher tree
    assert_same(lazy2, ref, every_watermark=False)


# -- the edge's load path (node/persistence.py) goes through bulk_load ------------------------------


def _saved_db(tmp_path: Path) -> Replica:
    """A replica with every kind of state, saved as the edge saves it; returns the replica."""
    from edgekv.node.persistence import ReplicaStore

    ref = replay(_mixed_history())
    store = ReplicaStore(tmp_path)
    store.load()
    store.replica = ref
    store.on_changes([Change(s, k, st) for s, k, st in ref.iter_states()])
    anyio.run(store.close)
    return ref


def _mixed_history() -> list[tuple[int, str, str, Delta]]:
    sim = SimOrigin()
    sim.create_store("s1")
    for i in range(30):
        sim.write("s1", Put(f"k{i:02d}", b"v%d" % i, ttl=60 if i % 7 == 0 else None))
    sim.write("s1", Delete("k03"))
    sim.write("s1", ZAdd("z", {b"a": 1.0, b"b": 2.0}))
    sim.write("s1", BfAdd("bf", [b"x"]))
    sim.create_store("s2")
    sim.write("s2", Put("old", b"gone"))
    sim.drop_store("s2")
    sim.create_store("s2")
    sim.write("s2", Put("new", b"here"))
    return sim.history.items


def test_persistence_load_equals_the_saved_replica(tmp_path: Path) -> None:
    from edgekv.node.persistence import ReplicaStore

    ref = _saved_db(tmp_path)
    again = ReplicaStore(tmp_path)
    report = again.load()
    assert report.corrupt_moved_to is None and report.keys == len(ref)
    assert_same(again.replica, ref)
    anyio.run(again.close)


_REG_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "too short": lambda r: r[:5],
    "unknown flags": lambda r: b"\x07" + r[1:],
    "negative written_at": lambda r: r[:9] + b"\x80" + r[10:],
    "expiry flag without expiry": lambda r: b"\x02" + r[1:17],
    "negative expiry": lambda r: b"\x02" + r[1:17] + b"\x80" + bytes(7) + r[17:],
    "seq not the row's": lambda r: r[:8] + bytes([r[8] ^ 1]) + r[9:],
}


@pytest.mark.parametrize(
    "damage",
    [
        "seq = 0",
        "seq = -1",
        "seq = 1.5",
        "seq = 'x'",
        "seq = seq + 1",
        "reg = 'text'",
        "reg = 7",
        "reg = NULL",
        "key = CAST(key AS BLOB)",
        *_REG_DAMAGE,
    ],
)
def test_damaged_register_columns_are_refused(tmp_path: Path, damage: str) -> None:
    """The column-wise register checks of the loader refuse what `_register` refuses."""
    from edgekv.node.filerows import _register
    from edgekv.node.persistence import ReplicaStore

    _saved_db(tmp_path)
    db = sqlite3.connect(tmp_path / "edge.db")
    where = "WHERE store = 's1' AND key = 'k05'"
    if damage in _REG_DAMAGE:
        (reg,) = db.execute(f"SELECT reg FROM states {where}").fetchone()
        db.execute(f"UPDATE states SET reg = ? {where}", (_REG_DAMAGE[damage](reg),))
    else:
        db.execute(f"UPDATE states SET {damage} {where}")
    row = db.execute(f"SELECT reg, seq FROM states {where}").fetchone()
    db.commit()
    db.close()
    if not damage.startswith(("reg = NULL", "key")):
        with pytest.raises(EdgeKVError):
            _register(*row)
    again = ReplicaStore(tmp_path)
    report = again.load()
    assert report.corrupt_moved_to is not None
    assert len(again.replica) == 0 and again.replica.watermark == 0
    anyio.run(again.close)


def test_an_in_place_join_on_an_unbuilt_tree_keeps_the_digest_right() -> None:
    """A zset joined in place (same reset) while its store's tree is still unbuilt: the tree
    is built from the state before the join, then updated, as if it had been there all along."""
    ref = Replica()
    bulk_load(ref, _big_store_items(50))
    lazy = Replica()  # its own state objects: a bulk load takes ownership, joins in place
    bulk_load_stores(lazy, bulk_mod._group(_big_store_items(50)), trees=False)
    reset = 50 + 2  # the zset's reset in _big_store_items
    more = ZSet(reset, {b"n": (reset + 100, 2.0)}, reset + 100)
    assert ref.apply("s", "z", more) is not None
    assert lazy.apply("s", "z", more) is not None
    assert_same(lazy, ref, every_watermark=False)
