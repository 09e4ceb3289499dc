"""What the sub-protocols of one node share, and the one way their state changes come back.

`GossipNode` (core.py) builds one `Context` and hands it to each part (dissemination, catch-up,
anti-entropy); a part reads the replica, configuration, randomness, counters, member table and
authority from it, and every state change it applies goes to `record`, never back through a
return value.  The core hands the recorded changes to the driver (`drain`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..crdt.replica import Change, Replica
from .authority import Authority
from .config import GossipConfig
from .membership import Membership
from .messages import Send

Handler = Callable[[str, Any, float], list[Send]]
"""Handles one parsed message: (peer, message, now) -> the messages to send."""


@dataclass(eq=False, slots=True)
class Context:
    """One node's shared protocol state (everything here lives as long as the node)."""

    address: str
    role: str
    replica: Replica
    config: GossipConfig
    rng: random.Random
    counters: Counter[str]
    authority: Authority
    members: Membership
    changes: list[Change] = field(default_factory=list)  # applied, not yet drained

    def record(self, changes: list[Change]) -> None:
        """State changes a part applied (removals have `state=None`)."""
        if changes:
            self.changes.extend(changes)

    def mark(self) -> int:
        """A position in the recorded changes (see `since`)."""
        return len(self.changes)

    def since(self, mark: int) -> list[Change]:
        """The changes recorded after `mark` (no `drain` in between)."""
        return self.changes[mark:]

    def drain(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out


class Part:
    """Base of a sub-protocol: the context, and its members under short names."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.address = ctx.address
        self.role = ctx.role
        self.replica = ctx.replica
        self.config = ctx.config
        self.rng = ctx.rng
        self.counters = ctx.counters
        self.authority = ctx.authority
        self.members = ctx.members
