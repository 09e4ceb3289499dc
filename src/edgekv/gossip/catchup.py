"""Catch-up by watermark: a node that is behind gets every key changed after its watermark.

Theory of operation
1. SYNC_REQ{rid, wm, purged} (or GRAFT{wm, purged}, answered with rid 0) asks a peer for
   everything after `wm`.  The responder walks its change index (`Replica.changes_since`,
   O(changes)) and answers SYNC_DATA with full states, in chunks of at most
   `max_message_bytes`; only the last chunk carries the covers (`covered.above(wm)`), so the
   requester never claims a seq whose effect it has not received.
2. If the responder has purged tombstones above `wm` (`replica.purged > wm`) it cannot prove
   what the requester should delete: it answers SYNC_DATA{fallback: true} and the requester
   runs a forced anti-entropy session with it (the AE removal rule then drops dead keys).
3. A new or restarted node asks a random live peer (not only the origin); an unanswered request
   is retried with another peer after `sync_timeout`.  Data that arrives unrequested (a GRAFT
   answer) is applied the same way: it is a join, harmless whenever it comes.
4. Every chunk goes through `Authority.apply`: the origin never requests catch-up and
   refuses (and counts) any SYNC_DATA it gets; an edge applies it.
"""

from __future__ import annotations

import random
from collections import Counter

from ..crdt.proofs import Certificate
from ..crdt.replica import Change, Replica
from .authority import Authority
from .config import GossipConfig
from .dissemination import delta_size
from .membership import Membership
from .messages import MAX_MESSAGE_STORES, Item, Send, SyncData, SyncReq


class CatchUp:
    """Outstanding sync requests of one node, and the responder side."""

    def __init__(
        self,
        replica: Replica,
        config: GossipConfig,
        rng: random.Random,
        counters: Counter[str],
        membership: Membership,
        authority: Authority,
    ) -> None:
        self.replica = replica
        self.authority = authority
        self.config = config
        self.rng = rng
        self.counters = counters
        self.members = membership
        self._rid = 0
        self.pending: dict[int, tuple[str, float, int]] = {}  # rid -> (peer, deadline, tries)

    def request(self, now: float, peer: str | None = None, tries: int = 1) -> list[Send]:
        """Ask `peer` (default: a random live peer) for everything after our watermark."""
        if peer is None:
            live = self.members.live()
            if not live:
                return []
            peer = self.rng.choice(live)
        self._rid += 1
        self.pending[self._rid] = (peer, now + self.config.sync_timeout, tries)
        self.counters["syncs_sent"] += 1
        return [
            Send(peer, SyncReq(self._rid, self.replica.watermark, self.replica.purged).to_wire())
        ]

    def answer(self, peer: str, rid: int, wm: int) -> list[Send]:
        """The SYNC_DATA chunks answering a request for everything after `wm`."""
        replica = self.replica
        self.counters["syncs_served"] += 1
        if replica.purged > wm:
            self.counters["sync_fallbacks_served"] += 1
            return [
                Send(peer, SyncData(rid, [], [], replica.purged, True, fallback=True).to_wire())
            ]
        out: list[Send] = []
        chunk: list[Item] = []
        size = 0
        stores: set[str] = set()
        limit = self.config.max_message_bytes
        proofs = replica.proofs
        certs: dict[bytes, Certificate] = {}  # the proofs of this chunk (crdt/proofs.py)
        for store, key, state in replica.changes_since(wm):
            n = delta_size(state) + len(key) + len(store)
            if chunk and (
                size + n > limit or (store not in stores and len(stores) >= MAX_MESSAGE_STORES)
            ):
                msg = SyncData(rid, chunk, [], replica.purged, False, False, list(certs.values()))
                out.append(Send(peer, msg.to_wire()))
                chunk, size = [], 0
                certs = {}
                stores.clear()
            if proofs is not None:
                extra = proofs.add_material(certs, state)
                if extra < 0:
                    continue  # unprovable here: never sent (crdt/proofs.py rule 3)
                n += extra
            stores.add(store)
            chunk.append((store, key, state))
            size += n
        covers = replica.covered.above(wm)
        msg = SyncData(rid, chunk, covers, replica.purged, True, False, list(certs.values()))
        out.append(Send(peer, msg.to_wire()))
        return out

    def on_data(self, peer: str, msg: SyncData) -> list[Change]:
        """Apply one SYNC_DATA chunk.  The caller starts anti-entropy on a fallback."""
        self.members.note_progress(peer, 0, msg.purged)
        if msg.last or msg.fallback:
            self.pending.pop(msg.rid, None)
        if msg.fallback:
            self.counters["sync_fallbacks"] += 1
            return []
        return self.authority.apply(peer, "SYNC_DATA", msg.items, msg.covers if msg.last else ())

    def next_deadline(self) -> float:
        return min((d for _, d, _ in self.pending.values()), default=float("inf"))

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        for rid in [r for r, (_, d, _) in self.pending.items() if d <= now]:
            peer, _, tries = self.pending.pop(rid)
            self.counters["sync_timeouts"] += 1
            others = [a for a in self.members.live() if a != peer]
            if others and tries < 3:  # later, pings and anti-entropy take over
                out.extend(self.request(now, self.rng.choice(others), tries + 1))
        return out
