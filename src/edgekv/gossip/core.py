"""GossipNode: the sans-IO gossip protocol of one node (origin or edge).

Theory of operation
1. The node never does I/O and never reads a clock.  The driver calls `receive(peer, msg,
   now)` for every inbound gossip message, `tick(now, wall_ms)` whenever `now` reaches
   `next_deadline`, and `publish(items, covers, now)` for committed deltas; each returns the
   `Send`s to put on the network (best effort: any of them may be lost).  Randomness comes
   from the injected `random.Random`, so a seed replays a whole simulation.
2. `receive` validates the whole message first (`messages.parse`); a malformed message raises
   `RemoteProtocolError` before anything changes.  Then the sender is marked alive (direct
   evidence) and the message goes to the part that owns it (a table by message type: each
   part's `handlers()`, plus the core's own for messages that concern several parts):
     dissemination (PUSH, IHAVE, GRAFT, PRUNE)  - fresh writes along a Plumtree tree;
     catch-up (SYNC_REQ, SYNC_DATA, and GRAFT's answer) - everything after a watermark;
     anti-entropy (AE_*)                       - Merkle comparison, the guarantee;
     membership (PING, ACK, PING_REQ, MEMBERS, BYE) - SWIM failure detection.
3. Watermarks travel on PING/ACK/IHAVE/SYNC/AE messages.  A node that sees a peer ahead of it
   arms the graft timer (dissemination rule 3); a SYNC fallback starts a forced AE session.
4. Tombstone purge by causal stability: every `purge_interval` the origin takes as horizon
   the minimum of its watermark and the last watermark advertised by every member not known
   dead (each bounded by what the origin issued), and `Replica.purge(horizon, wall_ms)` drops
   tombstones at or below it.  A new purge mark goes to every live peer at once (IHAVE{purged})
   and also travels on the origin's PING/ACK/SYNC/AE messages; an edge purges up to the
   origin's own mark as soon as it hears it from the origin (never from another edge, which
   could lie), so every replica drops the same tombstones and digests stay comparable.  An
   edge that missed that notice and hears a peer claim a higher mark pings the origin (at
   most once per `ping_interval`): its ACK brings the origin's own mark.
   Expired values need the wall clock: the driver passes `tick(now, wall_ms=...)`; with
   `wall_ms=None` only tombstones are collected.  A node declared dead and returning is behind
   the origin's purge mark: its SYNC gets a fallback and anti-entropy removes what was deleted.
5. The parts share one `Context` (context.py: replica, config, rng, counters, members,
   authority).  Every state change (pushes, syncs, AE repairs, purges, removals as
   `state=None`) is recorded there (`Context.record`), never returned; `drain_changes()` hands
   them to the driver (watch, persistence, metrics).
6. Origin-signed writes: when the replica keeps proofs (`Replica.use_proofs`), every PUSH,
   SYNC_DATA and AE_STATES is verified against the origin's certificates before anything is
   applied (`crdt/proofs.py`); an unsigned state raises `ForgedState`, a RemoteProtocolError
   the driver counts per peer and answers by cutting the peer off.  Senders attach the
   certificates of what they send (the three chunkers call `ProofStore.add_material`).
7. Bootstrap (snapshot.py): a SYNC_REQ or GRAFT too far behind gets SNAP_OFFER instead of
   catch-up data; the node offered one streams a snapshot (SNAP_REQ/SNAP_DATA), during which
   it runs no anti-entropy (it answers none either: comparing an empty replica ships
   everything) and sends no grafts.  When the last chunk is in, `take_job()` hands the driver
   the bulk load to run (in a worker thread); `finish_job` installs the result.
8. The origin is the only authority (authority.py): everything a peer sends that would change
   a replica goes through `self.authority`, which at the origin refuses and counts it, and at
   an edge is the one place states are checked before they apply.  Who the origins are is
   configuration (`origins`), never a peer's claim.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..crdt.proofs import ForgedState
from ..crdt.replica import Change, Replica, StoreReplica
from ..crdt.state import Delta, State
from ..errors import InvalidInput
from .antientropy import AE_TYPES, AntiEntropy
from .authority import Authority
from .catchup import CatchUp
from .config import GossipConfig
from .context import Context, Handler
from .dissemination import Dissemination
from .membership import Membership
from .messages import (
    Ack,
    AeRoot,
    AeStates,
    AeStores,
    Bye,
    Graft,
    Members,
    Ping,
    PingReq,
    Push,
    Range,
    Send,
    SyncData,
    SyncReq,
    parse,
)
from .peer import DEAD, PeerInfo
from .snapshot import (
    SNAPSHOT_TYPES,
    SnapshotClient,
    SnapshotServer,
    StagedSnapshot,
    TreeJob,
    offer_instead,
    offer_sources,
    parse_offer,
    snap_offer,
)
from .snapshot_file import FileBase
from .wire import Message, MsgType

FORWARD_SYNC_LIMIT = 1000  # catch-up batches up to this many keys are relayed to the subtree


class GossipNode:
    """The gossip protocol of one node.  See the module docstring for the rules."""

    def __init__(
        self,
        address: str,
        replica: Replica,
        *,
        role: str = "edge",
        seeds: Sequence[str] = (),
        config: GossipConfig | None = None,
        rng: random.Random | None = None,
        origins: Sequence[str] = (),
    ) -> None:
        """`origins`: the origin addresses this node trusts (at an edge, what it was configured
        with; an origin counts itself).  Only messages from them carry the origin's watermark
        and purge mark."""
        if role not in ("edge", "origin"):
            raise InvalidInput(f"role must be 'edge' or 'origin', not {role!r}")
        if not isinstance(address, str) or not address:
            raise InvalidInput("a node needs a non-empty address")
        self.address = address
        self.role = role
        self.replica = replica
        self.seeds = [s for s in seeds if s != address]
        self.config = config if config is not None else GossipConfig()
        self.rng = rng if rng is not None else random.Random()
        self.counters: Counter[str] = Counter()
        if isinstance(origins, str):
            raise InvalidInput("origins must be a list of addresses, not one string")
        trusted = {*origins, address} if role == "origin" else set(origins) - {address}
        self.authority = Authority(role, replica, trusted, self.counters)
        cfg, rng, counters, auth = self.config, self.rng, self.counters, self.authority
        self.members = Membership(address, role, cfg, rng, counters, auth, replica)
        self.ctx = ctx = Context(address, role, replica, cfg, rng, counters, auth, self.members)
        self.dissemination = Dissemination(ctx)
        self.catchup = CatchUp(ctx)
        self.antientropy = AntiEntropy(ctx)
        self.snapshots = SnapshotServer(replica, self.config, self.counters)
        self.dissemination.takers = self.snapshots.takers  # shared: pushes batched to them
        self.bootstrap = SnapshotClient(replica, self.config, self.rng, self.counters, self.members)
        self.catchup.floor = self.bootstrap.floor  # the watermark a restart asks from
        self._handle = self._handlers()
        self._started = False
        self._next_purge = float("inf")
        self._purge_asked = float("-inf")  # rule 4: when the origin was last asked its mark

    # -- driver API ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Send]:
        """Join: contact the seeds, announce ourselves, ask a seed for catch-up."""
        cfg = self.config
        self._started = True
        for s in self.seeds:
            self.members.add_seed(s, now)
        self.members.start(now)
        self.antientropy.schedule(now)
        self._next_purge = now + cfg.purge_interval
        self.dissemination.fill()
        out: list[Send] = []
        for s in self.seeds:  # a ping carrying our row makes the seed gossip us
            out.append(
                Send(
                    s,
                    Ping(
                        0,
                        self.replica.watermark,
                        self.replica.purged,
                        self.members.incarnation,
                        self.role,
                        self.members.rows()[:1],
                    ).to_wire(),
                )
            )
        if self.role != "origin" and self.seeds:
            out.extend(self.catchup.request(now, self.rng.choice(self.seeds)))
        return out

    def forget(self, address: str, new: str | None = None) -> None:
        """The member at `address` now lives elsewhere (at `new`, when known): drop that address
        (membership rule 6).  An origin that moved stays the origin at its new address: the
        driver reports an origin's move only when the origin's own address answered as `new`."""
        authority = self.authority
        if new is not None and authority.is_origin(address) and new != self.address:
            authority.origins = authority.origins | {new}
            p = self.members.peers.get(new)
            if p is not None:
                p.role = "origin"
        if new is not None and address in self.members.configured:
            self.members.configured.add(new)  # a seed that answered under another address
        self.members.forget(address)
        self.dissemination.drop_gone()

    def may_dial(self, address: str) -> bool:
        """Whether the driver may open a connection to `address` (membership rule 8)."""
        return self.members.vouched(address)

    def leave(self, now: float) -> list[Send]:
        """Graceful goodbye: live peers mark this node dead at once."""
        bye = Bye().to_wire()
        return [Send(p, bye) for p in self.members.live()]

    @property
    def next_deadline(self) -> float:
        """When `tick` must next run (inf before `start`)."""
        if not self._started:
            return float("inf")
        return min(
            self.members.next_deadline(),
            self.dissemination.next_deadline(),
            self.catchup.next_deadline(),
            self.antientropy.next_deadline(),
            self.bootstrap.next_deadline(),
            self._next_purge,
        )

    def publish(
        self, items: list[tuple[str, str, Delta]], covers: list[tuple[int, int]], now: float
    ) -> list[Send]:
        """Committed deltas enter dissemination.

        At the origin they must already be applied to its replica (they were planned on it);
        they are queued for the eager peers, and the pushes of queues that are due at once (no
        push to that peer within its window, dissemination rule 1) are returned; the others
        leave at `tick` (call it at `next_deadline`).  At an edge (read-your-writes: the
        origin's answer to a forwarded write) they are only applied: the origin's own push
        reaches everyone, and an edge re-pushing them would only cause duplicates.
        """
        d = self.dissemination
        d.publish(list(items), list(covers), now)
        if self.role == "origin" and d.next_deadline() <= now:
            return d.tick(now)  # not a turn of the driver's timer later
        return []

    def note_link_rtt(self, peer: str, rtt: float) -> None:
        """The driver measured the link to `peer` (a TCP connection's lowest round trip): it
        sizes the push window toward it (dissemination rule 1)."""
        self.dissemination.note_link_rtt(peer, rtt)

    def receive(self, peer: str, message: Message, now: float) -> list[Send]:
        """Handle one inbound gossip message.

        A malformed message raises `RemoteProtocolError` before anything changes.  A well-formed
        one whose states conflict with ours (equal seq, different value: corruption or forgery)
        also raises it; the valid joins before the conflicting item stay applied.
        """
        t = message.get("t") if type(message) is dict else None
        if type(t) is int and t in SNAPSHOT_TYPES:  # (a list there is unhashable: parse says so)
            out = self.members.heard_from(peer, now)
            out.extend(self._on_snapshot(peer, message, now))
            return out
        msg = parse(message)
        if self.replica.proofs is not None and isinstance(msg, Push | SyncData | AeStates):
            self._verify(peer, msg)
        before = len(self.members.peers)
        out = self.members.heard_from(peer, now)
        if isinstance(msg, AE_TYPES) and (self.bootstrap.active or self.bootstrap.settling):
            self.counters["ae_ignored_bootstrapping"] += 1
            return out
        out.extend(self._handle[type(msg)](peer, msg, now))
        if len(self.members.peers) != before:
            self.dissemination.fill()
        if self.role != "origin" and self.authority.origin_purged > self.replica.purged:
            out.extend(self._purge(None))  # follow the origin's purge mark at once
        return out

    def tick(self, now: float, wall_ms: int | None = None) -> list[Send]:
        """Run every timer due at `now`.  `wall_ms` (ms since the epoch) enables TTL collection."""
        if not self._started:
            return []
        before = len(self.members.peers)
        out = self.members.tick(now)
        if len(self.members.peers) < before:  # dead members forgotten
            self.dissemination.drop_gone()
        out.extend(self.dissemination.tick(now))
        out.extend(self.catchup.tick(now))
        out.extend(self.bootstrap.tick(now))
        self.snapshots.busy = self.bootstrap.whole
        out.extend(self._announce_boot())
        if self.bootstrap.active:  # rule 6: no anti-entropy, no grafts while bootstrapping
            self.antientropy.hold(now + 1.0)
            self.dissemination.pause_grafts(now + self.config.snapshot_timeout)
        elif self.bootstrap.settling:  # its trees are being built (snapshot.py rule 7)
            self.antientropy.hold(now + 1.0)
        out.extend(self.antientropy.tick(now))
        if self._next_purge <= now:
            self._next_purge = now + self.config.purge_interval
            out.extend(self._purge(wall_ms))
        if self.authority.purge_hint and now >= self._purge_asked + self.config.ping_interval:
            self.authority.purge_hint = False  # rule 4: a peer says the origin purged further
            self._purge_asked = now
            origin = self.members.live_origin()
            if origin is not None:
                out.append(self.members.ping(origin))
                self.counters["purge_asks"] += 1
        return out

    def defer_trees(self, now: float) -> None:
        """The replica's unbuilt Merkle trees (a restart's load) become a job for `take_job`,
        built off the event loop once this node is caught up (or after `sync_timeout`) while
        gossip runs; anti-entropy waits for them (snapshot.py rule 10)."""
        self.bootstrap.defer_trees(now + self.config.sync_timeout)

    def expect_base(self, wm: int) -> None:
        """A restart's file, reflecting every seq up to `wm`, loads while gossip runs: catch-up
        and snapshots ask from `wm` meanwhile, and the node is not ready before
        `install_base` (snapshot.py rule 11).  Call before `start`."""
        self.bootstrap.expect_base(wm)

    def join_file(self, file: FileBase) -> bool:
        """The file's rows, read off the loop but not indexed: built with its delta into one
        replica if that delta is fully staged (True), else (False) the driver indexes them
        and calls `install_base` (snapshot.py rule 11)."""
        return self.bootstrap.join_file(file)

    def install_base(
        self,
        loaded: Replica | None,
        copies: list[tuple[StoreReplica, dict[str, State]]],
        now: float,
    ) -> list[Send]:
        """The file's replica (loaded off the loop, its trees deferred: `copies` of its states
        to build them from; `None` if the file was unreadable) joins the live replica
        (snapshot.py rule 11)."""
        boot = self.bootstrap
        changes, out = boot.install_base(loaded, copies, now)
        self.ctx.record(changes)
        self.ctx.record(boot.take_applied())
        if not boot.active and boot.finished_at == now:  # a delta ended: the rest by catch-up
            self.dissemination.resume_grafts()
            out.extend(self.catchup.request(now))
        return out

    @property
    def staging(self) -> bool:
        """A whole snapshot is being received (the driver keeps the GC off its data)."""
        return self.bootstrap.whole

    def take_job(self) -> StagedSnapshot | TreeJob | None:
        """Work for the driver to run off the event loop: a received snapshot to bulk-load
        (`StagedSnapshot.build`, pure), then its Merkle trees (`TreeJob.build`, pure); give the
        result to `finish_job`."""
        return self.bootstrap.take()

    def finish_job(self, job: StagedSnapshot | TreeJob, result: Any, now: float) -> list[Send]:
        """Install a built snapshot (or give up on a failed build), then catch up the rest;
        or install its trees."""
        if isinstance(job, TreeJob):
            self.bootstrap.install_trees(result)
            return []
        if isinstance(result, BaseException):
            self.counters["snapshot_build_failures"] += 1
            self.bootstrap.abort()
            return self.catchup.request(now)
        self.ctx.record(self.bootstrap.install(result, job, now))
        self.dissemination.resume_grafts()
        return self.catchup.request(now)  # what was written meanwhile: a small gap

    def drain_changes(self) -> list[Change]:
        """State changes applied since the last call (removals have `state=None`)."""
        return self.ctx.drain()

    def peers(self) -> dict[str, PeerInfo]:
        """address -> what this node knows of that peer (a copy)."""
        return {
            a: PeerInfo(
                p.address,
                p.role,
                p.incarnation,
                p.state,
                p.since,
                p.watermark,
                p.purged,
                p.last_seen,
                p.rtt,
                p.rtt_min,
            )
            for a, p in self.members.peers.items()
        }

    @property
    def watermark(self) -> int:
        return self.replica.watermark

    @property
    def origin_watermark(self) -> int:
        """At an edge: the highest watermark the origin itself announced to this node (0 until
        it has); at the origin: its own watermark."""
        if self.role == "origin":
            return self.replica.watermark
        return self.authority.origin_wm

    def rejections(self) -> dict[str, dict[str, int]]:
        """peer -> reason -> how many items this node refused from it (authority.py)."""
        return {peer: dict(c) for peer, c in self.authority.refused.items()}

    def purge_horizon(self) -> int:
        """The seq at or below which tombstones may go.

        At the origin: the highest seq every member not known dead has acknowledged (and the
        origin has).  At an edge: the origin's own purge mark, heard from the origin; no other
        peer's mark counts, so all replicas drop the same tombstones and a liar drops none.
        """
        if self.role != "origin":
            return min(self.authority.origin_purged, self.replica.watermark)
        h = self.replica.watermark
        for p in self.members.peers.values():
            if p.state != DEAD:
                h = min(h, p.watermark)
        return h

    # -- internals -------------------------------------------------------------------------------

    def _verify(self, peer: str, msg: Push | SyncData | AeStates) -> None:
        """Check every state of `msg` against the origin's certificates (rule 6); raises
        `ForgedState` (nothing applied) when one is not signed."""
        proofs = self.replica.proofs
        assert proofs is not None
        current = self.replica.state
        try:
            if isinstance(msg, AeStates):
                store = msg.store
                items = [(store, k, d) for k, d in msg.states]
                ok = proofs.verify(items, msg.proofs, current)
                if len(ok) != len(items):
                    msg.states = [(k, d) for _, k, d in ok]
            else:
                ok = proofs.verify(msg.items, msg.proofs, current)
                if len(ok) != len(msg.items):
                    msg.items = ok
                    msg.covers = []  # a skipped Bloom delta: claim no seq (AE repairs it)
                    if isinstance(msg, Push):
                        msg.again, msg.again_n = [], 0
        except ForgedState:
            self.counters["rejected_forged"] += 1
            raise

    def _purge(self, wall_ms: int | None) -> list[Send]:
        """Purge up to the horizon; the origin announces a new purge mark to every peer."""
        horizon = self.purge_horizon()
        before = self.replica.purged
        if horizon > before or wall_ms is not None:
            removed = self.replica.purge(horizon, wall_ms if wall_ms is not None else 0)
            if removed:
                self.counters["purged"] += len(removed)
                self.ctx.record(removed)
        if self.replica.purged > before:
            return self.dissemination.announce_purge()
        return []

    def _ahead(self, peer: str, wm: int, now: float) -> None:
        """A peer's watermark (ping, ack, AE): catch up if we are still behind a while later.

        The claim as sent is only a hint here: it arms a graft, which a liar can make fail only
        a few times (`dissemination.MAX_GRAFT_ROUNDS`); what is recorded is bounded."""
        self.dissemination.learn_exists(peer, wm, now, self.config.ping_interval)

    def _announce_boot(self) -> list[Send]:
        """snapshot.py rule 3: when this node starts or ends taking a snapshot, the origin
        hears it at once (its pings and acks say it too), and batches its pushes meanwhile."""
        members = self.members
        boot = self.bootstrap.active
        if boot == members.boot:
            return []
        members.boot = boot
        return [members.announce(o) for o in sorted(self.authority.origins) if o in members.peers]

    def _on_snapshot(self, peer: str, message: Message, now: float) -> list[Send]:
        t = message["t"]
        self.snapshots.busy = self.bootstrap.whole
        if t == MsgType.SNAP_REQ:
            return self.snapshots.on_req(peer, message, now)
        if t == MsgType.SNAP_DATA:
            if self.role == "origin":  # it never bootstraps: refused, counted
                self.authority.refuse(peer, "states_ignored")
                return []
            boot = self.bootstrap
            out = boot.on_data(peer, message, now)
            self.ctx.record(boot.take_applied())
            if not boot.active and boot.finished_at == now:  # a delta ended: the rest by catch-up
                self.dissemination.resume_grafts()
                out.extend(self.catchup.request(now))
            return out
        self.catchup.answered(parse_offer(message).rid)
        if self.role == "origin":
            return []
        out = self.bootstrap.on_offer(peer, message, now)
        if self.bootstrap.active:
            self.dissemination.pause_grafts(now + self.config.snapshot_timeout)
        return out

    def _offer_or_answer(self, peer: str, rid: int, wm: int) -> list[Send]:
        """Catch-up for a small gap; a snapshot offer for a large one (snapshot.py rule 1)."""
        replica = self.replica
        changed = offer_instead(replica, wm, self.config)
        if changed:
            self.counters["snapshot_offers_sent"] += 1
            wm = replica.watermark
            sources = [
                a for a in offer_sources(self.members, wm, self.config, self.rng) if a != peer
            ]
            return [Send(peer, snap_offer(rid, wm, len(replica), sources, changed))]
        return self.catchup.answer(peer, rid, wm)

    def _handlers(self) -> dict[type, Handler]:
        """Message type -> what handles it: the parts' own, and the core's where a message
        concerns more than one part."""
        return {
            **self.dissemination.handlers(),
            **self.antientropy.handlers(),
            Graft: self._on_graft,
            SyncReq: self._on_sync_req,
            SyncData: self._on_sync_data,
            Ping: self._on_ping,
            Ack: self._on_ack,
            PingReq: self.members.on_ping_req,
            Members: self.members.on_members,
            Bye: self._on_bye,
            AeRoot: self._on_ae_root,
            AeStores: self._on_ae_stores,
        }

    def _on_graft(self, peer: str, msg: Graft, now: float) -> list[Send]:
        wm, _ = self.members.note_progress(peer, msg.wm, msg.purged)
        self.dissemination.on_graft(peer)
        return self._offer_or_answer(peer, 0, wm)

    def _on_sync_req(self, peer: str, msg: SyncReq, now: float) -> list[Send]:
        wm, _ = self.members.note_progress(peer, msg.wm, msg.purged)
        return self._offer_or_answer(peer, msg.rid, wm)

    def _on_ping(self, peer: str, msg: Ping, now: float) -> list[Send]:
        if self.authority.is_origin(peer):  # the origin's own figure, never a claim
            self.bootstrap.note_origin(msg.wm)
        out = self.members.on_ping(peer, msg, now)
        self._ahead(peer, msg.wm, now)
        return out

    def _on_ack(self, peer: str, msg: Ack, now: float) -> list[Send]:
        if self.authority.is_origin(peer) and msg.target is None:
            self.bootstrap.note_origin(msg.wm)
        out = self.members.on_ack(peer, msg, now)
        if msg.target is None:  # a relayed ACK's watermark is a third party's claim
            self._ahead(peer, msg.wm, now)
        return out

    def _on_bye(self, peer: str, msg: Bye, now: float) -> list[Send]:
        self.members.mark_left(peer, now)
        return []

    def _on_sync_data(self, peer: str, msg: SyncData, now: float) -> list[Send]:
        if self.role == "origin":  # it never asks for catch-up: refused, counted
            self.authority.apply(peer, "SYNC_DATA", msg.items, msg.covers)
            return []
        mark = self.ctx.mark()
        self.catchup.on_data(peer, msg)
        changes = self.ctx.since(mark)
        if msg.fallback:
            # catch-up cannot help (the peer purged past our watermark): anti-entropy repairs
            # us; grafts would only bring more fallbacks meanwhile
            self.dissemination.pause_grafts(now + self.config.ae_timeout)
            return self.antientropy.start(peer, now, force=True)
        if changes and len(changes) <= FORWARD_SYNC_LIMIT:
            items = [(c.store, c.key, c.state) for c in changes if c.state is not None]
            covers: list[Range] = msg.covers if msg.last else []
            self.dissemination.forward_new(items, covers, peer, now)
        self.dissemination.check_gap(peer, now)
        return []

    def _on_ae_root(self, peer: str, msg: AeRoot, now: float) -> list[Send]:
        self.members.note_progress(peer, msg.wm, msg.purged)
        self._ahead(peer, msg.wm, now)
        return self.antientropy.on_root(peer, msg, now)

    def _on_ae_stores(self, peer: str, msg: AeStores, now: float) -> list[Send]:
        self.members.note_progress(peer, msg.wm, msg.purged)
        self._ahead(peer, msg.wm, now)
        return self.antientropy.on_stores(peer, msg, now)
