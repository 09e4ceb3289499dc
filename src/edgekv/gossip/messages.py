"""Gossip message payloads: one builder and one strict parser per message type.

Why: the protocol modules work on typed, already-validated values, and a peer's garbage is
rejected as a whole before anything is applied.  `parse(message)` checks every field's type,
size and range and raises `RemoteProtocolError` (and nothing else) for anything wrong; deltas
are decoded with the strict `crdt.codec` (its `CodecError` becomes `RemoteProtocolError`).

Payload shapes (every message also has "t": MsgType):
    PUSH       items [[store, key, delta]...], covers [[lo, hi]...], hops, proofs?, wm?,
               again?, again_n? (wm: the sender's watermark, so a receiver with a gap knows
               who holds it; again: the covers of the previous push to this peer, repeated
               as the first again_n items, so one lost push costs no round trip)
               (PUSH, SYNC_DATA and AE_STATES carry "proofs": the origin's certificates
               covering their states, see crdt/proofs.py; absent when empty)
    IHAVE      wm, covers, purged?                     GRAFT   wm, purged          PRUNE  -
    SYNC_REQ   rid, wm, purged                SYNC_DATA rid, items, covers, purged, last, fallback
    AE_ROOT    sid, root, wm, high, purged, force? (absent: false)
    AE_EQUAL   sid, covers                    AE_STORES sid, roots {store: digest}, covers, wm,
                                                        high, purged
    AE_NODES_REQ sid, store, level, indices   AE_NODES  sid, store, level, nodes [[index, 16
                                                        child digests as one 256-byte string]...]
    AE_LEAF_REQ  sid, store, leaves           AE_LEAF   sid, store, leaves, entries [[key, digest,
                                                        reset, seq]...]
    AE_STATES  sid, store, states [[key, delta]...], want [key...], lack [key...], reply, more
    PING       seq, wm, purged, inc, role, members    ACK  seq, wm, purged, inc, role, target?,
                                                           members
    PING_REQ   seq, target                    MEMBERS   members [[address, role, inc, state]...]
    BYE        -
Digests (128-bit) travel as 16-byte strings: CBOR bignums are tags, which the wire refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..crdt.codec import decode_delta, encode_delta
from ..crdt.merkle import DEPTH, FANOUT
from ..crdt.proofs import Certificate
from ..crdt.replica import META
from ..crdt.state import Delta
from ..errors import CodecError, RemoteProtocolError
from .wire import Message, MsgType

MAX_SEQ = (1 << 63) - 1
MAX_ITEMS = 100_000  # items, ranges, keys or indices in one received message (hard limit)
MAX_PROOFS = 10_000  # certificates in one message
# What applying one message's deltas may make a replica allocate beyond the message itself:
# a Bloom delta names its filter's size m and a new filter takes m/8 bytes, so a few bytes on
# the wire could cost many MiB.  A received message naming more than MAX_MESSAGE_ALLOC is
# rejected whole; senders cut PUSH chunks at SEND_ALLOC (half, so any one filter still fits).
MAX_MESSAGE_ALLOC = 32 << 20
SEND_ALLOC = MAX_MESSAGE_ALLOC // 2
# Distinct stores one message's items may name (a replica builds per-store state for each).
MAX_MESSAGE_STORES = 1024
MAX_MEMBER_ROWS = 10_000  # rows of one MEMBERS list
MAX_ADDRESS = 256
MAX_KEY_BYTES = 512
ROLES = ("edge", "origin")
STATES = ("alive", "suspect", "dead")
DIGEST_BYTES = 16

Item = tuple[str, str, Delta]
Range = tuple[int, int]
MemberRow = tuple[str, str, int, str]
LeafEntry = tuple[str, int, int, int]  # key, key digest, reset, seq


def digest_bytes(d: int) -> bytes:
    return d.to_bytes(DIGEST_BYTES, "big")


@dataclass(frozen=True, slots=True)
class Send:
    """One message the caller must send to `peer` (best effort)."""

    peer: str
    message: Message


# --- typed messages ------------------------------------------------------------------------------


@dataclass(slots=True)
class Push:
    items: list[Item]
    covers: list[Range]
    hops: int
    proofs: list[Certificate] = field(default_factory=list)
    wm: int = -1  # the sender's watermark when it sent this (-1: not said)
    again: list[Range] = field(default_factory=list)  # covers of the repeated previous push
    again_n: int = 0  # its items: the first again_n of `items`


@dataclass(slots=True)
class IHave:
    wm: int
    covers: list[Range]
    purged: int = 0


@dataclass(slots=True)
class Graft:
    wm: int
    purged: int


@dataclass(slots=True)
class Prune:
    pass


@dataclass(slots=True)
class Bye:
    pass


@dataclass(slots=True)
class SyncReq:
    rid: int
    wm: int
    purged: int


@dataclass(slots=True)
class SyncData:
    rid: int
    items: list[Item]
    covers: list[Range]
    purged: int
    last: bool
    fallback: bool
    proofs: list[Certificate] = field(default_factory=list)


@dataclass(slots=True)
class AeRoot:
    sid: int
    root: int
    wm: int
    high: int
    purged: int
    force: bool


@dataclass(slots=True)
class AeEqual:
    sid: int
    covers: list[Range]


@dataclass(slots=True)
class AeStores:
    sid: int
    roots: dict[str, int]
    covers: list[Range]
    wm: int
    high: int
    purged: int


@dataclass(slots=True)
class AeNodesReq:
    sid: int
    store: str
    level: int
    indices: list[int]


@dataclass(slots=True)
class AeNodes:
    sid: int
    store: str
    level: int
    nodes: list[tuple[int, list[int]]]


@dataclass(slots=True)
class AeLeafReq:
    sid: int
    store: str
    leaves: list[int]


@dataclass(slots=True)
class AeLeaf:
    sid: int
    store: str
    leaves: list[int]
    entries: list[LeafEntry]


@dataclass(slots=True)
class AeStates:
    sid: int
    store: str
    states: list[tuple[str, Delta]]
    want: list[str]  # keys the sender holds in another state: send yours
    lack: list[str]  # keys the sender lacks: send yours, or drop it if dead at the sender
    reply: bool  # the sender asks for an answer (want/lack)
    more: bool  # more chunks of this message follow
    proofs: list[Certificate] = field(default_factory=list)


@dataclass(slots=True)
class Ping:
    seq: int
    wm: int
    purged: int
    inc: int
    role: str
    members: list[MemberRow] = field(default_factory=list)


@dataclass(slots=True)
class Ack:
    seq: int
    wm: int
    purged: int
    inc: int
    role: str
    target: str | None
    members: list[MemberRow] = field(default_factory=list)


@dataclass(slots=True)
class PingReq:
    seq: int
    target: str


@dataclass(slots=True)
class Members:
    members: list[MemberRow]


Parsed = (
    Push
    | IHave
    | Graft
    | Prune
    | Bye
    | SyncReq
    | SyncData
    | AeRoot
    | AeEqual
    | AeStores
    | AeNodesReq
    | AeNodes
    | AeLeafReq
    | AeLeaf
    | AeStates
    | Ping
    | Ack
    | PingReq
    | Members
)


# --- field checks --------------------------------------------------------------------------------


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg)


def _get(m: Message, name: str) -> Any:
    if name not in m:
        raise _bad(f"{_tname(m)}: missing field {name!r}")
    return m[name]


def _tname(m: Message) -> str:
    t = m.get("t")
    try:
        return MsgType(t).name if type(t) is int else repr(t)
    except ValueError:
        return repr(t)


def _int(m: Message, name: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    v = _get(m, name)
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(f"{_tname(m)}: {name} must be an integer in [{lo}, {hi}]")
    return v


def _bool(m: Message, name: str) -> bool:
    v = _get(m, name)
    if type(v) is not bool:
        raise _bad(f"{_tname(m)}: {name} must be a boolean")
    return v


def _opt_bool(m: Message, name: str) -> bool:
    v = m.get(name, False)
    if type(v) is not bool:
        raise _bad(f"{_tname(m)}: {name} must be a boolean")
    return v


def _list(v: object, what: str, limit: int = MAX_ITEMS) -> list[Any]:
    if type(v) is not list:
        raise _bad(f"{what} must be an array")
    if len(v) > limit:
        raise _bad(f"{what} has {len(v)} entries, more than {limit}")
    return v


def _str(v: object, what: str, lo: int = 0, hi: int = MAX_ADDRESS) -> str:
    if type(v) is not str or not lo <= len(v) <= hi:
        raise _bad(f"{what} must be a string of {lo}..{hi} characters")
    return v


def _store(v: object) -> str:
    s = _str(v, "store", 0, 64)
    if s != META:
        for ch in s:
            if not (ch.isascii() and (ch.isalnum() or ch in "_.-")):
                raise _bad(f"bad store name {s!r}")
    return s


def _key(v: object) -> str:
    if type(v) is not str or not v:
        raise _bad("a key must be a non-empty string")
    try:
        n = len(v.encode())
    except UnicodeEncodeError:
        raise _bad("a key must be valid UTF-8") from None
    if n > MAX_KEY_BYTES:
        raise _bad(f"key of {n} bytes exceeds {MAX_KEY_BYTES}")
    return v


def _digest(v: object, what: str = "digest") -> int:
    if type(v) is not bytes or len(v) != DIGEST_BYTES:
        raise _bad(f"{what} must be {DIGEST_BYTES} bytes")
    return int.from_bytes(v, "big")


def _delta(v: object) -> Delta:
    try:
        return decode_delta(v)
    except CodecError as exc:
        raise _bad(f"bad delta: {exc}") from None


def _ranges(m: Message, name: str) -> list[Range]:
    out: list[Range] = []
    prev = 0
    for r in _list(_get(m, name), name):
        if type(r) is not list or len(r) != 2:
            raise _bad(f"{name}: a range must be [lo, hi]")
        lo, hi = r
        if type(lo) is not int or type(hi) is not int or not 1 <= lo <= hi <= MAX_SEQ:
            raise _bad(f"{name}: a range must be integers 1 <= lo <= hi")
        if lo <= prev:
            raise _bad(f"{name}: ranges must be sorted and disjoint")
        prev = hi
        out.append((lo, hi))
    return out


def alloc_size(d: Delta) -> int:
    """Bytes a replica may allocate to apply `d` beyond its encoded size (a Bloom filter)."""
    m = getattr(d, "m", 0)
    return (m + 7) // 8 if isinstance(m, int) else 0


def _check_alloc(deltas: Sequence[Delta], what: str) -> None:
    total = sum(alloc_size(d) for d in deltas)
    if total > MAX_MESSAGE_ALLOC:
        raise _bad(f"{what}: Bloom filters of {total} bytes exceed {MAX_MESSAGE_ALLOC} a message")


def _items(m: Message, name: str = "items") -> list[Item]:
    out: list[Item] = []
    for it in _list(_get(m, name), name):
        if type(it) is not list or len(it) != 3:
            raise _bad(f"{name}: an item must be [store, key, delta]")
        out.append((_store(it[0]), _key(it[1]), _delta(it[2])))
    _check_alloc([d for _, _, d in out], name)
    stores = len({s for s, _, _ in out})
    if stores > MAX_MESSAGE_STORES:
        raise _bad(f"{name}: {stores} stores in one message, more than {MAX_MESSAGE_STORES}")
    return out


def _proofs(m: Message) -> list[Certificate]:
    """The optional "proofs" field: certificates in wire form (signatures checked later)."""
    raw = m.get("proofs")
    if raw is None:
        return []
    return [Certificate.from_wire(c) for c in _list(raw, "proofs", MAX_PROOFS)]


def _members(v: object) -> list[MemberRow]:
    out: list[MemberRow] = []
    for row in _list(v, "members", MAX_MEMBER_ROWS):
        if type(row) is not list or len(row) != 4:
            raise _bad("members: a row must be [address, role, incarnation, state]")
        addr, role, inc, state = row
        _str(addr, "member address", 1)
        if role not in ROLES:
            raise _bad(f"members: unknown role {role!r}")
        if type(inc) is not int or not 0 <= inc <= MAX_SEQ:
            raise _bad("members: incarnation must be a non-negative integer")
        if state not in STATES:
            raise _bad(f"members: unknown state {state!r}")
        out.append((addr, role, inc, state))
    return out


def _indices(m: Message, name: str, hi: int) -> list[int]:
    out = []
    for i in _list(_get(m, name), name):
        if type(i) is not int or not 0 <= i < hi:
            raise _bad(f"{name}: an index must be an integer in [0, {hi})")
        out.append(i)
    return out


def _level(m: Message, top: int) -> int:
    return _int(m, "level", 0, top)


# --- parsers -------------------------------------------------------------------------------------


def _p_push(m: Message) -> Push:
    wm = _int(m, "wm") if "wm" in m else -1
    items = _items(m)
    again = _ranges(m, "again") if "again" in m else []
    again_n = _int(m, "again_n", 0, len(items)) if again else 0
    hops = _int(m, "hops", 0, 1000)
    return Push(items, _ranges(m, "covers"), hops, _proofs(m), wm, again, again_n)


def _p_ihave(m: Message) -> IHave:
    purged = m.get("purged", 0)
    if type(purged) is not int or not 0 <= purged <= MAX_SEQ:
        raise _bad("IHAVE: purged must be a non-negative integer")
    return IHave(_int(m, "wm"), _ranges(m, "covers"), purged)


def _p_graft(m: Message) -> Graft:
    return Graft(_int(m, "wm"), _int(m, "purged"))


def _p_sync_req(m: Message) -> SyncReq:
    return SyncReq(_int(m, "rid"), _int(m, "wm"), _int(m, "purged"))


def _p_sync_data(m: Message) -> SyncData:
    return SyncData(
        _int(m, "rid"),
        _items(m),
        _ranges(m, "covers"),
        _int(m, "purged"),
        _bool(m, "last"),
        _bool(m, "fallback"),
        _proofs(m),
    )


def _p_ae_root(m: Message) -> AeRoot:
    return AeRoot(
        _int(m, "sid"),
        _digest(_get(m, "root"), "root"),
        _int(m, "wm"),
        _int(m, "high"),
        _int(m, "purged"),
        _opt_bool(m, "force"),
    )


def _p_ae_equal(m: Message) -> AeEqual:
    return AeEqual(_int(m, "sid"), _ranges(m, "covers"))


def _p_ae_stores(m: Message) -> AeStores:
    raw = _get(m, "roots")
    if type(raw) is not dict or len(raw) > MAX_ITEMS:
        raise _bad("AE_STORES: roots must be a map of store -> digest")
    roots = {_store(k): _digest(v) for k, v in raw.items()}
    return AeStores(
        _int(m, "sid"),
        roots,
        _ranges(m, "covers"),
        _int(m, "wm"),
        _int(m, "high"),
        _int(m, "purged"),
    )


def _p_nodes_req(m: Message) -> AeNodesReq:
    level = _level(m, DEPTH - 1)
    return AeNodesReq(
        _int(m, "sid"), _store(_get(m, "store")), level, _indices(m, "indices", FANOUT**level)
    )


def _p_nodes(m: Message) -> AeNodes:
    level = _level(m, DEPTH - 1)
    nodes: list[tuple[int, list[int]]] = []
    for row in _list(_get(m, "nodes"), "nodes"):
        if type(row) is not list or len(row) != 2:
            raise _bad("AE_NODES: a node must be [index, children]")
        idx, kids = row
        if type(idx) is not int or not 0 <= idx < FANOUT**level:
            raise _bad("AE_NODES: bad node index")
        if type(kids) is not bytes or len(kids) != FANOUT * DIGEST_BYTES:
            raise _bad("AE_NODES: children must be 16 digests of 16 bytes")
        nodes.append(
            (
                idx,
                [
                    int.from_bytes(kids[i : i + DIGEST_BYTES], "big")
                    for i in range(0, len(kids), DIGEST_BYTES)
                ],
            )
        )
    return AeNodes(_int(m, "sid"), _store(_get(m, "store")), level, nodes)


def _p_leaf_req(m: Message) -> AeLeafReq:
    return AeLeafReq(_int(m, "sid"), _store(_get(m, "store")), _indices(m, "leaves", FANOUT**DEPTH))


def _p_leaf(m: Message) -> AeLeaf:
    entries: list[LeafEntry] = []
    for row in _list(_get(m, "entries"), "entries", 4 * MAX_ITEMS):
        if type(row) is not list or len(row) != 4:
            raise _bad("AE_LEAF: an entry must be [key, digest, reset, seq]")
        reset, seq = row[2], row[3]
        if type(reset) is not int or type(seq) is not int or not 1 <= reset <= seq <= MAX_SEQ:
            raise _bad("AE_LEAF: reset and seq must be integers 1 <= reset <= seq")
        entries.append((_key(row[0]), _digest(row[1]), reset, seq))
    return AeLeaf(
        _int(m, "sid"),
        _store(_get(m, "store")),
        _indices(m, "leaves", FANOUT**DEPTH),
        entries,
    )


def _p_states(m: Message) -> AeStates:
    states: list[tuple[str, Delta]] = []
    for row in _list(_get(m, "states"), "states"):
        if type(row) is not list or len(row) != 2:
            raise _bad("AE_STATES: a state must be [key, delta]")
        states.append((_key(row[0]), _delta(row[1])))
    _check_alloc([d for _, d in states], "AE_STATES")
    want = [_key(k) for k in _list(_get(m, "want"), "want")]
    lack = [_key(k) for k in _list(_get(m, "lack"), "lack")]
    return AeStates(
        _int(m, "sid"),
        _store(_get(m, "store")),
        states,
        want,
        lack,
        _bool(m, "reply"),
        _bool(m, "more"),
        _proofs(m),
    )


def _role(m: Message) -> str:
    r = _get(m, "role")
    if r not in ROLES:
        raise _bad(f"unknown role {r!r}")
    return str(r)


def _p_ping(m: Message) -> Ping:
    return Ping(
        _int(m, "seq"),
        _int(m, "wm"),
        _int(m, "purged"),
        _int(m, "inc"),
        _role(m),
        _members(m.get("members", [])),
    )


def _p_ack(m: Message) -> Ack:
    target = m.get("target")
    if target is not None:
        _str(target, "ACK target", 1)
    return Ack(
        _int(m, "seq"),
        _int(m, "wm"),
        _int(m, "purged"),
        _int(m, "inc"),
        _role(m),
        target,
        _members(m.get("members", [])),
    )


def _p_ping_req(m: Message) -> PingReq:
    return PingReq(_int(m, "seq"), _str(_get(m, "target"), "PING_REQ target", 1))


def _p_members(m: Message) -> Members:
    return Members(_members(_get(m, "members")))


_PARSERS: dict[int, Callable[[Message], Parsed]] = {
    MsgType.PUSH: _p_push,
    MsgType.IHAVE: _p_ihave,
    MsgType.GRAFT: _p_graft,
    MsgType.PRUNE: lambda m: Prune(),
    MsgType.BYE: lambda m: Bye(),
    MsgType.SYNC_REQ: _p_sync_req,
    MsgType.SYNC_DATA: _p_sync_data,
    MsgType.AE_ROOT: _p_ae_root,
    MsgType.AE_EQUAL: _p_ae_equal,
    MsgType.AE_STORES: _p_ae_stores,
    MsgType.AE_NODES_REQ: _p_nodes_req,
    MsgType.AE_NODES: _p_nodes,
    MsgType.AE_LEAF_REQ: _p_leaf_req,
    MsgType.AE_LEAF: _p_leaf,
    MsgType.AE_STATES: _p_states,
    MsgType.PING: _p_ping,
    MsgType.ACK: _p_ack,
    MsgType.PING_REQ: _p_ping_req,
    MsgType.MEMBERS: _p_members,
}

GOSSIP_TYPES = frozenset(_PARSERS)


def parse(message: object) -> Parsed:
    """Validate a whole gossip message and return its typed form, or raise RemoteProtocolError."""
    if type(message) is not dict:
        raise _bad("a message must be a map")
    t = message.get("t")
    if type(t) is not int or t not in _PARSERS:
        raise _bad(f"not a gossip message type: {t!r}")
    try:
        return _PARSERS[t](message)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # defensive: a parser bug must still look like a bad message
        raise _bad(f"malformed {_tname(message)}: {type(exc).__name__}") from None


# --- builders ------------------------------------------------------------------------------------


def wire_items(items: Sequence[Item]) -> list[list[Any]]:
    return [[s, k, encode_delta(d)] for s, k, d in items]


def wire_ranges(ranges: list[Range]) -> list[list[int]]:
    return [[lo, hi] for lo, hi in ranges]


def wire_proofs(m: Message, proofs: Sequence[Certificate]) -> Message:
    """Attach the certificates proving a message's states (absent when there are none)."""
    if proofs:
        m["proofs"] = [c.to_wire() for c in proofs]
    return m


