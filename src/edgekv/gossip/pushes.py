"""The origin's and relays' transmit queues, and the PUSH messages built from them.

See dissemination.py rule 1: a queue (`Outbox`) collects what a peer is to get until its
window ends; its pushes repeat the previous pushes to that peer when those are small, so a
lost push is repaired by the next one at no extra message.  Pure functions of their inputs
(no I/O, no clock): one queue and one history build the same messages for every peer that
shares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..crdt.proofs import Certificate
from ..crdt.replica import Replica
from ..crdt.seqranges import SeqRanges
from ..crdt.state import Delta, join
from .chunks import Chunker, delta_size
from .config import GossipConfig
from .messages import SEND_ALLOC, Item, Push, Range
from .wire import Message

__all__ = ["Outbox", "push_messages"]


@dataclass(slots=True)
class Outbox:
    """One transmit queue (one peer's, or at the origin several peers' at once)."""

    due: float
    hops: int
    items: dict[tuple[str, str], Delta] = field(default_factory=dict)
    covers: SeqRanges = field(default_factory=SeqRanges)


def again(
    prev: list[Outbox], replica: Replica, budget: int, certs: dict[bytes, Certificate]
) -> tuple[list[Item], list[Range], int]:
    """The previous pushes `prev` to repeat: their items and covers if they are small (at most
    `budget` bytes) and all provable here, and their size; else none."""
    if not prev or budget <= 0:
        return [], [], 0
    merged: dict[tuple[str, str], Delta] = {}
    covers = SeqRanges()
    for box in prev:
        covers.update(box.covers)
        for k, d in box.items.items():
            old = merged.get(k)
            merged[k] = d if old is None else join(old, d)
    proofs = replica.proofs
    items: list[Item] = []
    size = 0
    for (store, key), delta in merged.items():
        size += delta_size(delta) + len(key) + len(store)
        if size > budget:
            certs.clear()
            return [], [], 0
        if proofs is not None:
            extra = proofs.add_material(certs, delta)
            if extra < 0:
                certs.clear()
                return [], [], 0
            size += extra
        items.append((store, key, delta))
    return items, list(covers), size


def push_messages(
    box: Outbox, prev: list[Outbox], replica: Replica, config: GossipConfig
) -> list[Message]:
    """The PUSH messages carrying `box` (one unless it exceeds `max_message_bytes`), the
    first also repeating `prev` (see `again`), each with the certificates of its states."""
    out: list[Message] = []
    # what receivers may allocate (Bloom filters) is bounded per message too
    chunker = Chunker(replica.proofs, config.max_message_bytes, max_alloc=SEND_ALLOC)
    certs: dict[bytes, Certificate] = {}
    first, again_covers, size = again(prev, replica, config.push_again_bytes, certs)
    chunker.seed(first, certs, size)
    again_n = len(first)
    wm = (
        replica.watermark
    )  # a receiver with a gap learns whether we hold it (dissemination.py rule 3)
    for (store, key), delta in box.items.items():
        full = chunker.add(store, key, delta)
        if full is not None:
            msg = Push(full[0], [], box.hops, wm, again_covers, again_n, full[1])
            out.append(msg.to_wire())
            again_covers, again_n = [], 0
    items, proofs = chunker.take()
    msg = Push(items, list(box.covers), box.hops, wm, again_covers, again_n, proofs)
    out.append(msg.to_wire())
    return out
