"""Bootstrap by streamed snapshot: a node far behind gets whole stores in key order, in chunks.

This module holds the protocol's rules and the receiver; the responder (offers, sessions) is
in snapshot_server.py, the messages in snapshot_wire.py, the builds run off the event loop
(bulk load, trees) in snapshot_build.py.

Why: catch-up by watermark sends every change after the requester's watermark in one answer;
for a fresh node that is the whole replica, built in one synchronous call (seconds of a
blocked event loop at the responder, answers slower than `sync_timeout`, retried elsewhere and
built again).  A snapshot instead moves the replica as a flow-controlled stream any peer can
serve and a receiver loads in bulk.

Theory of operation
1. Switch.  A responder whose catch-up answer would hold more than `snapshot_from_keys`
   changed keys (counted from its change logs by bisection: `changed_since`) answers
   SNAP_OFFER{rid, wm, keys, sources} instead (`offer_instead`).  Small gaps keep catch-up by
   watermark: its answer is one synchronous call at the responder, so the switch point is
   where that call would exceed the put-latency budget (benchmarks/results/bootstrap.md).
2. Source and trust.  On an offer the receiver picks a source: a live edge whose advertised watermark is
   within `snapshot_lag` of the offer's (random among them: ten joining edges spread over the
   caught-up edges), else one of the caught-up edges the offer names (`sources`, what the
   offerer knows, live ones first, then suspected ones: a node that knows only the origin
   still spreads the load), else a caught-up edge it suspects (a busy edge misses acks;
   a dead one costs a timeout), else the peer that offered (often the origin).  With origin-signed writes on (`replica.proofs`,
   crdt/proofs.py) a chunk carries the certificates of its states that the session has not
   sent yet ("proofs", from the sender's proof store: states it cannot prove are not sent, and
   the snapshot then claims no seq) and the receiver verifies every state before staging it
   (the certificates join its proof store, which counts staged states as live until the
   install), so a chunk served by an edge is checked like one from the origin; a forged one
   abandons that source (rule 6).
3. Flow control.  SNAP_REQ{sid, after, credit, open} opens (open: true) session `sid`
   starting after cursor `after` ([store, key]; null = the beginning) or continues it, and
   grants `credit` more chunks (credit for an unknown session is ignored: it ended).
   The receiver grants `snapshot_window` at first, then one per chunk received, so at most a
   window of chunks is in flight; the responder builds a chunk only when granted one, so its
   work per event is at most a few chunks of `snapshot_chunk_bytes`, and it holds no chunk
   after sending it.  Sessions are few (`MAX_SESSIONS`) and expire when idle.  Pushes wait for
   the longest window to a peer with a session here (`SnapshotServer.takers`) or that said in
   its own PING or ACK that it takes one (`boot`, sent to the origin as it starts and ends).
4. Chunks.  SNAP_DATA{sid, n, wm, purged, total, store, keys, regs, others, last, proofs?}
   holds consecutive keys of one store in key order (stores in name order, metadata ""
   first), as columns (snapshot_wire.py): `regs` has each key's register bytes, or b"" for a
   key whose state is the next item of `others` (a strict CBOR delta).  `wm`/`purged` are the responder's watermark and purge mark when the session began;
   `total` its key count (for progress); `last` ends the stream.
5. Consistency.  Each chunk holds the responder's states at the time it is built, so every
   state sent reflects every seq up to the session's `wm`.  The snapshot claims covered
   [1, min wm over its sessions]: writes made meanwhile arrive by the normal paths (pushes,
   then a catch-up from that watermark) and are joined.  A key created during the transfer
   behind the cursor is such a write.
6. Resume.  A source silent for `snapshot_timeout` (or answering busy) is abandoned: a new
   session with another peer starts after the last key staged (once every caught-up edge
   was tried, one that only timed out is tried again before the offerer).  Each timeout in a
   transfer doubles the silence allowed after it (at most 8x `snapshot_timeout`), as TCP
   backs off its retransmission timer: on hosts so loaded that a chunk takes longer than
   `snapshot_timeout`, every resume opened another session whose first chunk came too late
   again (ten edges joining on one loaded core made no progress for minutes, their sources
   serving sessions already abandoned).  Chunks of an old session are ignored; one that is
   not the chunk due (n) resumes at once, the source unblamed (it dropped chunks: its queue
   to this node was full; as a protocol error it cut off a source on a loaded host).  A
   malformed chunk raises RemoteProtocolError after the session is abandoned the same way:
   what was staged before stays (it was checked).
7. Load.  Chunks are staged per store (dicts in key order).  After the last one the driver
   runs `StagedSnapshot.build` (pure, for a worker thread): one bulk load into a new replica,
   its Merkle trees and change logs left unbuilt, and copies of its states to build them
   from (`Replica.defer_trees`).  `install` then adopts it in the live replica, joining what
   arrived by gossip meanwhile (crdt/bulk.py rule 7): reads need no tree.  The trees and the
   logs' entries (crdt/changelog.py rule 5) come next, off the loop (`TreeJob`), once the
   catch-up that follows has made the node ready (or after `sync_timeout`), as in rule 10;
   until then each store logs its tree changes (crdt/treebuild.py `TreeLog`, replayed on the
   built tree) and anti-entropy waits (`settling`), since its roots would build the trees on
   the loop.  Measured at 1M keys: the trees were about 55% of the receiver's CPU.
8. Readiness.  `target` is the origin's watermark as first heard after joining; the node is
   ready when no snapshot is under way and its watermark has reached the target.
9. Delta.  A node that already holds a prefix (watermark w > 0: restarted, long away, or just
   past a snapshot while writes went on) asks with SNAP_REQ{since: w}: the same stream, but
   only keys whose state is newer than w, joined into the live replica chunk by chunk (it is
   not empty, so no bulk load; each chunk's apply is bounded like its encoding).  It claims
   [1, min wm] at the end, as a whole snapshot does.  A large delta (past `delta_stage_from`
   keys; measured: 500,000 changed keys of a 1M-key edge took 98.5 s with 15 s of CPU when
   each went through `Replica.apply`) stages the rest like a whole snapshot and ends with a
   rebuild (`StagedSnapshot.base`): copies of the live stores' dicts taken on the event loop,
   joined with the staged states and bulk-loaded in a worker thread, then adopted like a whole
   snapshot (rule 7; watchers are reset and the file rewritten, as after one).  If a source's purges removed something
   past w (`dropped`, its replica's `removed_high`: a deletion the delta cannot show), the
   receiver restarts as a whole snapshot; a purge mark that only moved (nothing removed: no
   deletes, or their tombstones gone before w) keeps the delta.  So a gap
   above the switch point costs the changed keys, never the whole store twice.
10. Restart.  A node restarted from its file loads its states without Merkle trees (reads
   need none) and starts gossip at once: `defer_trees` makes the trees a job like rule 7's,
   handed out only once the node is ready and no snapshot is under way (or after
   `sync_timeout` if nothing is heard); anti-entropy waits for it (snapshot_file.py rule 6).
11. A restart overlaps its file's load with its delta: gossip starts on the file's watermark
   (`expect_base`), the delta is staged while the rows load, and the two are joined
   (`install_base`, `join_file`: snapshot_file.py).
12. A restart whose delta is large (`snapshot_whole_from` of the store) takes the whole store
   instead if an edge serves it: the file is dropped (snapshot_file.py rule 5).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..crdt.bulk import adopt
from ..crdt.proofs import ForgedState, state_seqs
from ..crdt.replica import Change, Replica
from ..crdt.state import State
from ..errors import RemoteProtocolError
from .config import GossipConfig
from .fields import MAX_SEQ
from .membership import Membership
from .messages import Send
from .peer import ALIVE
from .snapshot_build import BuiltIndexes, Copies, StagedSnapshot, TreeJob, join_into, live_copy
from .snapshot_file import FileBase, add_file_certs, adopt_file, file_seqs
from .snapshot_server import SnapshotServer, choose_source, offer_instead, offer_sources
from .snapshot_wire import (
    MAX_CREDIT,
    SNAPSHOT_TYPES,
    Chunk,
    Cursor,
    Offer,
    parse_chunk,
    parse_offer,
    snap_offer,
    snap_req,
)
from .wire import Message

PATIENCE_DOUBLINGS = 3  # rule 6: a transfer's silence allowed grows to 8x snapshot_timeout
DELTA_STAGE_FROM = 20_000  # a delta's keys past this many are staged and rebuilt (rule 9)

__all__ = ["SNAPSHOT_TYPES", "SnapshotClient", "SnapshotServer", "StagedSnapshot", "TreeJob"]
__all__ += ["offer_instead", "offer_sources", "parse_offer", "snap_offer"]


@dataclass(slots=True)
class Progress:
    keys: int = 0
    bytes: int = 0
    total: int = 0
    started: float = 0.0
    resumes: int = 0
    sources: list[str] = field(default_factory=list)


class SnapshotClient:
    """The receiver side: choose a source, stream, stage, hand over for building (rules 2-8)."""

    IDLE, CHOOSING, RUNNING, BUILDING, LOADING = "idle", "choosing", "running", "built", "loading"

    def __init__(
        self,
        replica: Replica,
        config: GossipConfig,
        rng: random.Random,
        counters: Any,
        members: Membership,
    ) -> None:
        self.replica = replica
        self.config = config
        self.rng = rng
        self.counters = counters
        self.members = members
        self.state = self.IDLE
        self.target: int | None = None  # the origin's watermark as first heard (rule 8)
        self.progress = Progress()
        self._offer: tuple[str, int] = ("", 0)  # (offering peer, its watermark)
        self._hints: list[str] = []  # caught-up edges the offer named
        self._source = ""
        self._timeouts = 0  # sources that timed out in this transfer (rule 6: patience)
        self._sid = 0
        self._n = 0
        self._cursor: Cursor = None
        self._deadline = float("inf")
        self._tried: set[str] = set()
        self._refused: set[str] = set()  # sources that answered busy or sent a bad chunk
        self._wm = MAX_SEQ
        self._purged = 0
        self._groups: dict[str, dict[str, State]] = {}
        self._tree_job: TreeJob | None = None  # rule 7: to hand out after the install
        self._trees_out = 0  # tree jobs handed out, not yet installed
        self._trees_held_until: float | None = None  # a restart's tree job waits (rule 10)
        self._since = 0  # > 0: a delta snapshot (rule 9)
        self._whole_ok = False  # rule 12: the transfer's first edge source serves it whole
        self._large_delta = False  # rule 11: the offer announced more than delta_stage_from
        self.delta_stage_from = DELTA_STAGE_FROM
        self.whole_share = config.snapshot_whole_from  # rule 12
        self._delta_keys = 0  # keys a delta joined into the live replica chunk by chunk
        self.applied: list[Change] = []
        self.finished_at: float | None = None
        self.whole_from: str | None = None  # the source of the last whole snapshot installed
        self.base_wm: int | None = None  # rule 11: a restart's file still loading (its wm)
        # rule 11: the file's rows (store -> key -> state), covered ranges and purge mark,
        # read while its delta was fully staged: built with it into one replica
        self._file: FileBase | None = None
        self._file_building = False  # ... being built with it

    @property
    def active(self) -> bool:
        return self.state != self.IDLE

    @property
    def settling(self) -> bool:
        """Trees of the replica are being built elsewhere, or its file is still loading (rule
        11): no anti-entropy meanwhile."""
        return self._tree_job is not None or self._trees_out > 0 or self.base_wm is not None

    def defer_trees(self, until: float) -> None:
        """Rule 10: the trees a restart's load left unbuilt are built as a job, like a
        snapshot's, handed out once this node is caught up and no snapshot is under way (or
        at `until` if it hears nothing); gossip, catch-up and snapshots run meanwhile."""
        copies = self.replica.defer_trees()
        if copies:
            self._tree_job = TreeJob(copies, sum(len(states) for _, states in copies))
            self._trees_held_until = until

    def _trees_held(self) -> bool:
        """Rule 10: a restart's tree job waits while the node is behind or taking a snapshot."""
        if self._trees_held_until is None:
            return False
        if self.active or not (self.ready() or self._trees_held_until == float("inf")):
            return True
        self._trees_held_until = None
        return False

    def ready(self) -> bool:
        return (
            self.target is not None
            and not self.active
            and self.base_wm is None
            and self.replica.watermark >= self.target
        )

    def floor(self) -> int:
        """The watermark this node asks from (catch-up, delta): its replica's, or while its
        file loads (rule 11) the file's."""
        wm = self.replica.watermark
        return wm if self.base_wm is None else max(wm, self.base_wm)

    def expect_base(self, wm: int) -> None:
        """Rule 11: a restart's file (every seq up to `wm`) loads; `install_base` joins it."""
        self.base_wm = wm

    def wants_file(self) -> bool:
        """Rule 11: is a restart's file still to be loaded (False once dropped: rule 12)?
        Asked by the loading thread between blocks of rows."""
        return self.base_wm is not None

    @property
    def file_pending(self) -> bool:
        """Rule 11: a restart's file is not in the live replica yet."""
        return self.base_wm is not None or self._file is not None or self._file_building

    def join_file(self, file: FileBase) -> bool:
        """Rule 11 (snapshot_file.py rule 3): the file's rows, read; True if they are built
        with the delta (or dropped), False if the caller indexes them for `install_base`."""
        if self.base_wm is None:
            return True
        if self.state not in (self.CHOOSING, self.RUNNING, self.BUILDING) or not self._since:
            return False
        if self._staged_small() and not self._large_delta:  # (indexed now, served at once)
            return False
        self._file = file  # (`base_wm` stays: the floor, until the build takes the file)
        add_file_certs(self.replica.proofs, file.certs)
        return True

    def install_base(
        self, loaded: Replica | None, copies: Copies, now: float
    ) -> tuple[list[Change], list[Send]]:
        """Rule 11: the indexed file (None: unreadable) joins the live replica; the joined
        changes and what to send.  `copies`: states to build its trees from (a job)."""
        if self.base_wm is None:  # dropped: a whole snapshot replaces it
            return [], []
        self.base_wm = None
        if loaded is None:
            if self.active and self._since:  # that delta has no prefix to join: take it whole
                return [], self._restart_whole(now)
            return [], []
        changes = adopt_file(self.replica, loaded, self._live_seqs if self.active else None)
        if copies and self._tree_job is None:  # built once caught up (rule 10)
            self._tree_job = TreeJob(copies, sum(len(states) for _, states in copies))
            self._trees_held_until = now + self.config.sync_timeout
        if self.state == self.BUILDING and self._since and self._staged_small():
            self._finish_delta(now)
        return changes, []

    def note_origin(self, wm: int) -> None:
        self.target = wm if self.target is None else self.target

    def next_deadline(self) -> float:
        d = self._deadline if self.state in (self.CHOOSING, self.RUNNING) else float("inf")
        held = self._trees_held_until
        return d if held is None else min(d, held)

    def on_offer(self, peer: str, m: Message, now: float) -> list[Send]:
        offer = parse_offer(m)
        wm, floor = offer.wm, self.floor()
        if self.active or wm <= floor:
            return []
        self.counters["snapshot_offers"] += 1
        self._offer = (peer, wm)
        self._since = floor  # rule 9: a node holding a prefix takes a delta (rule 11: its file)
        # rule 12: the whole store instead, if an edge serves it (decided with the source)
        self._whole_ok = bool(floor) and self.base_wm is not None and self._whole_instead(offer)
        self._large_delta = offer.changed > self.delta_stage_from  # rule 11: keep the file
        if not floor:
            self.base_wm = None  # rule 11: an empty file is no prefix; the whole one replaces it
        self._hints = [a for a in offer.sources if a != self.members.address]
        self.progress = Progress(total=offer.keys, started=now)
        self.state = self.CHOOSING
        # Rule 2: wait a moment for the seeds' acks (their watermarks) unless we know them all
        if all(p.watermark for p in self.members.peers.values() if p.state == ALIVE):
            return self._start(now)
        self._deadline = now + self.config.ping_timeout / 4
        return []

    def _whole_instead(self, offer: Offer) -> bool:
        """Rule 12: is a restart's delta so large that the whole store is faster to take than
        the file to read (its load still under way)?"""
        return offer.changed >= self.whole_share * offer.keys > 0

    def _drop_file_for(self, source: str) -> None:
        """Rule 12, at a transfer's first source: an edge serves the whole store instead of
        the delta (the file is dropped: its load stops); the origin serves the delta."""
        whole, self._whole_ok = self._whole_ok, False
        peer = self.members.peers.get(source)
        if whole and (source in self._hints or (peer is not None and peer.role == "edge")):
            self.counters["snapshot_file_dropped"] += 1
            self._since, self.base_wm, self._file = 0, None, None

    def _choose(self) -> str:
        offerer, wm = self._offer
        lag = self.config.snapshot_lag
        return choose_source(
            self.members, offerer, wm, lag, self._hints, self._tried, self._refused, self.rng
        )

    @property
    def whole(self) -> bool:
        """A whole snapshot is under way (this node holds no usable prefix: it serves none)."""
        return self.active and not self._since

    def _live_seqs(self) -> Iterator[int]:
        """The proof store's live seqs while staging: the replica's and the staged states'."""
        yield from self.replica.proof_seqs()
        for group in self._groups.values():
            for st in group.values():
                yield from state_seqs(st)
        if self._file is not None:  # rule 11: the file's rows, waiting for the build
            yield from file_seqs(self._file.groups)

    def _start(self, now: float) -> list[Send]:
        proofs = self.replica.proofs
        if proofs is not None:
            proofs.live_seqs = self._live_seqs
        self._source = self._choose()
        self._drop_file_for(self._source)
        self._sid = self.rng.getrandbits(48) + 1
        self._n = 0
        self.state = self.RUNNING
        self._deadline = now + self._patience()
        self.progress.sources.append(self._source)
        self.counters["snapshot_requests"] += 1
        credit = min(MAX_CREDIT, self.config.snapshot_window)
        return [Send(self._source, snap_req(self._sid, self._cursor, credit, True, self._since))]

    def _patience(self) -> float:
        """How long a source may stay silent (rule 6): `snapshot_timeout`, doubled for each
        source that timed out in this transfer (at most 8x)."""
        return self.config.snapshot_timeout * (1 << min(self._timeouts, PATIENCE_DOUBLINGS))

    def _resume(self, now: float) -> list[Send]:
        self._tried.add(self._source)
        self.progress.resumes += 1
        self.counters["snapshot_resumes"] += 1
        return self._start(now)

    def tick(self, now: float) -> list[Send]:
        held = self._trees_held_until
        if held is not None and held <= now:
            self._trees_held_until = float("inf")  # timed out: handed out once not active
        if self._deadline > now:
            return []
        if self.state == self.CHOOSING:
            return self._start(now)
        if self.state == self.RUNNING:
            self.counters["snapshot_timeouts"] += 1
            self._timeouts += 1
            return self._resume(now)
        return []

    def on_data(self, peer: str, m: Message, now: float) -> list[Send]:
        """One chunk: validated whole first (RemoteProtocolError), then staged if expected."""
        try:
            c = parse_chunk(m)
        except RemoteProtocolError:
            self.counters["snapshot_bad_chunks"] += 1
            if self.state == self.RUNNING and peer == self._source:
                self._abandon(peer, now)
            raise
        if self.state != self.RUNNING or peer != self._source or c.sid != self._sid:
            self.counters["snapshot_stale_chunks"] += 1
            return []
        try:
            if c.busy:
                self._refused.add(peer)
                return self._resume(now)
            if c.n != self._n:  # rule 6: chunks dropped at the source
                self.counters["snapshot_gaps"] += 1
                return self._resume(now)
            if c.keys and self._cursor is not None and (c.store, c.keys[0]) <= self._cursor:
                raise RemoteProtocolError("SNAP_DATA: keys at or before the cursor")
            if self._since and c.dropped > self._since:
                # rule 9: the source purged deletions we cannot see in a delta: take it whole
                self.counters["snapshot_delta_to_full"] += 1
                return self._restart_whole(now)
            self._verify(c)
        except RemoteProtocolError:
            self.counters["snapshot_bad_chunks"] += 1
            self._abandon(peer, now)
            raise
        self._stage(c)
        self._n += 1
        self._deadline = now + self._patience()
        if c.last:
            self.counters["snapshot_chunks"] += 1
            self.state = self.BUILDING
            if self._since and self.base_wm is None and self._staged_small():
                self._finish_delta(now)  # a delta applied: claim its covers, done
            return []
        self.counters["snapshot_chunks"] += 1
        return [Send(peer, snap_req(self._sid, self._cursor, 1, False))]

    def _staged_small(self) -> bool:
        """A delta whose staged keys are few enough to join key by key (rule 9): none (it was
        applied as it came) or, staged while the file loaded (rule 11), under the threshold."""
        staged = sum(map(len, self._groups.values()))
        return staged == 0 or staged + self._delta_keys < self.delta_stage_from

    def _finish_delta(self, now: float) -> None:
        """A delta's end in the live replica: what is staged joined, its covers claimed."""
        for name, group in self._groups.items():
            self.applied += self.replica.apply_batch([(name, k, st) for k, st in group.items()])
        self._groups = {}
        self.replica.covered.update([(1, self._wm)] if self._wm != MAX_SEQ else [])
        self._end()
        self._reset(now)
        self.counters["snapshot_deltas"] += 1

    def _restart_whole(self, now: float) -> list[Send]:
        """The delta cannot be completed (rule 9: deletions purged past `since`; rule 11: the
        file failed to load): start over as a whole snapshot, the file's data dropped."""
        self.base_wm, self._file = None, None
        self._since = 0
        self._cursor = None
        self._wm, self._purged = MAX_SEQ, 0
        self.progress.keys = 0
        self._groups = {}
        return self._start(now)

    def _verify(self, c: Chunk) -> None:
        """Rule 2: with proofs on, every state must be signed by the origin (the chunk's
        certificates, checked, join the proof store); ForgedState otherwise."""
        proofs = self.replica.proofs
        if proofs is None:
            return
        items = [(c.store, k, st) for k, st in zip(c.keys, c.states, strict=True)]
        if len(proofs.verify(items, c.proofs, self.replica.state)) != len(items):
            raise ForgedState(f"SNAP_DATA: a state of {c.store!r} is not a certified state")

    def _abandon(self, peer: str, now: float) -> None:
        """Rule 6: a bad source is dropped; the next tick resumes with another peer."""
        self._deadline = now
        self._tried.add(peer)
        self._refused.add(peer)
        self._source = ""

    def _stage(self, c: Chunk) -> None:
        self._wm = min(self._wm, c.wm)
        self._purged = max(self._purged, c.purged)
        p = self.progress
        p.total = max(p.total, c.total)
        if not c.keys:
            return
        self._cursor = (c.store, c.keys[-1])
        p.keys += len(c.keys)
        p.bytes += c.size
        pairs = zip(c.keys, c.states, strict=True)
        if self._since and self.base_wm is None and self._delta_keys < self.delta_stage_from:
            # a delta: joined into the live replica at once (rule 9)
            self._delta_keys += len(c.keys)
            self.applied.extend(self.replica.apply_batch([(c.store, k, st) for k, st in pairs]))
            return
        if self._file is not None:  # rule 11: the file's rows are read: joined into them
            join_into(self._file.groups.setdefault(c.store, {}), pairs)
            return
        self._groups.setdefault(c.store, {}).update(pairs)

    def take(self) -> StagedSnapshot | TreeJob | None:
        """The staged snapshot once the last chunk is in (then the driver builds it); after
        its install, its trees (rule 7; the driver builds them and calls `install_trees`)."""
        if self._tree_job is not None and not self._trees_held():
            job, self._tree_job = self._tree_job, None
            self._trees_out += 1
            return job
        if self.state != self.BUILDING or (self.base_wm is not None and self._file is None):
            return None  # rule 11: the file first
        self.state = self.LOADING
        wm = 0 if self._wm == MAX_SEQ else self._wm
        staged = StagedSnapshot(self._groups, wm, self._purged, 0)
        staged.keys = self.progress.keys
        if self._file is not None:  # rule 11: the file's rows joined with the delta
            file, self._file, self.base_wm = self._file, None, None
            self._file_building = True
            staged.base = file.groups
            staged.covered = [*file.covered, *self.replica.covered]
            staged.purged = max(staged.purged, file.purged)
            staged.keys += sum(map(len, file.groups.values()))
        elif self._since:  # a large delta: rebuilt with the live replica (rule 9)
            staged.base = live_copy(self.replica)
            staged.covered = list(self.replica.covered)
            staged.keys += len(self.replica)
        self._groups = {}
        return staged

    def install(self, built: Replica, staged: StagedSnapshot, now: float) -> list[Change]:
        """Adopt the built replica in the live one (rule 7); returns the joined live changes."""
        changes = adopt(self.replica, built, staged.wm)
        self._file_building = False
        if staged.trees is not None and staged.trees.copies:
            self._tree_job = staged.trees  # (a restart's job, if still held, is moot)
            self._trees_held_until = now + self.config.sync_timeout  # held as in rule 10
        self._end()
        self._reset(now)
        self.counters["snapshot_delta_rebuilds" if self._since else "snapshots_installed"] += 1
        if not self._since:
            self.whole_from = self._source
        return changes

    def install_trees(self, built: BuiltIndexes | BaseException) -> None:
        """Rule 7: the trees of the installed snapshot and the entries of its change logs (a
        failed build: the trees built here at once, the logs by their first reader)."""
        self._trees_out = max(0, self._trees_out - 1)
        if isinstance(built, BaseException):
            self.counters["snapshot_tree_failures"] += 1
            self.replica.roots()  # every pending tree built on first use, its log dropped
            return
        self.counters["snapshot_trees_installed"] += self.replica.install_trees(built.trees)
        self.replica.install_logs(built.logs)

    def _reset(self, now: float) -> None:
        self._clear()
        self._tried.clear()
        self._refused.clear()
        self.finished_at = now

    def _clear(self) -> None:
        self._cursor = None
        self._timeouts = self._delta_keys = 0
        self._wm, self._purged = MAX_SEQ, 0

    def take_applied(self) -> list[Change]:
        """Changes a delta snapshot applied to the live replica since the last call."""
        out, self.applied = self.applied, []
        return out

    def _end(self) -> None:
        self.state = self.IDLE
        if self.replica.proofs is not None:
            self.replica.proofs.live_seqs = self.replica.proof_seqs

    def abort(self) -> None:
        """The build failed: start over at the next offer."""
        self._end()
        self._groups = {}
        self._file = None  # (a file lost with a failed build: the next offer is whole)
        self._file_building = False
        self._clear()

    def status(self, now: float) -> dict[str, Any]:
        """Progress for /status and logs: keys, bytes, rate, time left."""
        p = self.progress
        elapsed = max(1e-9, now - p.started)
        rate = p.keys / elapsed if self.active or self.finished_at is None else 0.0
        left = (p.total - p.keys) / rate if rate > 0 and p.total > p.keys else 0.0
        return {
            "state": self.state,
            "source": self._source or None,
            "keys": p.keys,
            "total_keys": p.total,
            "bytes": p.bytes,
            "keys_per_s": round(rate, 1),
            "seconds_left": round(left, 2) if self.active else 0.0,
            "resumes": p.resumes,
            "target_watermark": self.target,
            "whole_from": self.whole_from,
        }
