"""Recovery: rebuild the origin's replica from its write-ahead log, in bulk.

Synchronous, no I/O besides reading the log (the sequencer runs it in a worker thread).  A log
of a million rows must load in seconds, so nothing here goes row by row through
`Replica.apply` (which keeps every index up to date one key at a time).

Theory of operation
1. Fold without decoding.  Rows come in seq order.  A register delta (a put or a delete: its
   CBOR starts with the bytes 85 00, an array of 5 whose kind is 0) supersedes every older row
   of its key (its reset is its seq, above the reset of anything older), so only the latest
   register row of a key and the rows after it are kept, as raw bytes.
   A key moves to the end of its store's dict at each of its rows, so the keys end up in
   the order of their last row, which is the order of their state's seq.
2. Decode only what is kept, fused with the load (one pass per key, no intermediate lists):
   registers are rebuilt directly from `cbor2.loads` (the same checks as
   `crdt.codec.decode_delta`), anything else goes through `decode_delta`, and a key's rows
   are joined with `crdt.state.merge`.  A corrupt row is a LogError naming its seq.
3. Load in bulk.  Store metadata (the META store) goes through `Replica.apply` (it sets each
   store's epoch and liveness).  Every other store is built directly into its (empty)
   StoreReplica: the states dict, the sorted key index built once, the Merkle leaves XORed in
   one pass then the inner levels folded from them, the change log fed in seq order (so it
   never needs sorting), the tombstone set.  Keys below their store's epoch (dropped stores) are skipped, as
   `Replica.apply` would.  Registers that carry an expiry go through `Replica.apply` afterwards
   (the replica keeps a private expiry heap), as does any store whose indexes do not have the
   shape this loader knows (then the result is the same, only slower).
   tests/test_origin_recovery.py checks that the bulk load equals the `apply` path index by
   index, so a change in the crdt layer's index structures fails a test, not a recovery.
4. Hashing is a third of the work: the leaf placement (CRC-32) and the register digest
   (BLAKE2b of tag, key length, key, seq) are computed inline from one encoding of the key,
   with one hash call instead of four updates.  At import, `_FAST_HASHES` checks on sample
   keys that this gives exactly `leaf_of` and `Register.digest`; if the crdt layer ever
   changes its hashing, the check fails and the loader calls those functions instead.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any
from zlib import crc32

import cbor2
from sortedcontainers import SortedList

from ..crdt import META, Register, Replica, State
from ..crdt.changelog import ChangeLog
from ..crdt.codec import MAX_SEQ, decode_delta
from ..crdt.merkle import DEPTH, FANOUT_BITS, LEAF_BITS, MerkleTree, leaf_of
from ..crdt.replica import StoreReplica
from ..crdt.state import merge
from ..errors import CodecError
from .wal import LogError, WriteAheadLog

__all__ = ["recover"]

_REGISTER_PREFIX = b"\x85\x00"  # CBOR: array(5), unsigned 0 (the register kind)
_CHUNK = 65536
_PLACEMENT_MUL = 0x9E3779B1
_LEAF_SHIFT = 32 - LEAF_BITS


def _fast_hashes_agree() -> bool:
    """True when the inlined leaf placement and register digest (rule 4) compute exactly what
    `crdt.merkle.leaf_of` and `Register.digest` do, checked on sample keys."""
    for key, seq in (("probe", 1), ("k\u00e9y:42", 123_456_789), ("x" * 300, (1 << 62) + 5)):
        kb = key.encode()
        leaf = ((crc32(kb) * _PLACEMENT_MUL) & 0xFFFFFFFF) >> _LEAF_SHIFT
        h = blake2b(b"r" + len(kb).to_bytes(4, "big") + kb + seq.to_bytes(8, "big"), digest_size=16)
        if leaf != leaf_of(key) or int.from_bytes(h.digest(), "big") != Register(
            seq, 0, b"", None
        ).digest(key):
            return False
    return True


_FAST_HASHES = _fast_hashes_agree()


def recover(wal: WriteAheadLog, replica: Replica) -> int:
    """Rebuild `replica` (empty) from the log; returns the number of rows read."""
    kept, n = _fold(wal)
    metas = kept.pop(META, {})
    for key, rows in metas.items():
        st = _state(rows)
        if st is not None:
            replica.apply(META, key, st)
    for store, keys in kept.items():
        _load_store(replica, store, keys)
    if wal.high:
        replica.covered.add(1, wal.high)
    return n


# -- 1. fold -------------------------------------------------------------------------------------

Kept = dict[str, dict[str, Any]]  # store -> key -> (seq, blob) | [(seq, blob), ...]


def _fold(wal: WriteAheadLog) -> tuple[Kept, int]:
    """Per key, the raw rows that matter (rule 1), keys in the order of their last row (so
    in the order of their state's seq); and the number of rows read."""
    kept: Kept = {}
    n = 0
    cur_store: str | None = None
    keys: dict[str, Any] = {}
    prefix = _REGISTER_PREFIX
    for chunk in wal.rows(_CHUNK):
        n += len(chunk)
        for seq, store, key, blob in chunk:
            if store != cur_store:
                cur_store = store
                keys = kept.setdefault(store, {})
            prev = keys.pop(key, None)
            if blob.startswith(prefix):
                keys[key] = (seq, blob)
            elif prev is None:
                keys[key] = [(seq, blob)]
            elif type(prev) is list:
                prev.append((seq, blob))
                keys[key] = prev
            else:
                keys[key] = [prev, (seq, blob)]
    return kept, n


# -- 2. decode -----------------------------------------------------------------------------------


def _state(rows: Any) -> State | None:
    """A key's state from its kept rows (rule 2)."""
    if type(rows) is tuple:
        return _register(_loads(rows[1], rows[0]), rows[0])
    folded: State | None = None
    for seq, blob in rows:
        new = merge(folded, _delta(_loads(blob, seq), seq))
        if new is not None:
            folded = new
    return folded


def _loads(blob: bytes, seq: int) -> Any:
    try:
        return cbor2.loads(blob, tag_hook=_no_tags)
    except Exception as exc:
        raise LogError(f"corrupt log row at seq {seq}: {exc}") from exc


def _no_tags(*_args: object) -> None:
    raise CodecError("CBOR tags are not allowed")


def _register(obj: Any, seq: int) -> State:
    """A register delta from its decoded array; the checks of `decode_delta`."""
    if type(obj) is list and len(obj) == 5:
        kind, rseq, wat, value, expiry = obj
        if (
            kind == 0
            and type(kind) is int
            and type(rseq) is int
            and 1 <= rseq <= MAX_SEQ
            and type(wat) is int
            and 0 <= wat <= MAX_SEQ
            and (value is None or type(value) is bytes)
            and (expiry is None or (type(expiry) is int and 0 <= expiry <= MAX_SEQ))
        ):
            return Register(rseq, wat, value, expiry)
    return _delta(obj, seq)


def _delta(obj: Any, seq: int) -> State:
    try:
        delta = decode_delta(obj)
    except CodecError as exc:
        raise LogError(f"corrupt log row at seq {seq}: {exc}") from exc
    st = merge(None, delta)
    assert st is not None
    return st


# -- 3. load -------------------------------------------------------------------------------------


def _load_store(replica: Replica, store: str, keys: dict[str, Any]) -> None:
    """Decode and load one store's keys (rules 2 and 3)."""
    sr = replica.store(store)
    if not _loadable(replica, sr):
        for key, rows in keys.items():
            st = _state(rows)
            if st is not None:
                replica.apply(store, key, st)
        return
    epoch = sr.epoch
    states = sr.states
    tree = sr.tree
    leaf_keys = tree.leaf_keys
    leaves: dict[int, int] = {}
    tombstones = sr.tombstones
    later: list[tuple[str, State]] = []
    loads = cbor2.loads
    fast = _FAST_HASHES
    for key, rows in keys.items():
        if type(rows) is tuple:  # the common case, inlined: a register
            seq, blob = rows
            try:
                obj = loads(blob, tag_hook=_no_tags)
            except Exception as exc:
                raise LogError(f"corrupt log row at seq {seq}: {exc}") from exc
            st = _register(obj, seq)
        else:
            folded = _state(rows)
            if folded is None:
                continue
            st = folded
        if st.reset < epoch:
            continue  # written before its store was dropped: dead
        if type(st) is Register:
            if st.expiry is not None:
                later.append((key, st))
                continue
            if st.value is None:
                tombstones.add(key)
        states[key] = st
        if fast:
            kb = key.encode()
            leaf = ((crc32(kb) * _PLACEMENT_MUL) & 0xFFFFFFFF) >> _LEAF_SHIFT
            if type(st) is Register:
                h = blake2b(
                    b"r" + len(kb).to_bytes(4, "big") + kb + st.seq.to_bytes(8, "big"),
                    digest_size=16,
                )
                digest = int.from_bytes(h.digest(), "big")
            else:
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
    level = {i: v for i, v in leaves.items() if v}
    tree.levels[DEPTH] = level
    for depth in range(DEPTH - 1, -1, -1):
        up: dict[int, int] = {}
        for i, v in level.items():
            p = i >> FANOUT_BITS
            up[p] = up.get(p, 0) ^ v
        level = {i: v for i, v in up.items() if v}
        tree.levels[depth] = level
    sr.keys = SortedList(states)
    add = sr.changes.add
    last = 0
    for key, st in states.items():  # ascending seq (rule 1), so the log never needs sorting
        seq = st.seq
        if seq < last:  # cannot happen; stay correct if it does
            sr.changes.clear()
            for k, s in sorted(states.items(), key=lambda kv: kv[1].seq):
                add(s.seq, k, states)
            break
        last = seq
        add(seq, key, states)
    for key, st in later:
        replica.apply(store, key, st)


def _loadable(replica: Replica, sr: StoreReplica) -> bool:
    return (
        not sr.states
        and replica.purged == 0
        and type(sr.keys) is SortedList
        and type(sr.changes) is ChangeLog
        and not len(sr.changes)
        and type(sr.tree) is MerkleTree
        and type(sr.tombstones) is set
        and len(sr.tree.levels) == DEPTH + 1
    )
