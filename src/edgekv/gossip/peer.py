"""What a node knows about one peer (a row of the member table, gossip/membership.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .messages import MemberRow

__all__ = ["ALIVE", "DEAD", "SUSPECT", "PeerInfo", "RoundTrips", "members_scale"]

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"


def members_scale(members: int) -> int:
    """How many `members_interval`s between full tables in a cluster of `members` (rule 3):
    1 up to 32 members, then one more per doubling (memberlist's pushPullScale)."""
    return 1 if members <= 32 else math.ceil(math.log2(members) - 5) + 1


@dataclass(slots=True)
class PeerInfo:
    """What this node knows about one peer."""

    address: str
    role: str = "edge"
    incarnation: int = 0
    state: str = ALIVE
    since: float = 0.0  # when `state` last changed
    watermark: int = 0  # the last watermark the peer advertised
    purged: int = 0  # the peer's last advertised purge mark
    last_seen: float = 0.0
    rtt: float = 0.0  # smoothed round trip of direct probes (RFC 6298's 1/8 gain); 0: none yet
    rtt_min: float = 0.0  # the lowest round trip of direct probes (the link's own delay)
    boot: bool = False  # the peer said it takes a snapshot (its own PING/ACK: snapshot.py rule 3)

    def row(self) -> MemberRow:
        return (self.address, self.role, self.incarnation, self.state)


class RoundTrips:
    """Round trips of direct probes: each peer's (on its PeerInfo: smoothed with RFC 6298's
    1/8 gain, and the lowest) and, for a peer not probed yet, the same over every peer."""

    __slots__ = ("lowest", "typical")

    def __init__(self) -> None:
        self.typical = 0.0  # smoothed over every direct probe (a new peer's first guess)
        self.lowest = 0.0  # the lowest direct probe to any peer

    def sample(self, p: PeerInfo, sample: float) -> None:
        p.rtt = sample if p.rtt == 0.0 else p.rtt + (sample - p.rtt) / 8
        if sample > 0.0:
            p.rtt_min = sample if p.rtt_min == 0.0 else min(p.rtt_min, sample)
            self.lowest = sample if self.lowest == 0.0 else min(self.lowest, sample)
        self.typical = sample if self.typical == 0.0 else self.typical + (sample - self.typical) / 8

    def smoothed(self, p: PeerInfo | None) -> float:
        """`p`'s smoothed round trip, else the typical one; 0.0 before any probe was answered."""
        return p.rtt if p is not None and p.rtt > 0.0 else self.typical

    def link(self, p: PeerInfo | None) -> float:
        """`p`'s lowest round trip, else the lowest to any peer; 0.0 before any answer."""
        return p.rtt_min if p is not None and p.rtt_min > 0.0 else self.lowest
