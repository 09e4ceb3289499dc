"""Reading an edge's file back: its rows and metadata, every row checked column-wise.

The file's format and the rules of its use are in node/persistence.py (rules 4-6): a register
row's checks are C-level passes over whole columns (`_registers`), so a million rows cost tens
of milliseconds of checking; any damaged row or field raises CorruptDatabase.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any
from zlib import crc32

from cbor2 import loads as cbor_loads

from edgekv.crdt import Register, State
from edgekv.crdt.bloom import BloomDelta
from edgekv.crdt.codec import MAX_SEQ, decode_delta, dumps, loads
from edgekv.crdt.register import SEQ_BYTES, registers_valid
from edgekv.errors import EdgeKVError

__all__ = [
    "SEQ_BYTES",
    "CorruptDatabase",
    "LoadDropped",
    "block_of",
    "quick_check",
    "read_meta",
    "read_states",
]

GIL_BLOCK = 1 << 16  # rows per C-level pass of a load in a worker thread (persistence rule 6)
_new_bytes = bytes.__new__


class CorruptDatabase(EdgeKVError):
    """The edge database failed an integrity or decoding check."""

    code = "corrupt_database"


# One store's rows in primary-key order (its keys sorted, so the key index sorts in linear
# time): the registers (three columns: no store and state columns to fetch), then the others.
_SELECT_REGISTERS = (
    "SELECT key, seq, reg FROM states WHERE store = ? AND reg IS NOT NULL ORDER BY key"
)
_SELECT_OTHERS = "SELECT key, seq, state FROM states WHERE store = ? AND reg IS NULL ORDER BY key"
_SELECT_BLOCKS = "SELECT keys, regs, crc FROM blocks WHERE store = ? ORDER BY first"
_KEY, _SEQ, _BLOB = (itemgetter(i) for i in range(3))


def quick_check(db: sqlite3.Connection) -> None:
    """SQLite's structural check of the whole file (0.2 s per million rows); CorruptDatabase."""
    check = db.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        raise CorruptDatabase(f"quick_check: {'; '.join(str(r[0]) for r in check[:5])}")


def read_meta(db: sqlite3.Connection) -> tuple[list[tuple[int, int]], int]:
    """(covered ranges, purge mark) of the file, checked (CorruptDatabase)."""
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    try:
        covered = loads(meta.get("covered") or dumps([]))
    except Exception as exc:
        raise CorruptDatabase(f"undecodable covered metadata: {exc!r}") from exc
    purged = meta.get("purged") or 0
    if type(purged) is not int or purged < 0 or type(covered) is not list:
        raise CorruptDatabase("bad covered/purged metadata")
    ranges = []
    for item in covered:
        if (
            type(item) is not list
            or len(item) != 2
            or not all(type(x) is int and x >= 1 for x in item)
            or item[0] > item[1]
        ):
            raise CorruptDatabase(f"bad covered range {item!r}")
        ranges.append((item[0], item[1]))
    return ranges, purged


def _store_names(db: sqlite3.Connection) -> list[str]:
    """The stores that have rows or blocks, in name order: index probes (no scan of rows)."""
    names: set[str] = set()
    for table in ("states", "blocks"):
        row = db.execute(f"SELECT min(store) FROM {table}").fetchone()
        while row is not None and row[0] is not None:
            if type(row[0]) is not str:
                raise CorruptDatabase("bad row: store is not text")
            names.add(row[0])
            row = db.execute(
                f"SELECT min(store) FROM {table} WHERE store > ?",
                (row[0],),
            ).fetchone()
    return sorted(names)


def block_of(keys: list[str], regs: list[Any]) -> tuple[bytes, bytes, int]:
    """A block row's (keys, regs, crc) for registers in key order (persistence.py rule 7)."""
    kb, rb = dumps(keys), dumps(regs)
    return kb, rb, crc32(rb, crc32(kb))


def _read_blocks(
    db: sqlite3.Connection, store: str, wanted: Callable[[], bool]
) -> dict[str, State]:
    """key -> Register from a store's blocks (persistence.py rule 7), each checked whole: its
    CRC, then column-wise as `_registers` checks rows."""
    states: dict[str, State] = {}
    for kb, rb, crc in db.execute(_SELECT_BLOCKS, (store,)):
        if not wanted():
            raise LoadDropped
        if type(kb) is not bytes or type(rb) is not bytes or crc32(rb, crc32(kb)) != crc:
            raise CorruptDatabase(f"bad block of store {store!r}: checksum mismatch")
        keys, regs = cbor_loads(kb), cbor_loads(rb)
        if type(keys) is not list or type(regs) is not list or len(keys) != len(regs):
            raise CorruptDatabase(f"bad block of store {store!r}: not two columns")
        if not set(map(type, keys)) <= {str} or not registers_valid(regs, seq_from_one=True):
            raise CorruptDatabase(f"bad block of store {store!r}: malformed key or register")
        states.update(zip(keys, map(_new_bytes, repeat(Register), regs), strict=True))
    return states


