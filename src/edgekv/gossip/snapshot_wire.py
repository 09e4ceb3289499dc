"""Snapshot messages (gossip/snapshot.py): builders and strict, column-wise parsers.

    SNAP_OFFER  rid, wm, keys, sources    SNAP_REQ  sid, after ([store, key] | null), credit, open,
                                                    since? (only keys changed after it)
    SNAP_DATA   sid, n, wm, purged, dropped?, total, store, keys [str...], regs [bytes...] (one per key:
                its register's bytes, or empty when its state is the next item of `others`),
                others [delta...], last, busy?, proofs? [certificate...]

Columns, not one map per key: the CBOR decoder makes each key's str and register bytes in C,
and every check below is one C-level pass over a column (types, lengths, order, register
headers), so a chunk of thousands of keys costs a few dozen C loops, never a Python call per
key.  A register never has empty bytes (its header alone is 17), so `b""` is a free marker.
The keys' UTF-8 encodings, made once for the length check, travel on in `Chunk.encoded` to
the Merkle hashing (crdt/treebuild.py), which needs exactly them.

A malformed message raises `RemoteProtocolError` (`ForgedState` comes later, from verifying).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice, repeat
from operator import lt
from typing import Any

from ..crdt.bloom import BloomDelta
from ..crdt.proofs import Certificate
from ..crdt.register import Register, registers_valid
from ..crdt.state import Delta, State
from ..errors import RemoteProtocolError
from .chunks import delta_size
from .fields import MAX_ADDRESS, MAX_PROOFS
from .fields import check_delta as _delta
from .fields import check_key as _key
from .fields import check_list as _list
from .fields import check_store as _store
from .fields import field_int as _int
from .wire import Message, MsgType

SNAPSHOT_TYPES = frozenset({int(MsgType.SNAP_OFFER), int(MsgType.SNAP_REQ), int(MsgType.SNAP_DATA)})
MAX_CREDIT = 16  # chunks one SNAP_REQ may grant
MAX_CHUNK_KEYS = 50_000
MAX_HINTS = 8  # caught-up edges an offer names
_new_bytes = bytes.__new__

Cursor = tuple[str, str] | None


__all__ = [
    "MAX_CHUNK_KEYS",
    "MAX_CREDIT",
    "MAX_HINTS",
    "SNAPSHOT_TYPES",
    "Chunk",
    "Cursor",
    "Offer",
    "parse_chunk",
    "parse_offer",
    "snap_offer",
    "snap_req",
]


def snap_offer(rid: int, wm: int, keys: int, sources: list[str], changed: int = 0) -> Message:
    m: Message = {
        "t": int(MsgType.SNAP_OFFER),
        "rid": rid,
        "wm": wm,
        "keys": keys,
        "sources": sources[:MAX_HINTS],
    }
    if changed:
        m["changed"] = changed
    return m


def snap_req(sid: int, after: Cursor, credit: int, open: bool, since: int = 0) -> Message:
    m: Message = {
        "t": int(MsgType.SNAP_REQ),
        "sid": sid,
        "after": None if after is None else list(after),
        "credit": credit,
        "open": open,
    }
    if since:
        m["since"] = since
    return m


@dataclass(frozen=True, slots=True)
class Offer:
    """A SNAP_OFFER: the responder's watermark, its key count, the keys changed after the
    requester's watermark (0: not said) and caught-up edges to take the snapshot from."""

    rid: int
    wm: int
    keys: int
    changed: int
    sources: list[str]


def parse_offer(m: Message) -> Offer:
    """A SNAP_OFFER's fields, or RemoteProtocolError."""
    sources = m.get("sources", [])
    if type(sources) is not list or len(sources) > MAX_HINTS:
        raise RemoteProtocolError(f"SNAP_OFFER: sources must be an array of <= {MAX_HINTS}")
    for a in sources:
        if type(a) is not str or not 1 <= len(a) <= MAX_ADDRESS:
            raise RemoteProtocolError("SNAP_OFFER: a source must be an address string")
    changed = _int(m, "changed") if "changed" in m else 0
    return Offer(_int(m, "rid"), _int(m, "wm"), _int(m, "keys"), changed, sources)


