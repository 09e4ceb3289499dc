"""Membership and SWIM failure detection: who the peers are and which of them are alive.

Theory of operation
1. The table starts from the seeds and grows from every message received (the sender is
   alive) and from member rows `[address, role, incarnation, state]` gossiped in MEMBERS
   messages and piggybacked on PING/ACK.  A joining node gets whole tables from the peers
   whose rows it takes at once (rule 8): an origin sends its table to every peer it sees for
   the first time, and a node asks each configured edge for its table (MEMBERS `want`, answered
   at most once per `members_interval`) when it first hears from it, unless an origin's whole
   table (its first row is the sender's own) came first.  So a joining node learns everyone
   within one round trip of a seed, and a node that merely meets a peer for the first time (a
   relay, a prober) is not sent a table it would only hold as candidates.
2. Every `ping_interval` one peer is probed, round-robin over a list reshuffled each round;
   the first member is probed as soon as it joins (its round trip sizes the push windows).
   No ACK within `ping_timeout`: `indirect_probes` other live peers are asked to ping it
   (PING_REQ); they relay the target's ACK.  Still nothing after another two timeouts: the
   target becomes SUSPECT.  A suspect not refuted within `suspect_timeout` becomes DEAD.
3. Rows are ordered as in SWIM: a higher incarnation wins; at the same incarnation dead beats
   suspect beats alive.  A node that hears itself suspected or dead refutes it by raising its
   own incarnation, which then spreads as an ALIVE row.  Each change is piggybacked on a few
   pings and acks (about 3 log2 N times) and the full table goes to one peer every
   `members_interval`, scaled up past 32 members as memberlist's push-pull is (`members_scale`:
   one more interval per doubling), so table traffic per node grows with log N, not N.  Each
   ping interval one random dead peer is pinged too (so the two halves of a healed partition,
   each believing the other dead, find each other again); a peer dead for long is pinged ever
   more rarely, except a dead seed or origin, pinged at least every CONFIGURED_PING_SECONDS.
4. Direct evidence overrides gossip locally: any message from a peer marks it alive (a dead
   peer that talks again is revived, and told it was dead so that it refutes everywhere; the
   sync and anti-entropy paths then catch it up).
5. Every PING and ACK carries the sender's watermark and purge mark: the core uses them to
   notice it is behind (catch-up) and to compute the tombstone purge horizon.  They are
   claims: `Authority.claim` bounds them before they are recorded (authority.py).
6. A member is a node id; its address is where it is now.  When the driver learns that a
   node left an address for another (`forget(old)`: the same node id handshook from a new
   address, or a seed we dialled answered under another one), the old row is dropped and
   gossiped rows about that address are ignored until something speaks from it again.
7. Roles come from configuration (`Authority.role_of`), never from a peer's own claim, and a
   row about an origin is believed only from that origin: nobody else can mark it dead,
   raise its incarnation or give its address another role.  A relayed ACK proves liveness
   only; its watermark and purge mark are a third party's claims and are not recorded.
8. Vouching (issue #12): a node dials only addresses it was configured with (seeds, origins)
   or that were vouched for, so a peer's claim never makes it open a connection.  A row about
   an unknown address is taken at once only from a configured peer.  From any other peer it
   is a *candidate* (at most `MAX_CANDIDATES`, never dialled nor gossiped): each ping interval
   one MEMBERS message asks one configured peer about a batch of them (`ask`; candidates.py);
   it answers with its own rows for those in its table (`on_members`), and those rows,
   a configured peer's, are taken.  A candidate not vouched after `CANDIDATE_ASKS` asks is
   dropped (`members_unvouched`).  A peer that speaks to us directly joins (rule 4): over TCP
   its address was confirmed by dialling it back before any of its messages was read
   (node/tcp.py).  So a MEMBERS flood from anyone but a configured peer adds nobody and makes
   nobody dial a fake address; vouching costs two messages per batch, not four per address.
   A PING_REQ is relayed only to members of the relay's table (`on_ping_req`), never to a claim.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass

from ..crdt.replica import Replica
from .authority import Authority
from .candidates import Candidates
from .config import GossipConfig
from .messages import (
    MAX_MEMBER_ROWS,
    Ack,
    MemberRow,
    Members,
    Ping,
    PingReq,
    Send,
)
from .peer import ALIVE, DEAD, SUSPECT, PeerInfo, RoundTrips, members_scale

MAX_FORGOTTEN = 1024  # moved-away addresses remembered (rule 6)
DEAD_PING_SECONDS = 30.0  # a peer dead for t seconds is re-pinged with chance min(1, 30 / t)
CONFIGURED_PING_SECONDS = 10.0  # ...but a dead seed or origin at least this often
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2}


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    deadline: float
    indirect: bool
    sent: float = 0.0


class Membership:
    """The member table plus the SWIM prober of one node (pure: the caller passes `now`)."""

    def __init__(
        self,
        address: str,
        role: str,
        config: GossipConfig,
        rng: random.Random,
        counters: Counter[str],
        authority: Authority | None = None,
        replica: Replica | None = None,
    ) -> None:
        """`authority`: the node's (see authority.py); alone, an edge's trusting no origin.
        `replica`: the node's, whose watermark and purge mark pings and acks carry."""
        self.address = address
        self.replica = replica if replica is not None else Replica()
        if authority is None:
            authority = Authority(role, self.replica, (), counters)
        self.authority = authority
        self.role = role
        self.incarnation = 0
        self.boot = False  # this node takes a snapshot: its pings and acks say so (core sets it)
        self.config = config
        self.rng = rng
        self.counters = counters
        self.peers: dict[str, PeerInfo] = {}
        self._order: list[str] = []
        self._seq = 0
        self._probe: _Probe | None = None
        # my seq -> (asker, its seq, target, deadline): PING_REQs we relay
        self._relays: dict[int, tuple[str, int, str, float]] = {}
        self._updates: dict[str, int] = {}  # address -> remaining piggyback transmissions
        self.next_ping = 0.0
        self.next_members = 0.0
        self._version = 0
        self._cache_version = -1
        self._cache: tuple[list[str], list[str], list[str]] = ([], [], [])
        self._suspects: dict[str, float] = {}  # suspect address -> since
        self._dead_pinged: dict[str, float] = {}  # dead seed or origin -> when last re-pinged
        self.round_trips = RoundTrips()
        self._forgotten: dict[str, None] = {}  # addresses a member left (rule 6), oldest first
        self.configured: set[str] = set()  # seeds (and where they moved): they vouch (rule 8)
        self._candidates = Candidates(counters)  # unvouched addresses (rule 8)
        self._want_table: set[str] = set()  # configured edges not yet asked for their table
        self._ask_table: list[str] = []  # ... of which we heard from: asked at the next probe
        self._table_sent: dict[str, float] = {}  # member -> when it was last sent our table

    def start(self, now: float) -> None:
        """Arm the first probe and the first full-table exchange, at random offsets (nodes
        started together do not probe in step)."""
        cfg = self.config
        self.next_ping = now + cfg.ping_interval * self.rng.random()
        self.next_members = now + cfg.members_interval * (0.5 + self.rng.random())

    @property
    def wm(self) -> int:
        """This node's watermark (carried by its pings and acks)."""
        return self.replica.watermark

    @property
    def purged(self) -> int:
        return self.replica.purged

    # -- queries ---------------------------------------------------------------------------------

    def _lists(self) -> tuple[list[str], list[str], list[str]]:
        if self._cache_version != self._version:
            lists: tuple[list[str], list[str], list[str]] = ([], [], [])
            live, alive, dead = lists
            for a in sorted(self.peers):
                st = self.peers[a].state
                (dead if st == DEAD else live).append(a)
                if st == ALIVE:
                    alive.append(a)
            self._cache = (live, alive, dead)
            self._cache_version = self._version
        return self._cache

    def live(self) -> list[str]:
        """Peers not known dead (alive or suspect), sorted for determinism.  Do not modify."""
        return self._lists()[0]

    def alive(self) -> list[str]:
        """Peers known alive, sorted.  Do not modify."""
        return self._lists()[1]

    def live_origin(self) -> str | None:
        """An origin in the member table and not known dead (the first by address), or None."""
        for origin in sorted(self.authority.origins):
            p = self.peers.get(origin)
            if p is not None and p.state != DEAD:
                return origin
        return None

    def _set(self, p: PeerInfo, state: str, now: float) -> None:
        """Change a peer's state (keeps the suspect index and the cached lists in step)."""
        if p.state != state:
            p.state, p.since = state, now
            self._version += 1
        if state == SUSPECT:
            self._suspects[p.address] = p.since
        else:
            self._suspects.pop(p.address, None)

    def _new(self, p: PeerInfo) -> bool:
        """Add a row unless the table holds `max_members` already (then count and refuse it)."""
        if len(self.peers) >= self.config.max_members:
            self.counters["members_refused"] += 1
            return False
        if (
            not self.peers and self.round_trips.lowest == 0.0
        ):  # the first member: probe it now (rule 2)
            self.next_ping = min(self.next_ping, p.since)
        self.peers[p.address] = p
        self._version += 1
        if p.state == SUSPECT:
            self._suspects[p.address] = p.since
        return True

    def is_dead(self, address: str) -> bool:
        p = self.peers.get(address)
        return p is not None and p.state == DEAD

    def next_deadline(self) -> float:
        t = min(self.next_ping, self.next_members)
        if self._probe is not None:
            t = min(t, self._probe.deadline)
        if self._suspects:
            t = min(t, min(self._suspects.values()) + self.config.suspect_timeout)
        for *_, deadline in self._relays.values():
            t = min(t, deadline)
        return t

    # -- table updates ---------------------------------------------------------------------------

    def vouched(self, address: str) -> bool:
        """Whether this node may dial `address` (rule 8): configured, an origin or a member."""
        return address in self.peers or self._configured(address)

    def _configured(self, address: str) -> bool:
        return address in self.configured or self.authority.is_origin(address)

    def add_seed(self, address: str, now: float) -> None:
        self.configured.add(address)
        if address == self.address:
            return
        if not self.authority.is_origin(address):
            self._want_table.add(address)  # an origin sends its table unasked (rule 1)
        if address not in self.peers:
            role = self.authority.role_of(address)
            self._new(PeerInfo(address, role, since=now, last_seen=now))

    def forget(self, address: str) -> None:
        """The member at `address` moved away (rule 6): drop its row, ignore gossip about it."""
        if address == self.address:
            return
        if self.peers.pop(address, None) is not None:
            self._version += 1
            self.counters["members_moved"] += 1
        self._updates.pop(address, None)
        self._suspects.pop(address, None)
        self._table_sent.pop(address, None)
        self._forgotten[address] = None
        if len(self._forgotten) > MAX_FORGOTTEN:
            del self._forgotten[next(iter(self._forgotten))]

    def heard_from(self, address: str, now: float) -> list[Send]:
        """Direct evidence: `address` just sent us something.  Returns the table for a newcomer."""
        if address == self.address:
            return []
        if self._forgotten:
            self._forgotten.pop(address, None)
        self._candidates.discard(address)
        p = self.peers.get(address)
        out: list[Send] = []
        if self._want_table and address in self._want_table:
            self._want_table.discard(address)
            self._ask_table.append(address)  # rule 1
        if p is None:
            p = PeerInfo(address, self.authority.role_of(address), since=now)
            if not self._new(p):
                return out
            self._updates[address] = self._retransmits()
            self.counters["members_joined"] += 1
            if self.role == "origin":  # every edge takes its origin's rows (rules 1, 8)
                out.append(Send(address, Members(self.rows()).to_wire()))
        elif p.state != ALIVE:
            if p.state == DEAD:
                self.counters["peers_revived"] += 1
                # tell it it was declared dead: it refutes with a higher incarnation, and that
                # ALIVE row overrides the DEAD one everywhere else
                out.append(Send(address, Members([p.row()]).to_wire()))
            self._set(p, ALIVE, now)
            self._updates[address] = self._retransmits()
        p.last_seen = now
        return out

    def note_progress(self, address: str, wm: int, purged: int) -> tuple[int, int]:
        """Record a peer's watermark and purge mark claim, bounded (`Authority.claim`);
        returns the bounded pair."""
        wm, purged = self.authority.claim(address, wm, purged)
        p = self.peers.get(address)
        if p is not None:
            p.watermark = max(p.watermark, wm)
            p.purged = max(p.purged, purged)
        return wm, purged

    def merge_rows(self, rows: list[MemberRow], now: float, sender: str | None = None) -> None:
        """Fold member rows gossiped by `sender` into the table (SWIM precedence)."""
        authority = self.authority
        for addr, _claimed_role, inc, state in rows:
            if addr in self._forgotten:
                continue
            if addr != self.address and authority.is_origin(addr) and addr != sender:
                # only the origin speaks for itself; an edge's copy of its row that would
                # change ours (a suspicion, a higher incarnation) is refused and counted
                p = self.peers.get(addr)
                if sender is not None and (p is None or inc > p.incarnation or state != ALIVE):
                    authority.refuse(sender, "origin_row")
                continue
            role = authority.role_of(addr)
            if addr == self.address:
                if state != ALIVE and inc >= self.incarnation:
                    self.incarnation = inc + 1  # refute
                    self._updates[self.address] = self._retransmits()
                    self.counters["refutations"] += 1
                continue
            p = self.peers.get(addr)
            if p is None:
                if sender is not None and not self._configured(sender):
                    self._candidates.add(addr)  # rule 8
                    continue
                if self._new(PeerInfo(addr, role, inc, state, since=now)):
                    self._updates[addr] = self._retransmits()
                    if self._candidates.discard(addr):
                        self.counters["members_vouched"] += 1
                continue
            p.role = role
            if inc > p.incarnation or (inc == p.incarnation and _RANK[state] > _RANK[p.state]):
                p.incarnation = inc
                if state != p.state:
                    if state == DEAD:
                        self.counters["peers_dead"] += 1
                    self._set(p, state, now)
                self._updates[addr] = self._retransmits()

    def mark_left(self, address: str, now: float) -> None:
        """A graceful BYE: the peer is gone until it speaks again."""
        p = self.peers.get(address)
        if p is not None and p.state != DEAD:
            self._set(p, DEAD, now)
            self._updates[address] = self._retransmits()

    def rows(self) -> list[MemberRow]:
        """The whole table, this node first."""
        me: MemberRow = (self.address, self.role, self.incarnation, ALIVE)
        rows = [me, *(self.peers[a].row() for a in sorted(self.peers))]
        return rows[:MAX_MEMBER_ROWS]  # what a receiver accepts in one message

    def _retransmits(self) -> int:
        return 3 * max(1, math.ceil(math.log2(len(self.peers) + 2)))

    def _piggyback(self, limit: int = 8) -> list[MemberRow]:
        if not self._updates:
            return []
        out: list[MemberRow] = []
        for addr in heapq.nlargest(limit, self._updates, key=self._updates.__getitem__):
            if addr == self.address:
                out.append((self.address, self.role, self.incarnation, ALIVE))
            elif addr in self.peers:
                out.append(self.peers[addr].row())
            self._updates[addr] -= 1
            if self._updates[addr] <= 0:
                del self._updates[addr]
        return out

    # -- SWIM messages ---------------------------------------------------------------------------

    def on_ping(self, peer: str, msg: Ping, now: float) -> list[Send]:
        self._learn(peer, msg.inc, msg.wm, msg.purged, msg.boot)
        self.merge_rows(msg.members, now, peer)
        ack = Ack(msg.seq, self.wm, self.purged, self.incarnation, self.role, None)
        ack.members, ack.boot = self._piggyback(), self.boot
        return [Send(peer, ack.to_wire())]

    def on_ack(self, peer: str, msg: Ack, now: float) -> list[Send]:
        self.merge_rows(msg.members, now, peer)
        if msg.target is None:
            self._learn(peer, msg.inc, msg.wm, msg.purged, msg.boot)
            relay = self._relays.pop(msg.seq, None)
            if relay is not None and relay[2] == peer:
                asker, seq, target, _ = relay
                return [
                    Send(
                        asker,
                        Ack(seq, msg.wm, msg.purged, msg.inc, msg.role, target).to_wire(),
                    )
                ]
            subject = peer
        else:
            subject = msg.target
            if subject in self.peers:
                # a relay vouches for liveness only (and not an origin's incarnation)
                if not self.authority.is_origin(subject) or subject == peer:
                    self._learn(subject, msg.inc, None, None)
                self.heard_from(subject, now)
        probe = self._probe
        if probe is not None and probe.target == subject and probe.seq == msg.seq:
            self._probe = None
            self.counters["acks"] += 1
            p = self.peers.get(subject)
            if p is not None and not probe.indirect:
                self.round_trips.sample(p, now - probe.sent)
        return []

    def rtt(self, address: str) -> float:
        """The smoothed round trip to `address`; before its first probe, the smoothed round
        trip over every peer; 0.0 before any probe was answered."""
        return self.round_trips.smoothed(self.peers.get(address))

    def link_rtt(self, address: str) -> float:
        """The lowest round trip measured to `address`: the link's own delay, without the
        queueing or scheduling delays of a loaded host that inflate the smoothed one (what a
        batching window should scale with); before its first probe, the lowest to any peer;
        0.0 before any probe was answered."""
        return self.round_trips.link(self.peers.get(address))

    def on_ping_req(self, peer: str, msg: PingReq, now: float) -> list[Send]:
        if msg.target == self.address or len(self._relays) > 1000:
            return []
        if msg.target not in self.peers:  # relay only to members (rule 8), never to a claim
            self.counters["ping_reqs_unknown"] += 1
            return []
        self._seq += 1
        self._relays[self._seq] = (peer, msg.seq, msg.target, now + 2 * self.config.ping_timeout)
        return [Send(msg.target, self._ping_msg(self._seq))]

    def _learn(
        self, address: str, inc: int, wm: int | None, purged: int | None, boot: bool = False
    ) -> None:
        p = self.peers.get(address)
        if p is None:
            return
        if wm is not None:  # the peer's own PING or ACK (not a relay's): its own word
            p.boot = boot
        if inc > p.incarnation:
            p.incarnation = inc
            if p.state != ALIVE:
                self._set(p, ALIVE, p.since)
            self._updates[address] = self._retransmits()
        if wm is not None and purged is not None:
            self.note_progress(address, wm, purged)

    def _ping_msg(self, seq: int) -> dict[str, object]:
        return Ping(
            seq, self.wm, self.purged, self.incarnation, self.role, self._piggyback(), self.boot
        ).to_wire()

    def announce(self, address: str) -> Send:
        """A PING outside the probe rounds (seq 0: its ACK answers no probe) that tells
        `address` this node's watermark and whether it takes a snapshot (snapshot.py rule 3)."""
        return Send(address, self._ping_msg(0))

    def booting(self, address: str) -> bool:
        """Did `address` say (in its last PING or ACK) that it takes a snapshot?"""
        p = self.peers.get(address)
        return p is not None and p.boot

    # -- timers ----------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Send]:
        cfg = self.config
        out: list[Send] = []
        for seq in [s for s, r in self._relays.items() if r[3] <= now]:
            del self._relays[seq]
        probe = self._probe
        if probe is not None and probe.deadline <= now:
            p = self.peers.get(probe.target)
            if p is None or p.state == DEAD:
                self._probe = None
            elif not probe.indirect:
                helpers = [a for a in self.alive() if a != probe.target]
                self.rng.shuffle(helpers)
                for h in helpers[: cfg.indirect_probes]:
                    out.append(Send(h, PingReq(probe.seq, probe.target).to_wire()))
                    self.counters["ping_reqs"] += 1
                probe.indirect = True
                probe.deadline = now + 2 * cfg.ping_timeout
            else:
                self._probe = None
                if p.state == ALIVE:
                    self._set(p, SUSPECT, now)
                    self._updates[p.address] = self._retransmits()
                    self.counters["suspicions"] += 1
        for a, since in list(self._suspects.items()):
            if since + cfg.suspect_timeout <= now:
                self._set(self.peers[a], DEAD, now)
                self._updates[a] = self._retransmits()
                self.counters["peers_dead"] += 1
        if self.next_ping <= now:
            self.next_ping = now + cfg.ping_interval
            if self._probe is None:
                target = self._next_target()
                if target is not None:
                    self._seq += 1
                    self._probe = _Probe(target, self._seq, now + cfg.ping_timeout, False, now)
                    out.append(Send(target, self._ping_msg(self._seq)))
                    self.counters["pings"] += 1
            out.extend(self._ask_about_candidates())
            out.extend(Send(a, Members([], want=True).to_wire()) for a in self._ask_table)
            self._ask_table.clear()
            out.extend(self._ping_dead(now))
        if self.next_members <= now:
            self.next_members = now + cfg.members_interval * members_scale(len(self.peers) + 1)
            forget = [
                a
                for a in self._lists()[2]
                if self.peers[a].since + cfg.dead_forget <= now and not self._configured(a)
            ]
            for a in forget:
                del self.peers[a]
                self._updates.pop(a, None)
                self._table_sent.pop(a, None)
                self._version += 1
            live = self.alive()
            if live:
                out.append(Send(self.rng.choice(live), Members(self.rows()).to_wire()))
        return out

    def _ping_dead(self, now: float) -> list[Send]:
        """Re-ping dead peers (rule 3): an edge cut off from its origin for hours finds it again
        within CONFIGURED_PING_SECONDS of the heal."""
        dead = self._lists()[2]
        last = {
            a: self._dead_pinged.get(a, self.peers[a].since) for a in dead if self._configured(a)
        }
        due = {a for a, t in last.items() if now - t >= CONFIGURED_PING_SECONDS}
        if (
            dead
            and (a := self.rng.choice(dead))
            and self.rng.random() < DEAD_PING_SECONDS / max(1e-9, now - self.peers[a].since)
        ):
            due.add(a)
        self._dead_pinged = last | {a: now for a in due if a in last}
        self.counters["pings_dead"] += len(due)
        return [self.ping(a) for a in sorted(due)]

    def ping(self, address: str) -> Send:
        """A PING outside the probe cycle: its ACK brings the peer's marks (and revives it)."""
        self._seq += 1
        return Send(address, self._ping_msg(self._seq))

    def _ask_about_candidates(self) -> list[Send]:
        """Ask one configured peer for its rows about a batch of candidates (rule 8)."""
        if not self._candidates:
            return []
        vouchers = [a for a in self.alive() if self._configured(a)]
        if not vouchers:
            return []
        batch = self._candidates.batch(self.peers.__contains__)
        if not batch:
            return []
        self.counters["vouch_asks"] += 1
        return [Send(self.rng.choice(vouchers), Members([], batch).to_wire())]

    def on_members(self, peer: str, msg: Members, now: float) -> list[Send]:
        """A member table (or part of one); with `ask`, answer with our rows about those
        addresses (rule 8: we vouch for members of our table, and only to a member); with
        `want`, send our whole table, at most once per `members_interval` (rule 1)."""
        self.merge_rows(msg.members, now, peer)
        if peer not in self.peers:
            return []
        if msg.members and msg.members[0][0] == peer and self.authority.is_origin(peer):
            self._want_table.clear()  # an origin's whole table: no need for the seeds' (rule 1)
            self._ask_table.clear()
        out: list[Send] = []
        sent = self._table_sent.get(peer)
        if msg.want and (sent is None or sent + self.config.members_interval <= now):
            self._table_sent[peer] = now
            out.append(Send(peer, Members(self.rows()).to_wire()))
        if msg.ask:
            peers = self.peers
            rows = [peers[a].row() for a in msg.ask if a in peers]
            if rows:
                out.append(Send(peer, Members(rows).to_wire()))
        return out

    def _next_target(self) -> str | None:
        while self._order:
            a = self._order.pop()
            p = self.peers.get(a)
            if p is not None and p.state != DEAD:
                return a
        self._order = list(self.live())
        self.rng.shuffle(self._order)
        return self._order.pop() if self._order else None
