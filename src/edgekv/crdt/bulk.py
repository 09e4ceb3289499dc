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
3. Index each store in one pass: Merkle leaves (per-key placement and digest, XORed into a
   leaf dict), then the inner levels folded bottom-up; the sorted key index from one sort
   (`SortedList(iterable)` sorts once, linear on the already-sorted input persistence gives);
   the change log from one sort by seq (skipped when the input is already in seq order); the
   tombstone set; the expiry heap, heapified once.
4. Registers are the bulk of any store, so their placement (CRC-32) and digest (BLAKE2b of
   tag, key length, key, seq) are computed inline from one encoding of the key.  At import,
   `FAST_HASHES` checks on sample keys that this equals `leaf_of` and `Register.digest`; if
   the hashing ever changes, the loader calls those functions instead (slower, never wrong).
5. `covered` and `purged` are set last: with `purged` set first, the rows being loaded would
   count as deleted-and-purged.
6. The cyclic GC is paused during the load (millions of long-lived objects would make it
   rescan the heap several times) and re-enabled in `finally`.
"""

from __future__ import annotations

import gc
import heapq
from array import array
from collections.abc import Iterable
from hashlib import blake2b
from operator import le
from zlib import crc32

from sortedcontainers import SortedList

from .bloom import BloomDelta
from .merkle import DEPTH, FANOUT_BITS, LEAF_BITS, leaf_of
from .register import Register
from .replica import META, Replica, StoreReplica
from .state import Delta, State, merge

__all__ = ["FAST_HASHES", "bulk_load"]

_PLACEMENT_MUL = 0x9E3779B1
_LEAF_SHIFT = 32 - LEAF_BITS


def _fast_leaf_and_digest(key: str, seq: int) -> tuple[int, int]:
    kb = key.encode()
    leaf = ((crc32(kb) * _PLACEMENT_MUL) & 0xFFFFFFFF) >> _LEAF_SHIFT
    h = blake2b(b"r" + len(kb).to_bytes(4, "big") + kb + seq.to_bytes(8, "big"), digest_size=16)
    return leaf, int.from_bytes(h.digest(), "big")


def _fast_hashes_agree() -> bool:
    """True when the inlined placement and register digest (rule 4) equal the crdt functions."""
    for key, seq in (("probe", 1), ("k\u00e9y:42", 123_456_789), ("x" * 300, (1 << 62) + 5)):
        if _fast_leaf_and_digest(key, seq) != (
            leaf_of(key),
            Register(seq, 0, b"", None).digest(key),
        ):
            return False
    return True


FAST_HASHES = _fast_hashes_agree()


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
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        groups = _group(items)
        n = 0
        for key, st in groups.pop(META, {}).items():
            replica.apply(META, key, st)
            n += 1
        for name, states in groups.items():
            sr = replica.store(name)
            epoch = sr.epoch
            if epoch and any(st.reset < epoch for st in states.values()):
                states = {k: st for k, st in states.items() if st.reset >= epoch}
            _index_store(replica, sr, states)
            n += len(states)
        if replica._expiring:
            heapq.heapify(replica._expiring)
        replica.covered.update(covered)
        replica.purged = max(replica.purged, purged)
        return n
    finally:
        if gc_was_enabled:
            gc.enable()


def _group(items: Iterable[tuple[str, str, State | Delta]]) -> dict[str, dict[str, State]]:
    """Per store, key -> state (rule 1); consecutive items of one store cost one dict lookup."""
    groups: dict[str, dict[str, State]] = {}
    cur: str | None = None
    states: dict[str, State] = {}
    for store, key, st in items:
        if store != cur:
            cur = store
            states = groups.setdefault(store, {})
        if st.__class__ is BloomDelta:
            st = st.to_state()
        prev = states.setdefault(key, st)  # type: ignore[arg-type]
        if prev is not st:  # the key again: join, as apply would
            new = merge(prev, st)
            if new is not None:
                states[key] = new
    return groups


def _index_store(replica: Replica, sr: StoreReplica, states: dict[str, State]) -> None:
    """Build every index of the empty store `sr` from `states` (rule 3)."""
    name = sr.name
    sr.states = states
    leaves: dict[int, int] = {}
    leaf_keys = sr.tree.leaf_keys
    tombstones = sr.tombstones
    expiring = replica._expiring
    fast = FAST_HASHES
    reg = Register
    for key, st in states.items():
        if st.__class__ is reg:
            seq = st.seq
            if st.value is None:
                tombstones.add(key)
            elif st.expiry is not None:
                expiring.append((st.expiry, seq, name, key))
            if fast:
                kb = key.encode()
                leaf = ((crc32(kb) * _PLACEMENT_MUL) & 0xFFFFFFFF) >> _LEAF_SHIFT
                digest = int.from_bytes(
                    blake2b(
                        b"r" + len(kb).to_bytes(4, "big") + kb + seq.to_bytes(8, "big"),
                        digest_size=16,
                    ).digest(),
                    "big",
                )
            else:
                leaf = leaf_of(key)
                digest = st.digest(key)
        else:
            leaf = leaf_of(key)
            digest = st.digest(key)
        lk = leaf_keys.get(leaf)
        if lk is None:
            leaf_keys[leaf] = [key]
        else:
            lk.append(key)
        leaves[leaf] = leaves.get(leaf, 0) ^ digest
    _fold_levels(sr, leaves)
    sr.keys = SortedList(states)
    _build_changelog(sr, states)


def _fold_levels(sr: StoreReplica, leaves: dict[int, int]) -> None:
    """Set the tree's levels: the leaves given, each inner level the XOR of its children."""
    levels = sr.tree.levels
    level = {i: v for i, v in leaves.items() if v}
    levels[DEPTH] = level
    for depth in range(DEPTH - 1, -1, -1):
        up: dict[int, int] = {}
        for i, v in level.items():
            p = i >> FANOUT_BITS
            up[p] = up.get(p, 0) ^ v
        level = {i: v for i, v in up.items() if v}
        levels[depth] = level


def _build_changelog(sr: StoreReplica, states: dict[str, State]) -> None:
    """The change log as `apply` in seq order would leave it: one entry per key, by seq."""
    keys: list[str | None] = list(states)
    seqs = [st.seq for st in states.values()]
    if not all(map(le, seqs, seqs[1:])):
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        keys = [keys[i] for i in order]
        seqs = [seqs[i] for i in order]
    log = sr.changes
    log.seqs = array("q", seqs)
    log.keys = keys
    log.ordered = log.checked = True
