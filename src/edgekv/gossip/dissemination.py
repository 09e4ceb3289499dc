"""Fast path: Plumtree-style eager push of fresh deltas along a self-forming tree.

Theory of operation
1. The origin is the only source of new seqs.  It queues each committed batch for its eager
   peers; a per-peer transmit queue is flushed at most once per window, so under load one
   PUSH carries every write of the window, while a write after a quiet spell leaves at once
   (a relay waits `relay_window`, so that copies from several peers coalesce).  The window
   toward a peer adapts to the link: `push_rtt_factor` times the link's round trip, at most
   `push_window` (at most `relay_window` for a relay), so a LAN link hardly batches and a
   100 ms link for the full window.  The round trip is the driver's measure of the link
   where it has one (`note_link_rtt`: a TCP connection's lowest, as the kernel saw it), else
   the lowest SWIM probe (membership), which includes both ends' scheduling delays: on a
   loaded host those reach tens of milliseconds, and batched writes as long.  The origin's
   window has a floor, `push_min_window` (5 ms): a loopback round trip is tens of
   microseconds, and a window that short made every commit group its own push to every
   edge (at 1,000 writes/s, 11 edges: ~1,000 pushes/s per edge, ~1 ms of the origin's CPU
   per write); with the floor a busy origin pushes to a peer at most every few ms, each push
   carrying every write since, while a write after a quiet spell of that length still leaves
   at once (Nagle-style: latency only under load, at most the floor).  When the origin
   flushes, queues due within `EARLY` of their own window go too: the peers' phases merge
   into shared flush moments, and one moment is one batch that one certificate signs
   (crdt/proofs.py rule 2), not one per peer's phase.  In a queue a newer delta for a key is
   joined into the queued one (`crdt.state.join`) and cover ranges are unioned.  At the
   origin, the queues of peers opened at the same moment are one shared queue (every peer
   gets every write), and peers with the same queue and the same pushes to repeat get the
   same message object, built once per flush moment (a driver encodes a message sent to
   several peers in a row once: node/tcp.py), so a flush moment costs one build and one
   encoding plus one send per peer, not one of each per peer.
2. A node receiving a PUSH applies it (`Replica.apply_batch`).  If it brought anything new (a
   state changed or a seq not yet covered), it is queued for every eager peer except the
   sender, flushed after the much shorter `relay_window`, while its hop count is below the
   retransmit limit (about 2 log2 N); but a push straight from the origin, while this node
   knows at most `origin_fanout` members, is not relayed: the origin pushes to each of them
   itself (rule 4), so relays would only be duplicates (20 edges on one host relayed each of
   the first writes to a dozen peers until the tree was pruned: several times the work per
   write), and the eager peers get the lazy notices instead (rule 3).  If it brought
   nothing, the receiver answers PRUNE and the sender moves it to its lazy set.  Unlike
   Plumtree's symmetric overlay, data flows one way (from the origin), so the receiver keeps
   its own links to that peer.  The
   peer whose push last brought news (its parent) is never pruned, and news from a peer it
   already pruned (a push that crossed the PRUNE) does not make that peer the parent: so
   neither catch-up nor crossing prunes cut a node off the tree.  A duplicate from the origin
   itself is never pruned: the origin becomes the parent and the relay that beat it is pruned
   instead, so the origin's direct children stay one hop away.  So the
   eager links shrink to a spanning tree (first arrivals) and a batch costs about N-1 messages.
3. New covers are also announced to lazy peers (to every neighbour where pushes are not
   relayed, rule 2) in IHAVE notices, `ihave_delay` after the push carrying them left.  At
   low rates (at most QUIET_BATCHES batches per `ihave_window`) every lazy peer gets one, so
   a node whose push was lost hears of the write at once; under load notices go out at most
   once per `ihave_window`, to `ihave_peers` lazy peers (rotating).  A node that learns of
   seqs it lacks (IHAVE, a watermark on a PING/ACK, or a gap in the covers it holds) waits
   `graft_timeout`; if its watermark still has not passed them it sends GRAFT to `graft_peers` peers known to hold
   them (two by default: a lost graft or answer then costs no retry delay).  Each makes the
   link eager again (repairing the tree) and answers with SYNC_DATA (catch-up).
4. Peers known dead are skipped when flushing; they stay in the sets, so a revived peer gets
   pushes again, until the member table forgets them (`dead_forget`, a move): then they leave
   every per-peer set and queue here too (`drop_gone`), and a GRAFT is taken only from a
   member, so these tables stay within `max_members` whatever addresses peers name.
   A node with fewer than `fanout` neighbours adds newly learned peers as eager.
   A PUSH over a link this node does not use yet adds the reverse link (eager), so the overlay
   starts symmetric and late joiners get as many candidate parents as early ones.  The origin
   is never an edge's eager or lazy target: it is the source of every seq.  The origin takes
   `origin_fanout` eager peers (32), edges `fanout` (6): a direct push costs the origin one
   send, a relay hop costs an edge a wake-up, a relay, the duplicates that prune the tree and
   one more chance to lose the write, so a wide root makes the tree shallow.
5. The origin applies nothing it receives (authority.py): a PUSH there is refused and
   counted, never relayed.  At an edge a PUSH's states go through `Authority.apply`.  A hint
   that seqs exist (IHAVE covers, a watermark) is a claim: a node that grafted for it
   `MAX_GRAFT_ROUNDS` times without reaching it drops it (a lie costs a few grafts, no more),
   and only the origin announces purge marks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..crdt.seqranges import SeqRanges
from ..crdt.state import join
from .context import Context, Handler, Part
from .messages import (
    Graft,
    IHave,
    Item,
    Prune,
    Push,
    Range,
    Send,
)
from .pushes import Outbox, push_messages
from .wire import Message

QUIET_BATCHES = 3  # at most this many batches per ihave_window: notices go to every lazy peer
MAX_GRAFT_ROUNDS = 4  # graft rounds for one hint before it is dropped as unfounded
EARLY = 0.5  # the origin flushes a queue up to this much of its window early to share a moment


def covers_new(covered: SeqRanges, ranges: list[Range]) -> bool:
    """True when some seq of `ranges` is not in `covered` (a bisection per range: an edge
    behind holds thousands of ranges, and a scan of them per push was 15% of its CPU)."""
    holds = covered.covers
    return any(not holds(lo, hi) for lo, hi in ranges)


class Dissemination(Part):
    """Eager/lazy peer sets, transmit queues, lazy notices and graft timers of one node."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self.outbox: dict[str, Outbox] = {}
        self._notice = SeqRanges()
        self._notice_due: float | None = None
        self._last_notice = float("-inf")
        self._notice_burst = False
        self._recent: deque[float] = deque()  # when recent batches went through this node
        self._last_flush: dict[str, float] = {}
        self._sent: dict[str, list[Outbox]] = {}  # the last pushes to each peer (repeated)
        self._tail: dict[str, float] = {}  # peer -> when to repeat the last push of a burst
        self.link_rtts: dict[str, float] = {}  # the driver's measure of each link (rule 1)
        self._parent: str | None = None  # the peer whose PUSH last brought news
        self._direct = False  # the origin pushes to every member itself: eager peers get notices
        self._pruned: set[str] = set()  # peers this node sent PRUNE to (and not grafted since)
        self._lazy_order: list[str] = []
        # peers taking a snapshot from this node: pushes batched for the longest window
        # (snapshot.py rule 3); the node's SnapshotServer keeps it
        self.takers: dict[str, int] = {}
        self.known_high = 0  # highest seq this node knows exists
        self._hint: str | None = None  # a peer that announced `known_high`
        self._graft_due: float | None = None
        self._graft_high = 0
        self._last_graft: set[str] = set()
        self._graft_rounds = 0  # graft rounds since this node's watermark last moved
        self._graft_from = 0  # the watermark those rounds started from
        self._grafts_paused_until = float("-inf")  # set while a repair makes grafts moot

    @property
    def fanout(self) -> int:
        return self.config.origin_fanout if self.role == "origin" else self.config.fanout

    # -- neighbours ------------------------------------------------------------------------------

    def fill(self) -> None:
        """Take new eager peers while this node has fewer than `fanout` neighbours (rule 4)."""
        peers = self.members.peers
        for a in [a for a in self.eager if a in peers and peers[a].role == "origin"]:
            self.eager.discard(a)
        need = self.fanout - len(self.eager) - len(self.lazy)
        if need <= 0:
            return
        candidates = [
            a
            for a in self.members.alive()
            if a not in self.eager and a not in self.lazy and peers[a].role != "origin"
        ]
        self.rng.shuffle(candidates)
        self.eager.update(candidates[:need])

    def handlers(self) -> dict[type, Handler]:
        """The messages this part handles on its own (core.py routes the others)."""
        return {Push: self.on_push, IHave: self.on_ihave, Prune: self.on_prune}

    def on_prune(self, peer: str, msg: Prune, now: float) -> list[Send]:
        if peer in self.eager:
            self.eager.discard(peer)
            self.lazy.add(peer)
            self.counters["pruned_by_peer"] += 1
        return []

    def on_graft(self, peer: str) -> None:
        if peer not in self.members.peers:  # (a full member table: rule 4)
            self.counters["grafts_from_non_members"] += 1
            return
        self.lazy.discard(peer)
        self.eager.add(peer)
        self.counters["grafted_by_peer"] += 1

    def drop_gone(self) -> None:
        """Forget the peers the member table no longer holds (rule 4)."""
        peers = self.members.peers
        for links in (self.eager, self.lazy, self._pruned, self._last_graft):
            links.intersection_update(peers)
        for table in (self.outbox, self._last_flush, self._sent, self._tail, self.link_rtts):
            for peer in [p for p in table if p not in peers]:
                del table[peer]

    # -- pushes ------------------------------------------------------------------------------------

    def pause_grafts(self, until: float) -> None:
        """No grafts before `until` (anti-entropy or a snapshot is repairing this node)."""
        self._grafts_paused_until = until

    def resume_grafts(self) -> None:
        self._grafts_paused_until = float("-inf")

    def publish(self, items: list[Item], covers: list[Range], now: float) -> None:
        """At the origin, queue committed deltas for the eager peers; elsewhere, apply them.

        The origin's deltas were planned on its own replica and applied there by whoever
        committed them (the sequencer), so only their seqs are marked covered here: joining
        them again would be a guaranteed no-op that costs a digest per key.
        """
        if self.role != "origin":
            self.ctx.record(self.replica.apply_batch(items, covers))
            return
        self.replica.covered.update(covers)
        self.fill()
        self._forward(items, covers, 0, None, now, self.config.push_window)

    def on_push(self, peer: str, msg: Push, now: float) -> list[Send]:
        self.counters["pushes_received"] += 1
        if self.role == "origin":  # the source of every seq takes none: refused, counted
            self.authority.apply(peer, "PUSH", msg.items, msg.covers + msg.again)
            return []
        covered = self.replica.covered
        fresh_covers = covers_new(covered, msg.covers)
        fresh_again = bool(msg.again) and covers_new(covered, msg.again)
        changes = self.authority.apply(peer, "PUSH", msg.items, msg.covers + msg.again)
        self.ctx.record(changes)
        if peer not in self.eager and peer not in self.lazy and self.role != "origin":
            p = self.members.peers.get(peer)
            if p is not None and p.role != "origin":
                self.eager.add(peer)  # links start symmetric, so late joiners get parents too
        if fresh_again:
            self.counters["repaired_by_again"] += 1
        if not changes and not fresh_covers and not fresh_again:
            self.counters["duplicates"] += 1
            parent = self._parent
            if parent is not None and parent != peer and self.authority.is_origin(peer):
                return self._prefer_origin(peer, parent)
            if self._parent is None or self._parent == peer or peer in self._pruned:
                return []  # never cut the parent; never prune twice
            self._pruned.add(peer)
            self.counters["prunes_sent"] += 1
            return [Send(peer, Prune().to_wire())]
        if peer not in self._pruned:  # news from a pruned peer was sent before our PRUNE
            self._parent = peer
        hops = msg.hops + 1
        members = len(self.members.peers)
        self._direct = members <= self.config.origin_fanout and self.authority.is_origin(peer)
        if hops <= self.config.hop_limit(members + 1):
            # the repeated part only where it was news: this node's subtree lacks it too
            n = 0 if fresh_again else msg.again_n
            covers = msg.covers + msg.again if fresh_again else msg.covers
            items = msg.items[n:]
            self._forward(items, covers, hops, peer, now, self.config.relay_window, self._direct)
        if msg.wm >= 0:
            self.members.note_progress(peer, msg.wm, 0)
        self.check_gap(peer, now, msg.wm)
        return []

    def _prefer_origin(self, origin: str, relay: str) -> list[Send]:
        """The origin's own push came second to a relay's: it pushes to this node directly, so
        it becomes the parent and the relay is pruned (rule 2): one hop fewer, and the origin
        is never pruned by an edge, so its direct children stay direct."""
        self._parent = origin
        if self.authority.is_origin(relay) or relay in self._pruned:
            return []
        self._pruned.add(relay)
        self.counters["prunes_sent"] += 1
        self.counters["origin_preferred"] += 1
        return [Send(relay, Prune().to_wire())]

    def forward_new(
        self, items: Sequence[Item], covers: list[Range], source: str, now: float
    ) -> None:
        """Relay what a catch-up brought (small batches only) so this node's subtree gets it
        (where there is one: rule 2)."""
        if items or covers:
            self._forward(items, covers, 1, source, now, self.config.relay_window, self._direct)

    def _forward(
        self,
        items: Sequence[Item],
        covers: list[Range],
        hops: int,
        exclude: str | None,
        now: float,
        window: float,
        notice_only: bool = False,
    ) -> None:
        """Queue for every eager peer but `exclude` (none if `notice_only`: rule 2).  A queue
        opened after a quiet spell (no flush to that peer within its window, `window` at
        most) is flushed at once at the origin (a commit group is one batch already) and
        after `relay_window` at a relay (pushes from several peers coalesce): batching costs
        latency only under load (Nagle-style)."""
        origin = self.role == "origin"
        hold = 0.0 if origin else self.config.relay_window
        first_due = now + hold
        # at the origin, queues opened at the same due share one box: they hold the same
        # writes (every peer gets all of them), so one push is built for them all (rule 1)
        shared: dict[float, Outbox] | None = {} if origin and exclude is None else None
        filled: set[int] = set()
        for peer in () if notice_only else sorted(self.eager):
            if peer == exclude or self.members.is_dead(peer):
                continue
            box = self.outbox.get(peer)
            if box is None:
                w = self.window(peer, window)
                due = max(now + min(w, hold), self._last_flush.get(peer, float("-inf")) + w)
                box = shared.get(due) if shared is not None else None
                if box is None:
                    box = Outbox(due, hops)
                    if shared is not None:
                        shared[due] = box
                self.outbox[peer] = box
                first_due = max(first_due, due)
            else:
                box.hops = min(box.hops, hops)
            if id(box) in filled:
                continue
            filled.add(id(box))
            queued = box.items
            for store, key, delta in items:
                old = queued.get((store, key))
                queued[(store, key)] = delta if old is None else join(old, delta)
            box.covers.update(covers)
        if covers:
            self._notice.update(covers)
            recent = self._recent
            recent.append(now)
            while recent[0] < now - self.config.ihave_window:
                recent.popleft()
            if self._notice_due is None:
                self._notice_burst = len(recent) <= QUIET_BATCHES
                # never announce before the push that carries it has left
                self._notice_due = first_due + self.config.ihave_delay
                if not self._notice_burst:
                    self._notice_due = max(
                        self._notice_due, self._last_notice + self.config.ihave_window
                    )

    def note_link_rtt(self, peer: str, rtt: float) -> None:
        """The driver's measure of the link to a member (rule 1)."""
        if rtt > 0.0 and peer in self.members.peers:
            self.link_rtts[peer] = rtt

    def window(self, peer: str, longest: float, floor: bool = True) -> float:
        """The batching window toward `peer` (rule 1): `push_rtt_factor` times the link's round
        trip (the driver's measure, else the lowest probe: a loaded host's delays are no reason
        to batch longer), at most `longest`; `longest` while no round trip is known.  At the
        origin at least `push_min_window` (unless not `floor`: the link's own window);
        `longest` to a peer taking a snapshot, from here or said by it (snapshot.py rule 3)."""
        if peer in self.takers or self.members.booting(peer):
            return longest
        cfg = self.config
        factor = cfg.push_rtt_factor
        rtt = self.link_rtts.get(peer) or self.members.link_rtt(peer)
        w = min(longest, factor * rtt) if factor > 0 and rtt > 0 else longest
        if floor and self.role == "origin":  # the floor under load (rule 1)
            w = max(w, min(longest, cfg.push_min_window))
        return w

    def _flush(
        self, peer: str, box: Outbox, built: dict[tuple[int, ...], list[Message]] | None = None
    ) -> list[Send]:
        """The pushes of `box` to `peer`.  `built` (one flush moment's) holds the messages
        made for other peers with the same box and the same pushes to repeat: those are the
        same messages, built (and encoded by the driver) once (rule 1)."""
        sent = self._sent.get(peer)
        key = (id(box), *(id(b) for b in sent)) if sent else (id(box),)
        msgs = built.get(key) if built is not None else None
        if msgs is None:
            msgs = push_messages(box, sent or [], self.replica, self.config)
            if built is not None:
                built[key] = msgs
        if box.covers and len(msgs) == 1 and self.config.push_again > 0:
            sent = self._sent.setdefault(peer, [])
            sent.append(box)
            del sent[: -self.config.push_again]
        else:
            self._sent.pop(peer, None)  # a big push is not repeated; a tail repeat only once
        self.counters["pushes_sent"] += len(msgs)
        return [Send(peer, m) for m in msgs]

    # -- lazy notices and grafts --------------------------------------------------------------------

    def on_ihave(self, peer: str, msg: IHave, now: float) -> list[Send]:
        self.members.note_progress(peer, msg.wm, msg.purged)
        if msg.covers:
            self.learn_exists(peer, max(hi for _, hi in msg.covers), now)
        else:  # a purge-mark notice: its watermark may be ahead only by writes in flight
            self.learn_exists(peer, msg.wm, now, self.config.ping_interval)
        return []

    def announce_purge(self) -> list[Send]:
        """The origin sends a new purge mark to every live peer (only the origin's own mark
        counts, so edges do not relay it), so replicas purge together."""
        if self.role != "origin":
            return []
        mark = IHave(self.replica.watermark, [], self.replica.purged).to_wire()
        return [Send(a, mark) for a in self.members.live()]

    def learn_exists(
        self, peer: str, high: int, now: float, delay: float | None = None, holds: bool = True
    ) -> None:
        """Seqs up to `high` exist (`peer` holds them, unless `holds` is false): arm the graft
        timer if this node lacks some of them.

        `delay` defaults to `graft_timeout` (lazy notices); a watermark seen on a ping or
        an anti-entropy message is often ahead only by writes in flight, so callers pass a
        longer delay for those.
        """
        if high <= self.replica.watermark or not self.authority.hint(peer, high):
            return
        if self._graft_from != self.replica.watermark:
            self._graft_from, self._graft_rounds = self.replica.watermark, 0
        elif (
            self._graft_rounds >= MAX_GRAFT_ROUNDS
            and high <= self.known_high
            and high > self.authority.issued()
        ):
            return  # grafted for this already, in vain: an unfounded hint is not re-armed
        if high > self.known_high:
            self.known_high = high
            self._hint = peer if holds else None
        due = now + (self.config.graft_timeout if delay is None else delay)
        if self._graft_due is None or due < self._graft_due:
            self._graft_due = due
            self._graft_high = high

    def check_gap(self, peer: str, now: float, peer_wm: int = -1) -> None:
        """After a PUSH or catch-up from `peer`: a hole below the seqs this node holds was lost
        on the way (rule 3).  When the sender says it holds the hole (`peer_wm`), graft at once
        (a quarter round trip absorbs reordering); when it lacks the hole too, it is repairing
        itself and will relay the repair: wait one and a half round trips for it first."""
        covered = self.replica.covered
        if covered.high <= covered.watermark:
            return
        rtt = self.members.rtt(peer)
        cfg = self.config
        if peer_wm > covered.watermark:
            delay = min(cfg.graft_timeout, rtt / 4) if rtt > 0 else cfg.graft_timeout
            self.learn_exists(peer, covered.high, now, delay)
        elif peer_wm >= 0:
            delay = 1.5 * rtt if rtt > 0 else cfg.graft_timeout
            self.learn_exists(peer, covered.high, now, delay, holds=False)
        else:
            self.learn_exists(peer, covered.high, now)

    def _holders(self) -> list[str]:
        """Up to `graft_peers` live peers that have the seq just above this node's watermark,
        the announcing peer first; peers asked last time come last (their graft or its answer
        may have been lost), and the origin only when no edge will do (every graft adds an
        eager link from the holder: the origin's fan-out should stay small)."""
        need = self.replica.watermark + 1
        peers = self.members.peers
        hint = self._hint
        found = [a for a in self.members.live() if peers[a].watermark >= need and a != hint]
        self.rng.shuffle(found)
        if hint is not None and not self.members.is_dead(hint):
            found.insert(0, hint)  # it announced the seqs: it has them
        last = self._last_graft
        # stable sort: peers asked last time, then the origin (spare its fan-out), go last
        found.sort(key=lambda a: (a in last, peers[a].role == "origin"))
        return found[: self.config.graft_peers]

    # -- timers ------------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        t = float("inf")
        for box in self.outbox.values():
            t = min(t, box.due)
        for due in self._tail.values():
            t = min(t, due)
        if self._notice_due is not None:
            t = min(t, self._notice_due)
        if self._graft_due is not None:
            t = min(t, self._graft_due)
        return t

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        due = [p for p, box in self.outbox.items() if box.due <= now]
        if due and self.role == "origin":  # one flush moment: one certificate (rule 1)
            longest = self.config.push_window
            due += [
                p
                for p, box in self.outbox.items()
                if now < box.due <= now + EARLY * self.window(p, longest)
            ]
        built: dict[tuple[int, ...], list[Message]] = {}
        for peer in due:
            box = self.outbox.pop(peer)
            last = self._last_flush.get(peer, float("-inf"))
            self._last_flush[peer] = now
            if not self.members.is_dead(peer):
                out.extend(self._flush(peer, box, built))
                # a burst (pushes a window apart) that ends gets its last push repeated: the
                # link's window (the repeat repairs a loss on the link; the floor only spares
                # the origin's work, and with it writes 10 ms apart were a burst, each push
                # repeated 7.5 ms later)
                w = self.window(peer, self.config.push_window, floor=False)
                if now - last <= 2 * w:
                    self._tail[peer] = now + 1.5 * w
                else:
                    self._tail.pop(peer, None)
        empty: dict[int, Outbox] = {}  # the tail repeats' (shared too: one build)
        for peer in [p for p, due in self._tail.items() if due <= now]:
            del self._tail[peer]
            if peer not in self.outbox and not self.members.is_dead(peer):
                prev = self._sent.get(peer)
                if prev:
                    self.counters["tail_repeats"] += 1
                    hops = prev[-1].hops
                    box = empty.setdefault(hops, Outbox(now, hops))
                    out.extend(self._flush(peer, box, built))
        if self._notice_due is not None and self._notice_due <= now:
            self._notice_due = None
            self._last_notice = now
            covers = list(self._notice)
            self._notice = SeqRanges()
            for peer in self._next_lazy(self._notice_burst):
                out.append(Send(peer, IHave(self.replica.watermark, covers).to_wire()))
                self.counters["ihaves_sent"] += 1
        if self._graft_due is not None and self._graft_due <= now < self._grafts_paused_until:
            self._graft_due = self._grafts_paused_until  # anti-entropy is repairing this node
        if self._graft_due is not None and self._graft_due <= now:
            self._graft_due = None
            wm = self.replica.watermark
            if wm != self._graft_from:
                self._graft_from, self._graft_rounds = wm, 0
            issued = self.authority.issued()
            if (
                wm < self._graft_high
                and self._graft_rounds >= MAX_GRAFT_ROUNDS
                and self._graft_high > issued
            ):
                # no peer produced what the hint announced beyond anything the origin is known
                # to have issued: drop that part (a lie, or anti-entropy's job); seqs the origin
                # did issue are grafted for as long as it takes
                self.counters["hints_dropped"] += 1
                self.known_high = self._graft_high = max(wm, issued)
                if self._graft_high > wm:
                    self._graft_due = now + self.config.graft_retry
            elif wm < self._graft_high:
                self._graft_rounds += 1
                holders = self._holders()
                self._last_graft = set(holders)
                for holder in holders:
                    self._pruned.discard(holder)
                    self.counters["grafts_sent"] += 1
                    out.append(Send(holder, Graft(wm, self.replica.purged).to_wire()))
                # retry (with another holder) if the graft or its answer is lost
                self._graft_due = now + self.retry_delay(holders)
            elif self.known_high > wm:
                self._graft_due = now + self.config.ping_interval
                self._graft_high = self.known_high
        return out

    def retry_delay(self, holders: list[str]) -> float:
        """How long a GRAFT to `holders` waits for an answer before it is retried:
        `retry_rtt_factor` round trips of the slowest, at most `graft_retry` (the whole delay
        while no round trip has been measured)."""
        cfg = self.config
        rtt = max((self.members.rtt(h) for h in holders), default=0.0)
        if rtt <= 0 or cfg.retry_rtt_factor <= 0:
            return cfg.graft_retry
        return min(cfg.graft_retry, cfg.retry_rtt_factor * rtt + cfg.relay_window)

    def _next_lazy(self, burst: bool) -> list[str]:
        peers = self.members.peers
        pool = self.lazy | self.eager if self._direct else self.lazy  # (rule 2)
        live = [
            a
            for a in sorted(pool)
            if a in peers and peers[a].state != "dead" and peers[a].role != "origin"
        ]
        if burst or len(live) <= self.config.ihave_peers:
            return live
        out: list[str] = []
        while len(out) < self.config.ihave_peers:
            if not self._lazy_order:
                self._lazy_order = list(live)
                self.rng.shuffle(self._lazy_order)
            a: str = self._lazy_order.pop()
            if a in pool and a not in out and not self.members.is_dead(a):
                out.append(a)
        return out
