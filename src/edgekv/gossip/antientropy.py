"""Slow path, the guarantee: Merkle anti-entropy sessions between two replicas.

Theory of operation
1. Every `ae_interval` (jittered) a node starts a session with a random live peer: AE_ROOT
   carries a session id, its whole-replica root (16 bytes), watermark, highest seq and purge
   mark.  Equal roots: the responder answers AE_EQUAL{covers} and the initiator adds those
   covers (equal states mean it has every effect the peer has).  One round trip.
2. Otherwise the responder answers AE_STORES: per-store roots, its covers, watermark, high and
   purge mark.  If the two differ only by progress (different watermark or high), the
   difference is writes in flight that push and catch-up deliver, and a periodic session stops
   there; every `ae_force_every`-th session, and every session started for a SYNC fallback,
   descends anyway.
3. Descent: for each store whose roots differ, AE_NODES_REQ{store, level, indices} asks for the
   16 child digests of each listed node; the initiator compares them with its own and asks
   only for differing children, level by level, down to the leaves (depth 4, 65,536 leaves).
   For differing leaves AE_LEAF_REQ returns the responder's (key, key digest, reset, seq)
   list; the initiator then sends AE_STATES with its states of keys that differ, the keys it
   wants (`want`: it holds another state) and the keys it lacks (`lack`); the responder
   applies, answers with its states for those keys, and the initiator applies them.  A state
   whose reset is above the other side's seq supersedes it whole, so for such keys (every
   plain value) only the newer state travels, one way.
4. A key one side lacks is dead there if the holder's `state.reset <= lacker.purged`: it was
   deleted and its tombstone purged, so the holder removes it instead of sending it.  Both
   sides know the other's purge mark (AE_ROOT, AE_STORES), so deleted keys never come back.
   An edge holding such a key that another edge lacks keeps it (rule 6) and has its next
   session with the origin, forced (`_ask_origin`): an edge back from a long absence misses
   deletes whose tombstones were purged meanwhile, takes the covers of sessions with edges,
   and would otherwise serve the deleted values until a periodic session happened to pick
   the origin (the slow chaos seed 33).  A lying edge can cost at most one such session per
   session it takes part in, and with equal roots that is one round trip.
5. When every request is answered the initiator holds at least the responder's state at the
   time of AE_STORES, so it adds the covers that message carried.  "Answered" is counted
   exactly: an AE_STATES request carries a number `q`, each chunk of its answer echoes `q`
   with its index `part` (the last has more = false), and a request counts as answered once
   every part up to the last arrived, each once; a duplicated AE_NODES or AE_LEAF answer is
   ignored.  A lost chunk leaves the session to time out without covers.  (Counting answers
   by their final chunks let a duplicated one end a session early: its covers then claimed
   seqs whose states were still in flight, the edge purged past them, and refused them as
   deleted ever after: the slow chaos seed 8.)
6. Authority (authority.py): states, covers and removals all go through `Authority`.  The
   origin applies nothing: its sessions only send its states (it never asks for any), and
   what peers send it is refused and counted.  An edge asks the origin for states and never
   sends it any.  The removal rule of 4 deletes a key only when the lacking side is the
   origin; an edge's lack is kept as a hint that the key need not be sent.
7. Bounds: at most one outgoing session (a forced one replaces a periodic one); requests are
   chunked to stay under `max_message_bytes`; either side drops a session silent for
   `ae_timeout`; a node answers for at most 256 sessions at once, oldest dropped first.
8. Loss.  The initiator keeps every request that expects an answer (AE_ROOT, AE_NODES_REQ,
   AE_LEAF_REQ, an AE_STATES with want/lack) until its answer is whole, and sends one still
   unanswered after `retry_rtt_factor` round trips to the peer (at least `AE_RETRY_FLOOR`, at
   most a third of `ae_timeout`) again, at most `AE_RETRIES` times: every request is a read or
   an idempotent join, a duplicated answer is ignored (rule 5), and a re-sent AE_STATES takes
   a new number `q` (its answer may be chunked differently).  So one lost message costs a few
   round trips, not the whole session: a node behind the purge mark catches up only by
   anti-entropy, and with 1% loss a session of a dozen messages often lost one (the slow
   chaos seed 9: two sessions in a row timed out and the node stayed behind for 6 s).  The
   floor is high on purpose: over TCP a message is lost only with its connection, while an
   answer over a large store (a leaf list, a states chunk) can take a loaded responder tens of
   milliseconds, and re-asking early would multiply its work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..crdt.merkle import DEPTH, FANOUT, MerkleTree
from ..crdt.replica import Change
from ..crdt.state import State
from .chunks import Chunker
from .context import Context, Handler, Part
from .messages import (
    AeEqual,
    AeLeaf,
    AeLeafReq,
    AeNodes,
    AeNodesReq,
    AeRoot,
    AeStates,
    AeStores,
    LeafEntry,
    Range,
    Send,
)
from .wire import MsgType

AE_TYPES = (AeRoot, AeEqual, AeStores, AeNodesReq, AeNodes, AeLeafReq, AeLeaf, AeStates)
NODES_PER_REQUEST = 2048  # 2,048 x 256 bytes of child digests = 512 KiB per answer
LEAVES_PER_REQUEST = 256
MAX_COVER_RANGES = 1000
MAX_RESPONDING = 256
AE_RETRIES = 2  # times one request is sent again (rule 8)
AE_RETRY_FLOOR = 0.5  # seconds: the shortest wait before a request is sent again
_EMPTY = MerkleTree()


@dataclass(slots=True)
class _Request:
    """A request awaiting its answer (rule 8)."""

    send: Send
    due: float  # sent again at this time if still unanswered
    tries: int = 0


@dataclass(slots=True)
class _Session:
    sid: int
    peer: str
    force: bool
    deadline: float
    started: float
    pending: dict[tuple[object, ...], _Request] = field(default_factory=dict)  # rule 8
    retry_at: float = float("inf")  # no pending request is due before this
    covers: list[Range] | None = None
    peer_purged: int = 0
    round_trips: int = 1
    messages: int = 0  # sent and received (`_sent` counts the AE_ROOT)
    done: bool = False
    requests: int = 0  # AE_STATES requests sent (their q)
    answers: dict[int, tuple[set[int], int]] = field(default_factory=dict)  # q -> parts, last
    seen: set[tuple[object, ...]] = field(default_factory=set)  # AE_NODES / AE_LEAF answered


class AntiEntropy(Part):
    """The anti-entropy initiator (one session at a time) and responder of one node."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.session: _Session | None = None
        self.last: _Session | None = None  # the last finished session (for tests and benchmarks)
        self._sid = 0
        self._rounds = 0
        self._pending_force: str | None = None
        self.responding: dict[
            tuple[str, int], list[float]
        ] = {}  # (peer, sid) -> [purged, deadline]
        self._next_round = 0.0
        self._empty_out: dict[int, list[Send]] = {}
        self._ask_origin_due = False  # the next session: forced, with the origin (rule 4)

    def handlers(self) -> dict[type, Handler]:
        """The messages this part handles on its own (core.py adds AE_ROOT and AE_STORES, which
        also carry the sender's watermark)."""
        return {
            AeEqual: self.on_equal,
            AeNodesReq: self.on_nodes_req,
            AeNodes: self.on_nodes,
            AeLeafReq: self.on_leaf_req,
            AeLeaf: self.on_leaf,
            AeStates: self.on_states,
        }

    # -- initiator -------------------------------------------------------------------------------

    def schedule(self, now: float) -> None:
        """The first periodic round: within [0.5, 1.5) intervals of `now`."""
        self._next_round = now + self.config.ae_interval * (0.5 + self.rng.random())

    def hold(self, until: float) -> None:
        """No periodic round before `until` (this node is bootstrapping)."""
        self._next_round = max(self._next_round, until)

    def start(self, peer: str, now: float, force: bool = False) -> list[Send]:
        """Open a session with `peer` (a forced one replaces a periodic one in progress)."""
        if self.session is not None:
            if not force or self.session.force:
                if force:
                    self._pending_force = peer
                return []
            self.counters["ae_aborted"] += 1
        self._sid += 1
        r = self.replica
        s = self.session = _Session(self._sid, peer, force, now + self.config.ae_timeout, now)
        self.counters["ae_rounds"] += 1
        root = AeRoot(self._sid, r.root, r.watermark, r.covered.high, r.purged, force)
        return self._sent(s, [Send(peer, root.to_wire())], now)

    def _mine(self, msg_sid: int, peer: str, now: float) -> _Session | None:
        s = self.session
        if s is None or s.sid != msg_sid or s.peer != peer:
            return None
        s.deadline = now + self.config.ae_timeout
        return s

    def _finish(self, s: _Session) -> None:
        if s.pending:
            return
        if s.covers is not None:
            self.authority.cover(s.peer, s.covers)
            if s.force:
                self._pending_force = None  # this node was just repaired
        s.done = True
        self.last = s
        self.session = None
        self.counters["ae_completed"] += 1

    def on_equal(self, peer: str, msg: AeEqual, now: float) -> list[Send]:
        s = self._mine(msg.sid, peer, now)
        if s is None or s.pending.pop(_ROOT, None) is None:  # not ours, or a duplicate
            return []
        s.covers = msg.covers
        self.counters["ae_equal"] += 1
        self._finish(s)
        return []

    def on_stores(self, peer: str, msg: AeStores, now: float) -> list[Send]:
        s = self._mine(msg.sid, peer, now)
        if s is None or s.pending.pop(_ROOT, None) is None:  # not ours, or a duplicate
            return []
        r = self.replica
        if not s.force and (msg.wm, msg.high) != (r.watermark, r.covered.high):
            self.counters["ae_deferred"] += 1
            self._finish(s)
            return []
        s.covers, s.peer_purged = msg.covers, msg.purged
        mine = r.roots()
        out: list[Send] = []
        for store in sorted(set(mine) | set(msg.roots)):
            if mine.get(store, 0) != msg.roots.get(store, 0):
                out.append(Send(peer, AeNodesReq(s.sid, store, 0, [0]).to_wire()))
        if out:
            s.round_trips += 1
        return self._sent(s, out, now)

    def _sent(self, s: _Session, out: list[Send], now: float) -> list[Send]:
        """Count `out` and keep its requests until answered (rule 8); ends a finished session."""
        due = now + self._retry_delay(s.peer)
        for send in out:
            key = _request_key(send.message)
            if key is not None:
                s.pending[key] = _Request(send, due)
                s.retry_at = min(s.retry_at, due)
        s.messages += len(out)
        self._finish(s)
        return out

    def _retry_delay(self, peer: str) -> float:
        cfg = self.config
        rtt = self.members.rtt(peer)
        return min(cfg.ae_timeout / 3, max(AE_RETRY_FLOOR, cfg.retry_rtt_factor * rtt))

    def _resend(self, s: _Session, now: float) -> list[Send]:
        """Send the session's requests that are due again (rule 8)."""
        out: list[Send] = []
        due = now + self._retry_delay(s.peer)
        for key, req in list(s.pending.items()):
            if req.due > now:
                continue
            if req.tries >= AE_RETRIES:
                req.due = float("inf")  # the session's timeout ends it
                continue
            req.tries += 1
            req.due = due
            if key[0] == "states":  # a new number: its answer may be chunked differently
                del s.pending[key]
                s.requests += 1
                req.send = Send(s.peer, {**req.send.message, "q": s.requests})
                s.pending[("states", s.requests)] = req
            out.append(req.send)
        s.retry_at = min((r.due for r in s.pending.values()), default=float("inf"))
        self.counters["ae_retries"] += len(out)
        return out

    def _tree(self, store: str) -> MerkleTree:
        sr = self.replica.stores.get(store)
        return sr.tree if sr is not None else _EMPTY

    def on_nodes(self, peer: str, msg: AeNodes, now: float) -> list[Send]:
        key = ("nodes", msg.store, msg.level, *(i for i, _ in msg.nodes))
        s = self._mine(msg.sid, peer, now)
        if s is None or self._again(s, key):
            return []
        s.pending.pop(key, None)
        s.messages += 1
        tree = self._tree(msg.store)
        below = msg.level + 1
        differing: list[int] = []
        empty: list[int] = []  # differing leaves the peer has empty: no need to ask for keys
        for idx, theirs in msg.nodes:
            mine = tree.children(msg.level, idx)
            for j in range(FANOUT):
                if mine[j] != theirs[j]:
                    child = idx * FANOUT + j
                    (empty if below == DEPTH and not theirs[j] else differing).append(child)
        if empty:
            self._pending_empty(s, msg.store, empty)
        out: list[Send] = []
        if below < DEPTH:
            for i in range(0, len(differing), NODES_PER_REQUEST):
                out.append(
                    Send(
                        peer,
                        AeNodesReq(
                            s.sid, msg.store, below, differing[i : i + NODES_PER_REQUEST]
                        ).to_wire(),
                    )
                )
        else:
            for i in range(0, len(differing), LEAVES_PER_REQUEST):
                out.append(
                    Send(
                        peer,
                        AeLeafReq(
                            s.sid, msg.store, differing[i : i + LEAVES_PER_REQUEST]
                        ).to_wire(),
                    )
                )
        out.extend(self._take_empty(s))
        if out:
            s.round_trips = max(s.round_trips, 2 + below)
        return self._sent(s, out, now)

    def _again(self, s: _Session, answer: tuple[object, ...]) -> bool:
        """True for a duplicate of an answer already counted (rule 5: the network may
        duplicate a message; counting it twice would end the session early)."""
        if answer in s.seen:
            self.counters["ae_duplicates"] += 1
            return True
        s.seen.add(answer)
        return False

    def _answered(self, s: _Session, msg: AeStates) -> bool:
        """Count one chunk of the answer to request `msg.q`; True when that answer is whole
        (every part up to the last one, each counted once)."""
        parts, last = s.answers.get(msg.q, (set(), -1))
        if msg.part in parts:
            self.counters["ae_duplicates"] += 1
            return False
        parts.add(msg.part)
        if not msg.more:
            last = msg.part
        s.answers[msg.q] = (parts, last)
        return last >= 0 and len(parts) == last + 1

    def _pending_empty(self, s: _Session, store: str, leaves: list[int]) -> None:
        self._empty_out.setdefault(s.sid, []).extend(self._diff_leaves(s, store, leaves, {}))

    def _take_empty(self, s: _Session) -> list[Send]:
        return self._empty_out.pop(s.sid, [])

    def on_leaf(self, peer: str, msg: AeLeaf, now: float) -> list[Send]:
        key = ("leaf", msg.store, *msg.leaves)
        s = self._mine(msg.sid, peer, now)
        if s is None or self._again(s, key):
            return []
        s.pending.pop(key, None)
        s.messages += 1
        theirs = {k: (d, r, q) for k, d, r, q in msg.entries}
        out = self._diff_leaves(s, msg.store, msg.leaves, theirs)
        if out:
            s.round_trips = max(s.round_trips, 2 + DEPTH)
        return self._sent(s, out, now)

    def _diff_leaves(
        self, s: _Session, store: str, leaves: list[int], theirs: dict[str, tuple[int, int, int]]
    ) -> list[Send]:
        """Compare our keys in `leaves` with the peer's (key -> digest, reset, seq).

        A state whose reset is above the other's seq supersedes it whole, so only it travels;
        otherwise (same-reset sets and filters) both sides send theirs and join."""
        sr = self.replica.stores.get(store)
        tree = sr.tree if sr is not None else _EMPTY
        send: list[tuple[str, State]] = []
        want: list[str] = []
        changes: list[Change] = []
        mine_keys: set[str] = set()
        authority, peer = self.authority, s.peer
        origin = self.authority.role == "origin"
        to_origin = authority.is_origin(peer)  # never send it states: ask for its own
        for leaf in leaves:
            for key in list(tree.keys_in(leaf)):
                assert sr is not None
                st = sr.states[key]
                mine_keys.add(key)
                their = theirs.get(key)
                if their is None:
                    if authority.remove_dead(peer, store, key, st, s.peer_purged):
                        changes.append(Change(store, key, None))
                        self.counters["ae_removed"] += 1
                    elif not authority.dead_at(peer, st, s.peer_purged):
                        if not to_origin:
                            send.append((key, st))
                    else:
                        self._ask_origin()
                elif their[0] != st.digest(key):
                    _, t_reset, t_seq = their
                    if to_origin:
                        want.append(key)
                    elif st.reset > t_seq or origin:
                        send.append((key, st))  # ours supersedes theirs (or is the truth)
                    elif t_reset > st.seq:
                        want.append(key)  # theirs supersedes ours
                    else:
                        send.append((key, st))
                        want.append(key)
        lack = [k for k in theirs if k not in mine_keys]
        s.requests += 1
        self.ctx.record(changes)
        return self._states_msgs(s.sid, s.peer, store, send, want, lack, True, s.requests)

    def _states_msgs(
        self,
        sid: int,
        peer: str,
        store: str,
        send: list[tuple[str, State]],
        want: list[str],
        lack: list[str],
        request: bool,
        q: int = 0,
    ) -> list[Send]:
        """AE_STATES chunks: a request (ending with want/lack, numbered `q`) or the answer to
        request `q` (each chunk numbered by `part`, so duplicates and losses show)."""
        out: list[Send] = []
        chunker = Chunker(self.replica.proofs, self.config.max_message_bytes, one_store=True)
        for key, st in send:
            full = chunker.add(store, key, st)
            if full is not None:
                states, certs = [(k, d) for _, k, d in full[0]], full[1]
                msg = AeStates(sid, store, states, [], [], False, True, certs)
                if not request:
                    msg.q, msg.part = q, len(out)
                out.append(Send(peer, msg.to_wire()))
        reply = request and bool(want or lack)
        if not chunker.empty or reply or not request:  # an answer always ends with a final chunk
            items, certs = chunker.take()
            states = [(k, d) for _, k, d in items]
            msg = AeStates(sid, store, states, want, lack, reply, False, certs)
            msg.q, msg.part = q, len(out)
            out.append(Send(peer, msg.to_wire()))
        self.counters["ae_states_sent"] += len(send)
        return out

    # -- responder -------------------------------------------------------------------------------

    def on_root(self, peer: str, msg: AeRoot, now: float) -> list[Send]:
        r = self.replica
        if r.root == msg.root:
            covers = r.covered.above(0)[:MAX_COVER_RANGES]
            return [Send(peer, AeEqual(msg.sid, covers).to_wire())]
        if len(self.responding) >= MAX_RESPONDING:
            oldest = min(self.responding, key=lambda k: self.responding[k][1])
            del self.responding[oldest]
        self.responding[(peer, msg.sid)] = [msg.purged, now + self.config.ae_timeout]
        covers = list(r.covered)[:MAX_COVER_RANGES]
        return [
            Send(
                peer,
                AeStores(
                    msg.sid, r.roots(), covers, r.watermark, r.covered.high, r.purged
                ).to_wire(),
            )
        ]

    def _responding(self, peer: str, sid: int, now: float) -> list[float] | None:
        entry = self.responding.get((peer, sid))
        if entry is not None:
            entry[1] = now + self.config.ae_timeout
        return entry

    def on_nodes_req(self, peer: str, msg: AeNodesReq, now: float) -> list[Send]:
        if self._responding(peer, msg.sid, now) is None:
            return []
        tree = self._tree(msg.store)
        nodes = [(i, tree.children(msg.level, i)) for i in msg.indices]
        return [Send(peer, AeNodes(msg.sid, msg.store, msg.level, nodes).to_wire())]

    def on_leaf_req(self, peer: str, msg: AeLeafReq, now: float) -> list[Send]:
        if self._responding(peer, msg.sid, now) is None:
            return []
        sr = self.replica.stores.get(msg.store)
        entries: list[LeafEntry] = []
        if sr is not None:
            states = sr.states
            for leaf in msg.leaves:
                for k in sr.tree.keys_in(leaf):
                    st = states[k]
                    entries.append((k, st.digest(k), st.reset, st.seq))
        return [Send(peer, AeLeaf(msg.sid, msg.store, msg.leaves, entries).to_wire())]

    def on_states(self, peer: str, msg: AeStates, now: float) -> list[Send]:
        """AE_STATES on either side: apply the states; the responder answers want/lack."""
        mine = self._mine(msg.sid, peer, now)
        entry = None if mine is not None else self._responding(peer, msg.sid, now)
        if mine is None and entry is None:
            return []
        changes = self.authority.apply(
            peer, "AE_STATES", [(msg.store, k, d) for k, d in msg.states]
        )
        self.ctx.record(changes)
        if self.authority.role == "edge":
            self.counters["ae_states_received"] += len(msg.states)
        if mine is not None:
            mine.messages += 1
            if self._answered(mine, msg):
                mine.pending.pop(("states", msg.q), None)  # absent: an answer re-asked for
            self._finish(mine)
            return []
        assert entry is not None
        if not msg.reply:
            return []
        purged = int(entry[0])
        sr = self.replica.stores.get(msg.store)
        states = sr.states if sr is not None else {}
        authority = self.authority
        to_origin = authority.is_origin(peer)  # the origin takes no states: it never asks
        send: list[tuple[str, State]] = [(k, states[k]) for k in msg.want if k in states]
        for k in msg.lack:
            st = states.get(k)
            if st is None:
                continue
            if authority.remove_dead(peer, msg.store, k, st, purged):
                self.ctx.record([Change(msg.store, k, None)])
                self.counters["ae_removed"] += 1
            elif not authority.dead_at(peer, st, purged):
                if not to_origin:
                    send.append((k, st))
            else:
                self._ask_origin()
        return self._states_msgs(msg.sid, peer, msg.store, send, [], [], False, msg.q)

    def _ask_origin(self) -> None:
        """An edge lacks a state of ours that its purge mark would have removed (rule 4): we may
        hold a value deleted while we were away, its tombstone purged everywhere.  Only the
        origin's word removes it, so the next session is a forced one with the origin."""
        if self.role == "edge" and not self._ask_origin_due:
            self._ask_origin_due = True
            self.counters["ae_ask_origin"] += 1

    # -- timers ----------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        t = self._next_round
        if self.session is not None:
            t = min(t, self.session.deadline, self.session.retry_at)
        elif self._ask_origin_due:
            return 0.0  # at once
        return t

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        for key in [k for k, v in self.responding.items() if v[1] <= now]:
            del self.responding[key]
        s = self.session
        if s is not None and s.deadline <= now:
            self.counters["ae_timeouts"] += 1
            self._empty_out.pop(s.sid, None)
            self.session = None
        elif s is not None and s.retry_at <= now:
            out.extend(self._resend(s, now))
        if self.session is None and self._ask_origin_due:
            self._ask_origin_due = False
            origin = self.members.live_origin()
            if origin is not None:
                out.extend(self.start(origin, now, force=True))
        if self.session is None and self._pending_force is not None:
            peer, self._pending_force = self._pending_force, None
            if not self.members.is_dead(peer):
                out.extend(self.start(peer, now, force=True))
        if self._next_round <= now:
            self._next_round = now + self.config.ae_interval * (0.75 + 0.5 * self.rng.random())
            live = self.members.alive()
            if self.session is None and live:
                self._rounds += 1
                force = self._rounds % self.config.ae_force_every == 0
                out.extend(self.start(self.rng.choice(live), now, force))
        return out


_ROOT: tuple[object, ...] = ("root",)


def _request_key(m: dict[str, Any]) -> tuple[object, ...] | None:
    """What identifies the answer to request `m` (rule 8); None: `m` expects no answer."""
    t = m["t"]
    if t == MsgType.AE_NODES_REQ:
        return ("nodes", m["store"], m["level"], *m["indices"])
    if t == MsgType.AE_LEAF_REQ:
        return ("leaf", m["store"], *m["leaves"])
    if t == MsgType.AE_STATES:
        return ("states", m["q"]) if m.get("reply") else None
    if t == MsgType.AE_ROOT:
        return _ROOT
    return None