def parse_cursor(m: Message) -> Cursor:
    after = m.get("after")
    if after is None:
        return None
    if type(after) is not list or len(after) != 2:
        raise RemoteProtocolError("SNAP_REQ: after must be null or [store, key]")
    store = _store(after[0])
    return store, (after[1] if after[1] == "" else _key(after[1]))


def snap_data(
    sid: int,
    n: int,
    wm: int,
    purged: int,
    total: int,
    store: str,
    keys: list[str],
    regs: list[bytes],
    others: list[Any],
    last: bool,
    busy: bool = False,
    dropped: int = 0,
) -> Message:
    m: Message = {
        "t": int(MsgType.SNAP_DATA),
        "sid": sid,
        "n": n,
        "wm": wm,
        "purged": purged,
        "total": total,
        "store": store,
        "keys": keys,
        "regs": regs,
        "others": others,
        "last": last,
    }
    if busy:
        m["busy"] = True
    m["dropped"] = dropped
    return m


@dataclass(slots=True)
class Chunk:
    """One parsed, checked SNAP_DATA."""

    sid: int
    n: int
    wm: int
    purged: int
    dropped: int  # the highest horizon at which the sender's purges removed something
    total: int
    store: str
    keys: list[str]
    encoded: list[bytes]  # each key's UTF-8 encoding
    states: list[State]
    last: bool
    busy: bool
    proofs: list[Certificate]
    size: int  # payload bytes (keys and registers; other states estimated)


def parse_chunk(m: Message) -> Chunk:
    """Validate a whole SNAP_DATA (column-wise), or raise RemoteProtocolError."""
    keys = m.get("keys")
    if type(keys) is not list or len(keys) > MAX_CHUNK_KEYS:
        raise RemoteProtocolError(f"SNAP_DATA: keys must be an array of <= {MAX_CHUNK_KEYS}")
    encoded: list[bytes] = []
    if keys:
        if not set(map(type, keys)) <= {str}:
            raise RemoteProtocolError("SNAP_DATA: keys must be strings")
        try:
            encoded = list(map(str.encode, keys))
        except UnicodeEncodeError:
            raise RemoteProtocolError("SNAP_DATA: a key is not valid UTF-8") from None
        sizes = list(map(len, encoded))
        if min(sizes) < 1 or max(sizes) > 512:
            raise RemoteProtocolError("SNAP_DATA: a key must have 1 to 512 bytes")
        # UTF-8 byte order is code point order: the keys' order, compared with memcmp
        if not all(map(lt, encoded, islice(encoded, 1, None))):
            raise RemoteProtocolError("SNAP_DATA: keys must be strictly increasing")
    regs, others = m.get("regs"), m.get("others")
    if type(regs) is not list or type(others) is not list or len(regs) != len(keys):
        raise RemoteProtocolError("SNAP_DATA: regs (one per key) and others must be arrays")
    n_others = regs.count(b"")
    if len(others) != n_others:
        raise RemoteProtocolError("SNAP_DATA: one item of others per empty regs entry")
    raw = regs if not n_others else [r for r in regs if r != b""]
    if not registers_valid(raw, seq_from_one=True):
        raise RemoteProtocolError("SNAP_DATA: malformed register")
    registers: list[State] = list(map(_new_bytes, repeat(Register), raw))
    size = sum(map(len, raw)) + sum(map(len, encoded))
    if not n_others:
        states = registers
    else:
        decoded = [_to_state(_delta(d)) for d in others]
        size += sum(map(delta_size, decoded))
        rest, it = iter(decoded), iter(registers)
        states = [next(rest) if r == b"" else next(it) for r in regs]
    busy = m.get("busy", False)
    last = m.get("last")
    if type(busy) is not bool or type(last) is not bool:
        raise RemoteProtocolError("SNAP_DATA: last and busy must be booleans")
    return Chunk(
        _int(m, "sid"),
        _int(m, "n"),
        _int(m, "wm"),
        purged := _int(m, "purged"),
        _int(m, "dropped") if "dropped" in m else purged,  # absent: anything purged may be
        _int(m, "total"),
        _store(m.get("store")),
        keys,
        encoded,
        states,
        last,
        busy,
        [Certificate.from_wire(c) for c in _list(m.get("proofs", []), "proofs", MAX_PROOFS)],
        size,
    )


def _to_state(d: Delta) -> State:
    return d.to_state() if isinstance(d, BloomDelta) else d
