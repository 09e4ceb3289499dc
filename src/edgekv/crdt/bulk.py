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
from functools import partial
from hashlib import blake2b
from itertools import compress, islice, repeat
from operator import and_, attrgetter, concat, is_, is_not, le, methodcaller, mul, not_, rshift
from typing import Literal
from zlib import crc32

from sortedcontainers import SortedList

from .bloom import BloomDelta
from .merkle import DEPTH, FANOUT_BITS, LEAF_BITS, leaf_of
from .register import Register
from .replica import META, Replica, StoreReplica
from .state import Delta, State, merge

__all__ = ["FAST_HASHES", "bulk_load", "bulk_load_stores"]

_PLACEMENT_MUL = 0x9E3779B1
_LEAF_SHIFT = 32 - LEAF_BITS
_BIG: Literal["big"] = "big"
_SEQ = attrgetter("seq")
_VALUE = attrgetter("value")
_EXPIRY = attrgetter("expiry")
_DIGEST = methodcaller("digest")
_BLAKE16 = partial(blake2b, digest_size=16)


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
        return bulk_load_stores(replica, _group(items), covered, purged)
    finally:
        if gc_was_enabled:
            gc.enable()


def bulk_load_stores(
    replica: Replica,
    groups: dict[str, dict[str, State]],
    covered: Iterable[tuple[int, int]] = (),
    purged: int = 0,
) -> int:
    """`bulk_load` of states already grouped per store: store -> key -> state, at most one
    state per key (so nothing to join).  The dicts become the stores' `states` (ownership
    passes to the replica; `groups` is emptied); keys in sorted order make the key index
    cheapest, states in seq order the change log.  Returns the number of keys loaded."""
    if len(replica.stores) != 1 or replica.stores[META].states or replica.purged or replica.covered:
        raise ValueError("bulk_load needs an empty replica")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n = 0
        for key, st in groups.pop(META, {}).items():
            replica.apply(META, key, st)
            n += 1
        while groups:
            name, states = groups.popitem()
            sr = replica.store(name)
            epoch = sr.epoch
            if epoch and any(st.reset < epoch for st in states.values()):
                states = {k: st for k, st in states.items() if st.reset >= epoch}
            if states:
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
    keys = list(states)
    vals = list(states.values())
    seqs = list(map(_SEQ, vals))
    is_reg = list(map(is_, map(type, vals), repeat(Register)))
    regs = list(compress(vals, is_reg)) if not all(is_reg) else vals
    reg_keys = list(compress(keys, is_reg)) if regs is not vals else keys
    values = list(map(_VALUE, regs))
    sr.tombstones.update(compress(reg_keys, map(is_, values, repeat(None))))
    expiries = list(map(_EXPIRY, regs))
    has_expiry = list(map(is_not, expiries, repeat(None)))
    if any(has_expiry):  # as `apply` does: (expiry, seq, store, key), heapified at the end
        replica._expiring.extend(
            (e, s.seq, name, k)
            for e, s, k in zip(
                compress(expiries, has_expiry),
                compress(regs, has_expiry),
                compress(reg_keys, has_expiry),
                strict=True,
            )
        )
    if FAST_HASHES:
        encoded = list(map(str.encode, keys))
        placements = map(
            and_, map(mul, map(crc32, encoded), repeat(_PLACEMENT_MUL)), repeat(0xFFFFFFFF)
        )
        leaf_of_key = list(map(rshift, placements, repeat(_LEAF_SHIFT)))
        digests = _register_digests(encoded, seqs)
    else:
        leaf_of_key = list(map(leaf_of, keys))
        digests = [st.digest(k) for k, st in zip(keys, vals, strict=True)]
    if regs is not vals or not FAST_HASHES:  # zsets and blooms: their own digest
        for i in compress(range(len(vals)), map(not_, is_reg)):
            digests[i] = vals[i].digest(keys[i])
    leaves: dict[int, int] = {}
    leaf_keys = sr.tree.leaf_keys
    get = leaves.get
    for key, leaf, digest in zip(keys, leaf_of_key, digests, strict=True):
        leaves[leaf] = get(leaf, 0) ^ digest
        lk = leaf_keys.get(leaf)
        if lk is None:
            leaf_keys[leaf] = [key]
        else:
            lk.append(key)
    _fold_levels(sr, leaves)
    sr.keys = SortedList(keys)
    _build_changelog(sr, keys, seqs)


def _register_digests(encoded: list[bytes], seqs: list[int]) -> list[int]:
    """`Register.digest` of each (encoded key, seq), as C-level maps: BLAKE2b-128 of
    b"r" + 4-byte key length + key + 8-byte seq."""
    heads = map(int.to_bytes, map(len, encoded), repeat(4), repeat(_BIG))
    tails = map(int.to_bytes, seqs, repeat(8), repeat(_BIG))
    data = map(concat, map(concat, map(concat, repeat(b"r"), heads), encoded), tails)
    hashes = map(_DIGEST, map(_BLAKE16, data))
    return list(map(int.from_bytes, hashes, repeat(_BIG)))


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


def _build_changelog(sr: StoreReplica, keys: list[str], seqs: list[int]) -> None:
    """The change log as `apply` in seq order would leave it: one entry per key, by seq."""
    log_keys: list[str | None] = list(keys)
    if not all(map(le, seqs, islice(seqs, 1, None))):
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        log_keys = list(map(log_keys.__getitem__, order))
        seqs = list(map(seqs.__getitem__, order))
    log = sr.changes
    log.seqs = array("q", seqs)
    log.keys = log_keys
    log.ordered = log.checked = True