def push(
    items: Sequence[Item],
    covers: list[Range],
    hops: int,
    proofs: Sequence[Certificate] = (),
    wm: int | None = None,
    again: list[Range] | None = None,
    again_n: int = 0,
) -> Message:
    m: Message = {
        "t": int(MsgType.PUSH),
        "items": wire_items(items),
        "covers": wire_ranges(covers),
        "hops": hops,
    }
    if wm is not None:
        m["wm"] = wm
    if again:
        m["again"] = wire_ranges(again)
        m["again_n"] = again_n
    return wire_proofs(m, proofs)


def ihave(wm: int, covers: list[Range], purged: int = 0) -> Message:
    m: Message = {"t": int(MsgType.IHAVE), "wm": wm, "covers": wire_ranges(covers)}
    if purged:
        m["purged"] = purged
    return m


def graft(wm: int, purged: int) -> Message:
    return {"t": int(MsgType.GRAFT), "wm": wm, "purged": purged}


def prune() -> Message:
    return {"t": int(MsgType.PRUNE)}


def bye() -> Message:
    return {"t": int(MsgType.BYE)}


def sync_req(rid: int, wm: int, purged: int) -> Message:
    return {"t": int(MsgType.SYNC_REQ), "rid": rid, "wm": wm, "purged": purged}


