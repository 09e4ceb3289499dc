"""Gossip message types: one definition each (its fields in wire order, their checks, their
encoding), dispatched by a table keyed by the type tag.

Why: the protocol modules work on typed, already-validated values, and a peer's garbage is
rejected as a whole before anything is applied.  `parse(message)` checks every field's type,
size and range and raises `RemoteProtocolError` (and nothing else) for anything wrong; deltas
are decoded with the strict `crdt.codec` (its `CodecError` becomes `RemoteProtocolError`).
A message is sent as `Push(...).to_wire()`.  Adding a message type: a MsgType value in wire.py,
a dataclass here (fields annotated with their codecs from fields.py), its handler in core.py.

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
    PING_REQ   seq, target                    MEMBERS   members [[address, role, inc, state]...],
                                                        ask? [address...] (the sender asks for
                                                        the receiver's rows about these), want?
                                                        (it asks for the whole table)
    BYE        -
Digests (128-bit) travel as 16-byte strings: CBOR bignums are tags, which the wire refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, get_args

from ..crdt.merkle import DEPTH, FANOUT
from ..crdt.proofs import Certificate
from ..crdt.state import Delta
from ..errors import RemoteProtocolError
from . import fields as F
from .fields import (
    DIGEST_BYTES,
    MAX_ADDRESS,
    MAX_ASK,
    MAX_ITEMS,
    MAX_KEY_BYTES,
    MAX_MEMBER_ROWS,
    MAX_MESSAGE_ALLOC,
    MAX_MESSAGE_STORES,
    MAX_PROOFS,
    MAX_SEQ,
    OPTIONAL,
    ROLES,
    SEND_ALLOC,
    STATES,
    Item,
    LeafEntry,
    MemberRow,
    Range,
    When,
    WireMessage,
    alloc_size,
    bad,
    digest_bytes,
    message,
)
from .wire import Message, MsgType, type_name

__all__ = [
    "DIGEST_BYTES",
    "GOSSIP_TYPES",
    "MAX_ADDRESS",
    "MAX_ASK",
    "MAX_ITEMS",
    "MAX_KEY_BYTES",
    "MAX_MEMBER_ROWS",
    "MAX_MESSAGE_ALLOC",
    "MAX_MESSAGE_STORES",
    "MAX_PROOFS",
    "MAX_SEQ",
    "ROLES",
    "SEND_ALLOC",
    "STATES",
    "Ack",
    "AeEqual",
    "AeLeaf",
    "AeLeafReq",
    "AeNodes",
    "AeNodesReq",
    "AeRoot",
    "AeStates",
    "AeStores",
    "Bye",
    "Graft",
    "IHave",
    "Item",
    "LeafEntry",
    "MemberRow",
    "Members",
    "Parsed",
    "Ping",
    "PingReq",
    "Prune",
    "Push",
    "Range",
    "Send",
    "SyncData",
    "SyncReq",
    "alloc_size",
    "digest_bytes",
    "parse",
]

Seq = Annotated[int, F.SEQ]
Ranges = Annotated[list[Range], F.RANGES]
Proofs = Annotated[list[Certificate], F.PROOFS, OPTIONAL]
Store = Annotated[str, F.STORE]
Flag = Annotated[bool, F.BOOL]
Role = Annotated[str, F.ROLE]
Rows = Annotated[list[MemberRow], F.MEMBERS]


@dataclass(frozen=True, slots=True)
class Send:
    """One message the caller must send to `peer` (best effort)."""

    peer: str
    message: Message


# --- dissemination (dissemination.py) --------------------------------------------------------


@message(MsgType.PUSH)
@dataclass(slots=True)
class Push(WireMessage):
    """Fresh deltas.  wm: the sender's watermark, so a receiver with a gap knows who holds it;
    again: the covers of the previous push to this peer, repeated as the first again_n items,
    so one lost push costs no round trip."""

    items: Annotated[list[Item], F.ITEMS]
    covers: Ranges
    hops: Annotated[int, F.Int(0, 1000)]
    wm: Annotated[int, F.SEQ, OPTIONAL] = -1  # -1: not said
    again: Annotated[list[Range], F.RANGES, OPTIONAL] = field(default_factory=list)
    again_n: Annotated[int, F.Int(0, MAX_ITEMS), When("again")] = 0
    proofs: Proofs = field(default_factory=list)

    def check(self) -> None:
        if self.again_n > len(self.items):
            raise bad(f"PUSH: again_n {self.again_n} exceeds its {len(self.items)} items")


@message(MsgType.IHAVE)
@dataclass(slots=True)
class IHave(WireMessage):
    wm: Seq
    covers: Ranges
    purged: Annotated[int, F.SEQ, OPTIONAL] = 0


@message(MsgType.GRAFT)
@dataclass(slots=True)
class Graft(WireMessage):
    wm: Seq
    purged: Seq


@message(MsgType.PRUNE)
@dataclass(slots=True)
class Prune(WireMessage):
    pass


# --- catch-up (catchup.py) -------------------------------------------------------------------


@message(MsgType.SYNC_REQ)
@dataclass(slots=True)
class SyncReq(WireMessage):
    rid: Seq
    wm: Seq
    purged: Seq


@message(MsgType.SYNC_DATA)
@dataclass(slots=True)
class SyncData(WireMessage):
    rid: Seq
    items: Annotated[list[Item], F.ITEMS]
    covers: Ranges
    purged: Seq
    last: Flag
    fallback: Flag = False
    proofs: Proofs = field(default_factory=list)


# --- anti-entropy (antientropy.py) -----------------------------------------------------------


@message(MsgType.AE_ROOT)
@dataclass(slots=True)
class AeRoot(WireMessage):
    sid: Seq
    root: Annotated[int, F.DIGEST]
    wm: Seq
    high: Seq
    purged: Seq
    force: Annotated[bool, F.BOOL, OPTIONAL] = False  # absent: false (a small d = 0 round trip)


@message(MsgType.AE_EQUAL)
@dataclass(slots=True)
class AeEqual(WireMessage):
    sid: Seq
    covers: Ranges


@message(MsgType.AE_STORES)
@dataclass(slots=True)
class AeStores(WireMessage):
    sid: Seq
    roots: Annotated[dict[str, int], F.ROOTS]
    covers: Ranges
    wm: Seq
    high: Seq
    purged: Seq


@message(MsgType.AE_NODES_REQ)
@dataclass(slots=True)
class AeNodesReq(WireMessage):
    sid: Seq
    store: Store
    level: Annotated[int, F.Int(0, DEPTH - 1)]
    indices: Annotated[list[int], F.Indices(FANOUT ** (DEPTH - 1))]

    def check(self) -> None:
        if any(i >= FANOUT**self.level for i in self.indices):
            raise bad(f"AE_NODES_REQ: an index beyond level {self.level}")


@message(MsgType.AE_NODES)
@dataclass(slots=True)
class AeNodes(WireMessage):
    sid: Seq
    store: Store
    level: Annotated[int, F.Int(0, DEPTH - 1)]
    nodes: Annotated[list[tuple[int, list[int]]], F.NODES]  # [index, its 16 child digests]

    def check(self) -> None:
        if any(i >= FANOUT**self.level for i, _ in self.nodes):
            raise bad("AE_NODES: bad node index")


@message(MsgType.AE_LEAF_REQ)
@dataclass(slots=True)
class AeLeafReq(WireMessage):
    sid: Seq
    store: Store
    leaves: Annotated[list[int], F.Indices(FANOUT**DEPTH)]


@message(MsgType.AE_LEAF)
@dataclass(slots=True)
class AeLeaf(WireMessage):
    sid: Seq
    store: Store
    leaves: Annotated[list[int], F.Indices(FANOUT**DEPTH)]
    entries: Annotated[list[LeafEntry], F.LEAF_ENTRIES]


@message(MsgType.AE_STATES)
@dataclass(slots=True)
class AeStates(WireMessage):
    sid: Seq
    store: Store
    states: Annotated[list[tuple[str, Delta]], F.KEY_STATES]
    want: Annotated[list[str], F.KEYS]  # keys the sender holds in another state: send yours
    lack: Annotated[list[str], F.KEYS]  # keys the sender lacks: send yours (or drop if dead)
    reply: Flag  # the sender asks for an answer (want/lack)
    more: Flag = False  # more chunks of this message follow
    proofs: Proofs = field(default_factory=list)
    q: Annotated[int, F.Int(0, 1 << 31), OPTIONAL] = 0  # a request's number, echoed by its answer
    part: Annotated[int, F.Int(0, 1 << 20), OPTIONAL] = 0  # an answer chunk's index


# --- membership (membership.py) --------------------------------------------------------------


@message(MsgType.PING)
@dataclass(slots=True)
class Ping(WireMessage):
    seq: Seq
    wm: Seq
    purged: Seq
    inc: Seq
    role: Role
    members: Annotated[list[MemberRow], F.MEMBERS, OPTIONAL] = field(default_factory=list)
    # the sender takes a snapshot: pushes to it may wait (snapshot.py rule 3)
    boot: Annotated[bool, F.BOOL, OPTIONAL] = False


@message(MsgType.ACK)
@dataclass(slots=True)
class Ack(WireMessage):
    seq: Seq
    wm: Seq
    purged: Seq
    inc: Seq
    role: Role
    target: Annotated[str | None, F.Address(none=True), OPTIONAL] = None  # set: a relayed ACK
    members: Annotated[list[MemberRow], F.MEMBERS, OPTIONAL] = field(default_factory=list)
    boot: Annotated[bool, F.BOOL, OPTIONAL] = False  # as PING's (not relayed)


@message(MsgType.PING_REQ)
@dataclass(slots=True)
class PingReq(WireMessage):
    seq: Seq
    target: Annotated[str, F.Address()]


@message(MsgType.MEMBERS)
@dataclass(slots=True)
class Members(WireMessage):
    members: Rows
    ask: Annotated[list[str], F.ADDRESSES, OPTIONAL] = field(default_factory=list)
    want: Annotated[bool, F.BOOL, OPTIONAL] = False


@message(MsgType.BYE)
@dataclass(slots=True)
class Bye(WireMessage):
    pass


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

_TABLE: dict[int, type[Parsed]] = {int(cls.TAG): cls for cls in get_args(Parsed)}
assert len(_TABLE) == len(get_args(Parsed)), "two message types share a tag"
GOSSIP_TYPES = frozenset(_TABLE)


def parse(message: object) -> Parsed:
    """Validate a whole gossip message and return its typed form, or raise RemoteProtocolError."""
    if type(message) is not dict:
        raise bad("a message must be a map")
    t = message.get("t")
    cls = _TABLE.get(t) if type(t) is int else None
    if cls is None:
        raise bad(f"not a gossip message type: {t!r}")
    try:
        return cls.from_wire(message)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # defensive: a parser bug must still look like a bad message
        raise bad(f"malformed {type_name(t)}: {type(exc).__name__}") from None