class LoadDropped(Exception):
    """The file's load was stopped: what it held is not wanted any more."""


def read_states(
    db: sqlite3.Connection, wanted: Callable[[], bool] = lambda: True
) -> tuple[dict[str, dict[str, State]], int]:
    """store -> key -> state, every row and block checked (a damaged one is CorruptDatabase),
    and how many rows there were (not counting blocks).  `wanted` is asked between blocks of
    rows; once it says no, LoadDropped.

    Column-wise: each check is one C-level pass over a column (its types, then its range),
    tens of ms per million rows instead of a Python call per row; a register row becomes a
    `Register` by one C-level copy of its blob.  `_register` makes the same checks on one row.
    """
    groups: dict[str, dict[str, State]] = {}
    n_rows = 0
    for store in _store_names(db):
        states = _read_blocks(db, store, wanted)
        cursor = db.execute(_SELECT_REGISTERS, (store,))
        rows: list[tuple[Any, ...]] = []
        while block := cursor.fetchmany(GIL_BLOCK):
            if not wanted():
                raise LoadDropped
            rows += block
        n_rows += len(rows)
        if states:  # rows written since the blocks supersede them (persistence.py rule 7)
            states.update(_registers(rows))
        else:
            states = _registers(rows)
        del rows
        others = db.execute(_SELECT_OTHERS, (store,)).fetchall()
        n_rows += len(others)
        for key, seq, blob in others:
            if blob is None and seq == 0 and type(key) is str:  # a removal marker (rule 7)
                states.pop(key, None)
                continue
            if type(key) is not str or type(seq) is not int or type(blob) is not bytes:
                raise CorruptDatabase("bad row: key, seq or state of the wrong type")
            # our own writing: plain `cbor2.loads` (C) is enough, `decode_delta` still
            # checks every field's type and range; any failure is a CorruptDatabase
            delta = decode_delta(cbor_loads(blob))
            if delta.seq != seq:
                raise CorruptDatabase(f"bad row: seq {seq} but state at {delta.seq}")
            states[key] = delta.to_state() if isinstance(delta, BloomDelta) else delta
        groups[store] = states
    return groups, n_rows


def _registers(rows: list[tuple[Any, ...]]) -> dict[str, State]:
    """key -> Register from (key, seq, reg) rows, column-wise (see `read_states`)."""
    if not rows:
        return {}
    keys, seqs, regs = (list(map(g, rows)) for g in (_KEY, _SEQ, _BLOB))
    if not set(map(type, keys)) <= {str}:
        raise CorruptDatabase("bad row: key is not text")
    if not set(map(type, seqs)) <= {int} or min(seqs) < 1 or max(seqs) > MAX_SEQ:
        raise CorruptDatabase("bad row: seq is not an integer in range")
    if not _registers_ok(regs, seqs):
        for row in zip(regs, seqs, strict=True):
            _register(*row)  # raises, naming the row
        raise CorruptDatabase("bad register row")
    # in blocks: one C-level call over a million rows holds the GIL for most of a second,
    # and the edge's event loop (receiving its delta meanwhile) waits that long
    states: dict[str, State] = {}
    for i in range(0, len(keys), GIL_BLOCK):
        block = slice(i, i + GIL_BLOCK)
        states.update(zip(keys[block], map(_new_bytes, repeat(Register), regs[block]), strict=True))
    return states


def _registers_ok(regs: list[Any], seqs: list[int]) -> bool:
    """The checks of `_register` on whole columns."""
    if not registers_valid(regs):
        return False
    return list(map(int.from_bytes, map(SEQ_BYTES, regs))) == seqs


def _register(reg: object, seq: object) -> Register:
    """A register from its row, every field checked (a damaged row is CorruptDatabase)."""
    if (
        type(reg) is not bytes
        or type(seq) is not int
        or not 1 <= seq <= MAX_SEQ
        or not _registers_ok([reg], [seq])
    ):
        raise CorruptDatabase(f"bad register row: seq={seq!r} reg={reg!r:.80}")
    return _new_bytes(Register, reg)
