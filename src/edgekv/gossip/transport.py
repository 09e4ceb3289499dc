"""The Transport interface every network implementation provides, and its traffic counters.

Pure (no I/O): the gossip core and the node driver are written against `Transport`; the TCP
transport (`edgekv.node.tcp`) and the simulated one (`edgekv.testnet.simnet`) implement it and
pass the same conformance suite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edgekv.gossip.wire import Message

__all__ = ["MAX_NAMED", "OTHER", "Envelope", "Transport", "TransportStats", "named"]

MAX_NAMED = 1024
OTHER = "<other>"


def named(table: Mapping[str, object], who: str) -> str:
    """The key to count `who` (a peer or host) under in a per-peer `table`: itself while the
    table names fewer than `MAX_NAMED`, else `OTHER`.  A spoofing peer can name any number of
    addresses; every table keyed by what a peer names stays bounded this way."""
    return who if who in table or len(table) < MAX_NAMED else OTHER


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbound message and who sent it."""

    peer: str  # the sender's advertised address: its identity on the network
    message: Message


@dataclass(slots=True)
class TransportStats:
    """Traffic counters by message type name (`MsgType.name`); byte counts are frame sizes.

    `sent_*` count messages the transport accepted from its caller; `dropped` counts copies that
    never reached the peer (fault loss, unreachable peer, full queue); `received_*` count copies
    that arrived (duplicates included); `rejected_connections` counts inbound connections closed
    for a protocol or authentication failure, `refused_connections` those closed at once for
    being over a connection cap, `idle_closed` those closed for silence, and `accept_errors`
    failed accepts (out of file descriptors, ...) that the listener survived.
    `refused_claims` counts, per remote host and reason, connections refused for a claim they
    could not back (e.g. the origin's address), and `undialled` messages not sent because their
    address was neither configured nor confirmed (a peer's mere claim opens no connection).
    `senders_expired` counts per-peer senders closed after idling, `senders_evicted` those
    closed because the table of senders was full (node/senders.py rule 4).
    """

    sent_messages: Counter[str] = field(default_factory=Counter)
    sent_bytes: Counter[str] = field(default_factory=Counter)
    received_messages: Counter[str] = field(default_factory=Counter)
    received_bytes: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    rejected_connections: int = 0
    refused_connections: int = 0
    idle_closed: int = 0
    accept_errors: int = 0
    undialled: int = 0
    senders_expired: int = 0
    senders_evicted: int = 0
    refused_claims: dict[str, Counter[str]] = field(default_factory=dict)

    def refuse_claim(self, host: str, reason: str) -> None:
        """Count one connection from `host` refused for `reason` (see `named`)."""
        claims = self.refused_claims
        claims.setdefault(named(claims, host), Counter())[reason] += 1

    def record_sent(self, kind: str, nbytes: int) -> None:
        self.sent_messages[kind] += 1
        self.sent_bytes[kind] += nbytes

    def record_received(self, kind: str, nbytes: int) -> None:
        self.received_messages[kind] += 1
        self.received_bytes[kind] += nbytes

    def merge(self, other: TransportStats) -> None:
        """Add `other`'s counts into this one."""
        self.sent_messages.update(other.sent_messages)
        self.sent_bytes.update(other.sent_bytes)
        self.received_messages.update(other.received_messages)
        self.received_bytes.update(other.received_bytes)
        self.dropped += other.dropped
        self.rejected_connections += other.rejected_connections
        self.refused_connections += other.refused_connections
        self.idle_closed += other.idle_closed
        self.accept_errors += other.accept_errors
        self.undialled += other.undialled
        self.senders_expired += other.senders_expired
        self.senders_evicted += other.senders_evicted
        for host, reasons in other.refused_claims.items():
            self.refused_claims.setdefault(host, Counter()).update(reasons)

    @classmethod
    def combined(cls, stats: Iterable[TransportStats]) -> TransportStats:
        """A new TransportStats summing all of `stats` (a testnet's whole network)."""
        out = cls()
        for s in stats:
            out.merge(s)
        return out

    def total(self) -> dict[str, int]:
        """Totals over all message types."""
        return {
            "sent_messages": sum(self.sent_messages.values()),
            "sent_bytes": sum(self.sent_bytes.values()),
            "received_messages": sum(self.received_messages.values()),
            "received_bytes": sum(self.received_bytes.values()),
            "dropped": self.dropped,
            "rejected_connections": self.rejected_connections,
            "refused_connections": self.refused_connections,
            "idle_closed": self.idle_closed,
            "accept_errors": self.accept_errors,
            "undialled": self.undialled,
            "senders_expired": self.senders_expired,
            "senders_evicted": self.senders_evicted,
        }

    def copy(self) -> TransportStats:
        return TransportStats.combined([self])


@runtime_checkable
class Transport(Protocol):
    """A node's network endpoint: best-effort, per-peer-ordered (without faults) messaging.

    `send` never raises because a peer is unreachable or dead: the message is dropped and counted.
    It raises `LocalProtocolError` for a message that is not wire-valid.  `receive` returns the
    next inbound message from any peer.  After `aclose`, `send` and `receive` raise
    `anyio.ClosedResourceError`.
    """

    stats: TransportStats

    @property
    def address(self) -> str: ...

    async def send(self, peer: str, message: Message) -> None: ...

    async def receive(self) -> Envelope: ...

    def link_rtts(self) -> dict[str, float]:
        """Each peer link's round trip in seconds as the transport measured it (over TCP the
        kernel's lowest for the connection); empty where it has no measure of its own."""
        ...

    async def aclose(self) -> None: ...
