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

from collections.abc import Callable

from .chunks import Chunker
from .context import Context, Part
from .messages import Send, SyncData, SyncReq


class CatchUp(Part):
    """Outstanding sync requests of one node, and the responder side."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._rid = 0
        # the watermark to ask from: the replica's, or a restart's file's while it loads
        self.floor: Callable[[], int] = lambda: self.replica.watermark
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
        return [Send(peer, SyncReq(self._rid, self.floor(), self.replica.purged).to_wire())]

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
        chunker = Chunker(replica.proofs, self.config.max_message_bytes)
        for store, key, state in replica.changes_since(wm):
            full = chunker.add(store, key, state)
            if full is not None:
                items, certs = full
                msg = SyncData(rid, items, [], replica.purged, False, False, certs)
                out.append(Send(peer, msg.to_wire()))
        items, certs = chunker.take()
        covers = replica.covered.above(wm)
        msg = SyncData(rid, items, covers, replica.purged, True, False, certs)
        out.append(Send(peer, msg.to_wire()))
        return out

    def answered(self, rid: int) -> None:
        """Request `rid` got its answer another way (a snapshot offer)."""
        self.pending.pop(rid, None)

    def on_data(self, peer: str, msg: SyncData) -> None:
        """Apply one SYNC_DATA chunk.  The caller starts anti-entropy on a fallback."""
        self.members.note_progress(peer, 0, msg.purged)
        if msg.last or msg.fallback:
            self.answered(msg.rid)
        if msg.fallback:
            self.counters["sync_fallbacks"] += 1
            return
        covers = msg.covers if msg.last else ()
        self.ctx.record(self.authority.apply(peer, "SYNC_DATA", msg.items, covers))

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
