"""Authority: who may change this replica, and how far a peer's claims are believed.

Theory of operation
1. The origin is the only authority.  Its replica changes only through its own sequencer
   (`GossipNode.publish`); an origin's `Authority` has no replica to write to (it only reads
   its seq ranges), so no path (PUSH, SYNC_DATA, a GRAFT's answer, AE_STATES, AE_EQUAL and
   AE_STORES covers, a lack list) can apply, cover or remove anything there.  What it
   refuses is counted per peer.
2. At an edge every state, cover and removal that came from a peer goes through `apply`,
   `cover` and `remove_dead` here: one place to verify (origin signatures, #11 item 2) before
   the replica changes.  A peer whose data conflicts with ours is counted and refused.
3. A peer's claims are hints, bounded and checked; none can delete, outrank or redirect:
   - roles come from configuration (`origins`), never from what a peer says about itself;
   - the origin's watermark and purge mark are taken only from the origin's own messages
     (the transport authenticates which connection is the origin's); an edge's lag and
     readiness use only those;
   - any peer's watermark claim is clamped to what the origin has issued as far as this node
     knows (at the origin: exactly its own high; at an edge: the origin's own figure or what
     this replica covers), so it cannot inflate a lag, a purge horizon or a graft target;
   - a purge mark is the origin's alone: an edge purges only up to the origin's mark, and
     removes a key because a peer lacks it only when that peer is the origin.  An edge's lack
     is no evidence of a delete: it may be a lie, so the key is kept (and not sent to a peer
     whose purge mark, bounded by the origin's, says it would refuse it).
4. Per-peer counts (`refused`) are bounded: at most `MAX_NAMED` peers are tracked by name,
   the rest add up under `OTHER` (a spoofing peer can name any address; `transport.named`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..crdt.replica import Change, Replica
from ..crdt.state import Delta, State
from ..errors import ConflictingVersion, InvalidInput, RemoteProtocolError
from .transport import named

HINT_SLACK = 1 << 20
"""A hint that seqs exist more than this far above the highest seq this node knows the origin
issued is impossible (the origin's own messages keep that figure seconds fresh): refused."""


class Authority:
    """The rules of rule 3 for one node, and the only door from peers into its replica."""

    def __init__(
        self,
        role: str,
        replica: Replica,
        origins: Iterable[str],
        counters: Counter[str],
    ) -> None:
        if role not in ("edge", "origin"):
            raise InvalidInput(f"role must be 'edge' or 'origin', not {role!r}")
        self.role = role
        self.origins = frozenset(origins)
        self.counters = counters
        # The origin's authority holds no reference to its replica (rule 1): only an edge's can
        # apply anything; the origin reads its own high through `_issued`.
        self._replica: Replica | None = replica if role == "edge" else None
        self._issued_view = replica.covered
        self.refused: dict[str, Counter[str]] = {}
        self.origin_wm = 0  # the highest watermark the origin itself announced to this node
        self.origin_purged = 0  # the highest purge mark the origin itself announced
        self.heard_origin = False  # any message from the origin yet (readiness)
        self.purge_hint = False  # a peer claimed a purge mark above `origin_purged` (ask it)

    # -- identities --------------------------------------------------------------------------------

    def is_origin(self, peer: str) -> bool:
        return peer in self.origins

    def role_of(self, peer: str) -> str:
        """A peer's role: configuration decides, never the peer's own claim."""
        return "origin" if peer in self.origins else "edge"

    def refuse(self, peer: str, reason: str, n: int = 1) -> None:
        """Count `n` refused items of `reason` from `peer` (and in the node's counters)."""
        if n <= 0:
            return
        self.counters[f"refused_{reason}"] += n
        self.refused.setdefault(named(self.refused, peer), Counter())[reason] += n

    # -- the door into the replica -----------------------------------------------------------------

    def apply(
        self,
        peer: str,
        path: str,
        items: Iterable[tuple[str, str, Delta]],
        covers: Iterable[tuple[int, int]] = (),
    ) -> list[Change]:
        """Apply states a peer sent (an edge only).  The origin refuses and counts them."""
        replica = self._replica
        if replica is None:
            items, covers = list(items), list(covers)
            if items or covers:
                self.refuse(peer, "states_ignored", max(1, len(items)))
            return []
        try:
            return replica.apply_batch(items, covers)
        except ConflictingVersion as exc:
            self.refuse(peer, "conflicting_state")
            raise RemoteProtocolError(f"{path} conflicts with local state: {exc}") from None

    def cover(self, peer: str, ranges: Iterable[tuple[int, int]]) -> None:
        """Mark seqs as held because a peer's state equals ours (an edge only)."""
        if self._replica is not None:
            self._replica.covered.update(ranges)

    def remove_dead(self, peer: str, store: str, key: str, state: State, purged: int) -> bool:
        """Remove `key` because `peer` lacks it and says it purged it.  True if removed.

        Only the origin's word counts (rule 3), and the origin itself never removes anything.
        """
        replica = self._replica
        if replica is None or peer not in self.origins or state.reset > purged:
            return False
        replica.remove(store, key)
        return True

    def dead_at(self, peer: str, state: State, purged: int) -> bool:
        """True when `peer` would refuse `state` as deleted and purged (so do not send it)."""
        return state.reset <= min(purged, self._purge_bound())

    # -- claims ------------------------------------------------------------------------------------

    def issued(self) -> int:
        """The highest seq this node knows the origin has issued."""
        return self._issued()

    def _issued(self) -> int:
        """The highest seq this node knows the origin has issued."""
        high = self._issued_view.high
        return high if self.role == "origin" else max(high, self.origin_wm)

    def _purge_bound(self) -> int:
        return self._issued_view.watermark if self.role == "origin" else self.origin_purged

    def hint(self, peer: str, high: int) -> bool:
        """Whether `peer`'s claim that seqs up to `high` exist may arm a graft (an edge only)."""
        if self.role == "origin":
            return False
        if peer in self.origins or high <= self._issued() + HINT_SLACK:
            return True
        self.refuse(peer, "impossible_watermark")
        return False

    def claim(self, peer: str, wm: int, purged: int) -> tuple[int, int]:
        """A peer's watermark and purge mark, bounded by what this node knows the origin has
        issued and announced.  From the origin itself (at an edge) they are taken as they are."""
        if self.role == "edge" and peer in self.origins:
            self.heard_origin = True
            if wm > self.origin_wm:
                self.origin_wm = wm
            if purged > self.origin_purged:
                self.origin_purged = purged
            return wm, purged
        bound = self._issued()
        if wm > bound:
            if self.role == "origin":
                self.refuse(peer, "watermark_above_issued")
            else:
                self.counters["watermark_claims_clamped"] += 1
            wm = bound
        p_bound = min(self._purge_bound(), bound)
        if self.role == "edge" and purged > self.origin_purged:
            self.purge_hint = True  # the origin may have purged further: core.py asks it
        if purged > p_bound:
            purged = p_bound
        return wm, purged
