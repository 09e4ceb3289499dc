"""Snapshot messages (gossip/snapshot.py): builders and strict, column-wise parsers.

    SNAP_OFFER  rid, wm, keys, sources    SNAP_REQ  sid, after ([store, key] | null), credit, open,
                                                    since? (only keys changed after it)
    SNAP_DATA   sid, n, wm, purged, total, store, keys [str...], lens (uint32 big-endian per
                key; 0: the state is the next item of `others`), regs (register bytes,
                concatenated), others [delta...], last, busy?, proofs? [certificate...]

A malformed message raises `RemoteProtocolError` (`ForgedState` comes later, from verifying).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import accumulate, compress, islice, repeat
from operator import itemgetter, lt
from typing import Any

from ..crdt.proofs import Certificate
from ..crdt.register import Register, registers_valid, unpack_head
from ..crdt.state import State
from ..errors import RemoteProtocolError
from .dissemination import delta_size
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
_LEN = 4
_LITTLE = array("I", [1]).tobytes()[0] == 1
_SEQ = itemgetter(1)
_new_bytes = bytes.__new__

Cursor = tuple[str, str] | None


__all__ = [
    "MAX_CHUNK_KEYS",
    "MAX_CREDIT",
    "MAX_HINTS",
    "SNAPSHOT_TYPES",
    "Chunk",
    "Cursor",
    "encode_lens",
    "parse_chunk",
    "parse_offer",
    "snap_offer",
    "snap_req",
]


def snap_offer(rid: int, wm: int, keys: int, sources: list[str]) -> Message:
    return {
        "t": int(MsgType.SNAP_OFFER),
        "rid": rid,
        "wm": wm,
        "keys": keys,
        "sources": sources[:MAX_HINTS],
    }


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


def parse_offer(m: Message) -> tuple[int, int, int, list[str]]:
    """(rid, wm, keys, sources) of a SNAP_OFFER, or RemoteProtocolError."""
    sources = m.get("sources", [])
    if type(sources) is not list or len(sources) > MAX_HINTS:
        raise RemoteProtocolError(f"SNAP_OFFER: sources must be an array of <= {MAX_HINTS}")
    for a in sources:
        if type(a) is not str or not 1 <= len(a) <= MAX_ADDRESS:
            raise RemoteProtocolError("SNAP_OFFER: a source must be an address string")
    return _int(m, "rid"), _int(m, "wm"), _int(m, "keys"), sources


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
    lens: bytes,
    regs: bytes,
    others: list[Any],
    last: bool,
    busy: bool = False,
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
        "lens": lens,
        "regs": regs,
        "others": others,
        "last": last,
    }
    if busy:
        m["busy"] = True
    return m


def encode_lens(sizes: list[int]) -> bytes:
    """The `lens` field: uint32 big-endian per key."""
    lens = array("I", sizes)
    if _LITTLE:
        lens.byteswap()
    return lens.tobytes()


@dataclass(slots=True)
class Chunk:
    """One parsed, checked SNAP_DATA."""

    sid: int
    n: int
    wm: int
    purged: int
    total: int
    store: str
    keys: list[str]
    states: list[State]
    last: bool
    busy: bool
    proofs: list[Certificate]
    size: int  # payload bytes (keys, registers, lengths; other states estimated)


def parse_chunk(m: Message) -> Chunk:
    """Validate a whole SNAP_DATA (column-wise), or raise RemoteProtocolError."""
    keys = m.get("keys")
    if type(keys) is not list or len(keys) > MAX_CHUNK_KEYS:
        raise RemoteProtocolError(f"SNAP_DATA: keys must be an array of <= {MAX_CHUNK_KEYS}")
    if keys:
        if not set(map(type, keys)) <= {str} or min(map(len, keys)) < 1:
            raise RemoteProtocolError("SNAP_DATA: keys must be non-empty strings")
        try:
            if max(map(len, map(str.encode, keys))) > 512:
                raise RemoteProtocolError("SNAP_DATA: a key exceeds 512 bytes")
        except UnicodeEncodeError:
            raise RemoteProtocolError("SNAP_DATA: a key is not valid UTF-8") from None
        if not all(map(lt, keys, islice(keys, 1, None))):
            raise RemoteProtocolError("SNAP_DATA: keys must be strictly increasing")
    lens_b, regs_b, others = m.get("lens"), m.get("regs"), m.get("others")
    if type(lens_b) is not bytes or type(regs_b) is not bytes or type(others) is not list:
        raise RemoteProtocolError("SNAP_DATA: lens and regs must be bytes, others an array")
    if len(lens_b) != _LEN * len(keys):
        raise RemoteProtocolError("SNAP_DATA: one length per key")
    lens = array("I")
    lens.frombytes(lens_b)
    if _LITTLE:
        lens.byteswap()
    is_reg = list(map(bool, lens))
    n_regs = sum(is_reg)
    if len(others) != len(keys) - n_regs or sum(lens) != len(regs_b):
        raise RemoteProtocolError("SNAP_DATA: lengths do not match the payload")
    reg_lens = list(compress(lens, is_reg))
    ends = list(accumulate(reg_lens))
    raw = list(map(regs_b.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    if not registers_valid(raw) or (raw and min(map(_SEQ, map(unpack_head, raw))) < 1):
        raise RemoteProtocolError("SNAP_DATA: malformed register")
    regs: list[State] = list(map(_new_bytes, repeat(Register), raw))
    size = len(regs_b) + len(lens_b) + sum(map(len, keys))
    if n_regs == len(keys):
        states = regs
    else:
        decoded = [_to_state(_delta(d)) for d in others]
        size += sum(map(delta_size, decoded))
        rest, it = iter(decoded), iter(regs)
        states = [next(it) if r else next(rest) for r in is_reg]
    busy = m.get("busy", False)
    last = m.get("last")
    if type(busy) is not bool or type(last) is not bool:
        raise RemoteProtocolError("SNAP_DATA: last and busy must be booleans")
    return Chunk(
        _int(m, "sid"),
        _int(m, "n"),
        _int(m, "wm"),
        _int(m, "purged"),
        _int(m, "total"),
        _store(m.get("store")),
        keys,
        states,
        last,
        busy,
        [Certificate.from_wire(c) for c in _list(m.get("proofs", []), "proofs", MAX_PROOFS)],
        size,
    )


def _to_state(d: Any) -> State:
    to_state = getattr(d, "to_state", None)
    return to_state() if to_state is not None else d  # type: ignore[no-any-return]
