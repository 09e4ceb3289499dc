"""What a node knows about one peer (a row of the member table, gossip/membership.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .messages import MemberRow

__all__ = ["ALIVE", "DEAD", "SUSPECT", "PeerInfo", "members_scale"]

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

    def row(self) -> MemberRow:
        return (self.address, self.role, self.incarnation, self.state)