def sync_data(
    rid: int,
    items: list[list[Any]],
    covers: list[Range],
    purged: int,
    last: bool,
    fallback: bool = False,
    proofs: Sequence[Certificate] = (),
) -> Message:
    """`items` already in wire form (the chunker sizes them while encoding)."""
    m: Message = {
        "t": int(MsgType.SYNC_DATA),
        "rid": rid,
        "items": items,
        "covers": wire_ranges(covers),
        "purged": purged,
        "last": last,
        "fallback": fallback,
    }
    return wire_proofs(m, proofs)


def ae_root(sid: int, root: int, wm: int, high: int, purged: int, force: bool) -> Message:
    m: Message = {
        "t": int(MsgType.AE_ROOT),
        "sid": sid,
        "root": digest_bytes(root),
        "wm": wm,
        "high": high,
        "purged": purged,
    }
    if force:  # absent means false: keeps the common d = 0 round trip small
        m["force"] = True
    return m


def ae_equal(sid: int, covers: list[Range]) -> Message:
    return {"t": int(MsgType.AE_EQUAL), "sid": sid, "covers": wire_ranges(covers)}


def ae_stores(
    sid: int, roots: dict[str, int], covers: list[Range], wm: int, high: int, purged: int
) -> Message:
    return {
        "t": int(MsgType.AE_STORES),
        "sid": sid,
        "roots": {s: digest_bytes(d) for s, d in roots.items()},
        "covers": wire_ranges(covers),
        "wm": wm,
        "high": high,
        "purged": purged,
    }


