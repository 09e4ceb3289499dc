"""Bulk load: fill an EMPTY replica from (store, key, state) triples, building indexes in bulk.

Why: a restarting edge (a million persisted keys) or a recovering origin must not pay
`Replica.apply` per key, which keeps every index up to date one key at a time (a Merkle path
of XORs, a sorted-list insertion, a change-log entry).  Loading builds each index once from
the finished states dict instead, with the result `apply` would have given (property-tested
in tests/test_crdt_bulk.py: states, roots, change index, scans, watermark).

Theory of operation
1. Group: the triples are collected per store into plain dicts (the stores' future `states`
   dicts).  A key given twice is joined with `state.merge`, as `apply` would.  The loader
   takes ownership of the state objects (no copies; a `BloomDelta` becomes a `Bloom`).
2. Store metadata first: the META store's states go through `Replica.apply`, which sets each
   store's epoch and liveness.  Then a store's states whose reset is below its epoch (written
   before the store was dropped or recreated) are dropped, as `apply` would.
3. Index each store in one pass: the Merkle tree (crdt/treebuild.py), the sorted key index
   from one sort
   (`SortedList(iterable)` sorts once, linear on the already-sorted input persistence gives);
   the change log in seq order (nothing to do when the input is already in seq order; else
   each key placed in a slot indexed by its seq when the seqs are dense, crdt/changelog.py
   `by_seq`, half the time of a sort); the tombstone set; the expiry heap, heapified once.
4. The Merkle trees are about a third of the load (hashing every key).  `trees=False` leaves
   them unbuilt, so that a restarting edge serves reads at once and builds them in a worker
   thread before gossip starts; a store's tree is built on first use if still missing.  The
   change logs are then left pending too (crdt/changelog.py rule 5: ordering 1M entries by
   seq is ~0.6 s, which no read needs): `log_entries` of a copy of the states, in the same
   worker thread as the trees, gives them their entries (`Replica.install_logs`), or the
   first reader of a log rebuilds it from the states.
5. `covered` and `purged` are set last: with `purged` set first, the rows being loaded would
   count as deleted-and-purged.
6. The load allocates no container object per key (no header tuples: the flags byte and the
   seq are read straight from each register's bytes), so the cyclic GC, which counts container
   allocations, barely runs during a load and the library never has to switch off the
   embedding application's collector.  Measured at 1M keys: 1,424 young-generation
   collections (0.33 s) with per-key tuples, 186 without.
7. A snapshot receiver (gossip/snapshot.py) loads what it received into a NEW replica (in a
   worker thread, with the trees it hashed while chunks arrived: `prebuilt`), then `adopt`
   makes the live replica that replica joined with every change the live one applied after
   the snapshot's watermark (writes that arrived by gossip meanwhile), in place, so every
   holder of the live replica object sees the result.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from itertools import compress, repeat
from operator import (
    and_,
    attrgetter,
    is_,
    itemgetter,
)
from typing import cast

from sortedcontainers import SortedList

from .bloom import BloomDelta
from .changelog import BLOCK, LogEntries, by_seq
from .merkle import MerkleTree
from .register import HAS_EXPIRY, SEQ_BYTES, TOMBSTONE, Register
from .replica import META, Change, Replica, StoreReplica
from .state import Delta, State, merge
from .treebuild import build_tree

__all__ = ["adopt", "bulk_load", "bulk_load_stores", "log_entries"]

_SEQ = attrgetter("seq")
_RESET = attrgetter("reset")
_FIRST = itemgetter(0)
_from_be = int.from_bytes  # big-endian by default (3.11+)


def bulk_load(
    replica: Replica,
    items: Iterable[tuple[str, str, State | Delta]],
    covered: Iterable[tuple[int, int]] = (),
    purged: int = 0,
) -> int:
    """Load `items` into the empty `replica`; returns the number of keys loaded (META included).

    Equivalent to applying every item with `Replica.apply` (META items first), then adding
    `covered` and setting `purged`.  Raises ValueError if the replica is not empty.
    """
    if len(replica.stores) != 1 or replica.stores[META].states or replica.purged or replica.covered:
        raise ValueError("bulk_load needs an empty replica")
    return bulk_load_stores(replica, _group(items), covered, purged)


def bulk_load_stores(
    replica: Replica,
    groups: dict[str, dict[str, State]],
    covered: Iterable[tuple[int, int]] = (),
    purged: int = 0,
    *,
    trees: bool = True,
    prebuilt: Mapping[str, MerkleTree] | None = None,
) -> int:
    """`bulk_load` of states already grouped per store: store -> key -> state, at most one
    state per key (so nothing to join).  The dicts become the stores' `states` (ownership
    passes to the replica; `groups` is emptied); keys in sorted order make the key index
    cheapest, states in seq order the change log.  Returns the number of keys loaded.

    With `trees=False` the stores' Merkle trees are left unbuilt (rule 4): reads work at once;
    build them with `Replica.build_pending_trees` + `install_trees`, or let first use do it.
    Their change logs are left pending too: `log_entries` of `Replica.defer_trees`'s copies
    + `Replica.install_logs`, or the first reader rebuilds each.
    `prebuilt` gives, per store, a tree already built from exactly that store's states (used
    unless the store's epoch drops some of them, then it is rebuilt)."""
    if len(replica.stores) != 1 or replica.stores[META].states or replica.purged or replica.covered:
        raise ValueError("bulk_load needs an empty replica")
    n = 0
    for key, st in groups.pop(META, {}).items():
        replica.apply(META, key, st)
        n += 1
    while groups:
        name, states = groups.popitem()
        sr = replica.store(name)
        if states:
            tree = prebuilt.get(name) if prebuilt is not None else None
            _index_store(replica, sr, states, trees, tree)
        n += len(sr.states)
    if replica._expiring:
        heapq.heapify(replica._expiring)
    replica.covered.update(covered)
    replica.purged = max(replica.purged, purged)
    replica.removed_high = max(replica.removed_high, purged)  # what was removed is unknown
    return n


