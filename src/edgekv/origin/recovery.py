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
3. Load in bulk with `crdt.bulk_load_stores`: store metadata first (so keys of dropped stores
   are skipped), then every index of every store built once (states dict, sorted key index,
   change log in seq order: rule 1's key order means it needs no sort, Merkle leaves then
   inner levels, tombstones, expiry heap).  tests/test_origin_recovery.py checks that the
   result equals the per-key `apply` path index by index.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..crdt import Register, Replica, State
from ..crdt.bulk import bulk_load_stores
from ..crdt.codec import MAX_SEQ, decode_delta
from ..crdt.state import merge
from ..errors import CodecError
from .log import CommitLog
from .wal import LogError

__all__ = ["recover"]

_REGISTER_PREFIX = b"\x85\x00"  # CBOR: array(5), unsigned 0 (the register kind)
_CHUNK = 65536


def recover(wal: CommitLog, replica: Replica) -> int:
    """Rebuild `replica` (empty) from the log; returns the number of rows read."""
    kept, n = _fold(wal)
    groups: dict[str, dict[str, State]] = {}
    for store in list(kept):
        states: dict[str, State] = {}
        for key, rows in kept.pop(store).items():  # in seq order (rule 1)
            st = _state(rows)
            if st is not None:
                states[key] = st
        groups[store] = states
    bulk_load_stores(replica, groups, [(1, wal.high)] if wal.high else [])
    return n


# -- 1. fold -------------------------------------------------------------------------------------

Kept = dict[str, dict[str, Any]]  # store -> key -> (seq, blob) | [(seq, blob), ...]


def _fold(wal: CommitLog) -> tuple[Kept, int]:
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
