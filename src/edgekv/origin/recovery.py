"""Recovery: rebuild the origin's replica from its write-ahead log.  Synchronous, no I/O
besides reading the log (the sequencer runs it in a worker thread at startup)."""

from __future__ import annotations

import cbor2

from ..crdt import Replica, State
from ..crdt.codec import decode_delta
from ..crdt.state import merge
from ..errors import CodecError
from .wal import LogError, WriteAheadLog


def recover(wal: WriteAheadLog, replica: Replica) -> int:
    """Rebuild `replica` from the log; returns the number of rows read."""
    folded: dict[tuple[str, str], State] = {}
    n = 0
    for chunk in wal.rows():
        for seq, store, key, blob in chunk:
            try:
                delta = decode_delta(cbor2.loads(blob))
            except (CodecError, ValueError, cbor2.CBORDecodeError) as exc:
                raise LogError(f"corrupt log row at seq {seq}: {exc}") from exc
            k = (store, key)
            new = merge(folded.get(k), delta)
            if new is not None:
                folded[k] = new
        n += len(chunk)
    # store metadata first so that keys of dropped stores are recognised as dead
    metas = [(k, st) for k, st in folded.items() if k[0] == ""]
    for (store, key), st in metas:
        replica.apply(store, key, st)
    for (store, key), st in folded.items():
        if store != "":
            replica.apply(store, key, st)
    if wal.high:
        replica.covered.add(1, wal.high)
    return n