def _group(items: Iterable[tuple[str, str, State | Delta]]) -> dict[str, dict[str, State]]:
    """Per store, key -> state (rule 1); consecutive items of one store cost one dict lookup."""
    groups: dict[str, dict[str, State]] = {}
    cur: str | None = None
    states: dict[str, State] = {}
    for store, key, item in items:
        if store != cur:
            cur = store
            states = groups.setdefault(store, {})
        st = item.to_state() if isinstance(item, BloomDelta) else item
        prev = states.setdefault(key, st)
        if prev is not st:  # the key again: join, as apply would
            new = merge(prev, st)
            if new is not None:
                states[key] = new
    return groups


def _index_store(
    replica: Replica,
    sr: StoreReplica,
    states: dict[str, State],
    trees: bool,
    tree: MerkleTree | None = None,
) -> None:
    """Build every index of the empty store `sr` from `states` (rule 3)."""
    name = sr.name
    keys = list(states)
    vals = list(states.values())
    is_reg = list(map(is_, map(type, vals), repeat(Register)))
    regs = list(compress(vals, is_reg)) if not all(is_reg) else vals
    reg_keys = list(compress(keys, is_reg)) if regs is not vals else keys
    # flags byte and big-endian seq read straight from the bytes: no per-key header tuple, so
    # the load allocates no container objects per key and never wakes the cyclic GC (rule 6)
    raw = cast("list[Register]", regs)  # compress() by exact type above
    flags = list(map(_FIRST, raw))
    seqs: list[int] = []  # a deferred log (rule 4) needs none; the epoch check does
    if trees or sr.epoch:
        seqs = list(map(_from_be, map(SEQ_BYTES, raw))) if regs is vals else list(map(_SEQ, vals))
    resets = seqs if regs is vals else list(map(_RESET, vals))  # a register's reset is its seq
    if sr.epoch and min(resets) < sr.epoch:  # written before the store's (re)creation: dropped
        epoch = sr.epoch
        kept = {k: st for k, st, r in zip(keys, vals, resets, strict=True) if r >= epoch}
        if kept:
            _index_store(replica, sr, kept, trees)
        return
    sr.states = states
    sr.tombstones.update(compress(reg_keys, map(and_, flags, repeat(TOMBSTONE))))
    has_expiry = list(map(and_, flags, repeat(HAS_EXPIRY)))
    if any(has_expiry):  # as `apply` does: (expiry, seq, store, key), heapified at the end
        replica._expiring.extend(
            (r.expiry or 0, r.seq, name, k)  # never 0: each has HAS_EXPIRY
            for r, k in zip(compress(raw, has_expiry), compress(reg_keys, has_expiry), strict=True)
        )
    sr._tree = tree if tree is not None else build_tree(states) if trees else None
    sr.keys = SortedList(keys)
    if trees:
        sr.changes.load(keys, seqs)
    else:
        sr.changes.defer()


def log_entries(states: Mapping[str, State]) -> LogEntries:
    """The change-log entries of a store holding `states`, in seq order (for a deferred log:
    crdt/changelog.py rule 5).  Pure: meant for a worker thread, on a copy of the states."""
    vals = list(states.values())
    if not set(map(type, vals)) <= {Register}:
        return by_seq(list(states), list(map(_SEQ, vals)))
    seqs: list[int] = []
    for i in range(0, len(vals), BLOCK):  # short GIL holds, as in `by_seq`
        seqs += map(_from_be, map(SEQ_BYTES, cast("list[Register]", vals[i : i + BLOCK])))
    return by_seq(list(states), seqs)


def adopt(target: Replica, loaded: Replica, since: int) -> list[Change]:
    """Make `target` hold `loaded` joined with every state `target` changed after seq `since`
    (rule 7).  `loaded` must reflect every seq up to `since` (a snapshot at that watermark);
    its trees must be built.  `target`'s stores, covered ranges, purge mark and expiry heap
    are replaced in place (`loaded` is spent).  Returns the joined changes that were newer
    than the snapshot's states."""
    recent = list(target.changes_since(since))
    out = loaded.apply_batch(recent)  # `loaded.purged` applies: nothing purged there returns
    loaded.covered.update(target.covered)
    loaded.purged = max(target.purged, loaded.purged)
    target.stores = loaded.stores
    target.covered = loaded.covered
    target.purged = loaded.purged
    target.removed_high = max(target.removed_high, loaded.removed_high)
    target._expiring = loaded._expiring
    return out