def ae_nodes_req(sid: int, store: str, level: int, indices: list[int]) -> Message:
    return {
        "t": int(MsgType.AE_NODES_REQ),
        "sid": sid,
        "store": store,
        "level": level,
        "indices": indices,
    }


def ae_nodes(sid: int, store: str, level: int, nodes: list[tuple[int, list[int]]]) -> Message:
    return {
        "t": int(MsgType.AE_NODES),
        "sid": sid,
        "store": store,
        "level": level,
        "nodes": [[i, b"".join(digest_bytes(c) for c in kids)] for i, kids in nodes],
    }


def ae_leaf_req(sid: int, store: str, leaves: list[int]) -> Message:
    return {"t": int(MsgType.AE_LEAF_REQ), "sid": sid, "store": store, "leaves": leaves}


def ae_leaf(sid: int, store: str, leaves: list[int], entries: list[LeafEntry]) -> Message:
    return {
        "t": int(MsgType.AE_LEAF),
        "sid": sid,
        "store": store,
        "leaves": leaves,
        "entries": [[k, digest_bytes(d), r, q] for k, d, r, q in entries],
    }


def ae_states(
    sid: int,
    store: str,
    states: Sequence[tuple[str, Delta]],
    want: list[str],
    lack: list[str],
    reply: bool,
    more: bool = False,
    proofs: Sequence[Certificate] = (),
) -> Message:
    m: Message = {
        "t": int(MsgType.AE_STATES),
        "sid": sid,
        "store": store,
        "states": [[k, encode_delta(d)] for k, d in states],
        "want": want,
        "lack": lack,
        "reply": reply,
        "more": more,
    }
    return wire_proofs(m, proofs)


def members_rows(rows: list[MemberRow]) -> list[list[Any]]:
    return [[a, r, i, s] for a, r, i, s in rows]


def ping(seq: int, wm: int, purged: int, inc: int, role: str, members: list[MemberRow]) -> Message:
    m: Message = {
        "t": int(MsgType.PING),
        "seq": seq,
        "wm": wm,
        "purged": purged,
        "inc": inc,
        "role": role,
    }
    if members:
        m["members"] = members_rows(members)
    return m


def ack(
    seq: int,
    wm: int,
    purged: int,
    inc: int,
    role: str,
    members: list[MemberRow],
    target: str | None = None,
) -> Message:
    m: Message = {
        "t": int(MsgType.ACK),
        "seq": seq,
        "wm": wm,
        "purged": purged,
        "inc": inc,
        "role": role,
    }
    if target is not None:
        m["target"] = target
    if members:
        m["members"] = members_rows(members)
    return m


def ping_req(seq: int, target: str) -> Message:
    return {"t": int(MsgType.PING_REQ), "seq": seq, "target": target}


def members(rows: list[MemberRow]) -> Message:
    return {"t": int(MsgType.MEMBERS), "members": members_rows(rows)}
