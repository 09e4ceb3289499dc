"""The responder side of bootstrap by snapshot: offers and the sessions it serves.

The protocol and its rules are in gossip/snapshot.py (theory of operation); this module holds
rules 1 (switch: `offer_instead`), 2 (the caught-up edges an offer names: `offer_sources`),
3 and 4 (flow-controlled sessions whose chunks are built only when granted, at most one store
and about `snapshot_chunk_bytes` each: `SnapshotServer`), and the responder's half of rule 9
(a delta session sends only keys newer than `since`, and names `dropped`).  A chunk examines
at most `SCAN_KEYS` keys and a request at most `SCAN_PER_REQUEST` (then the rest of its
credit waits for the next request): a sparse delta (5,000 changed keys of 1M) scanned up to
50,000 keys per chunk, 207 ms of one event at its opening request and ~50 ms per chunk after.
A delta's chunk first filters its window of keys column-wise (`_newer`), so only changed keys
take a Python turn and unchanged ones cost half of one or less (`FILTER_COST`): a sparse
region takes few round trips (the 5,000-key delta: 112 requests before, 48 after).  The window
follows what the session's last chunk used (`_Session.window`: 5/4 of the keys it consumed,
growing 5/4 at a time while chunks run out of window): a fixed window of 16,384 keys, where a
dense delta fills a chunk after ~3,800 (500,000 changed of 1M), filtered each key four times
over, 30% of the origin's CPU while a long-away edge took its delta.
A whole store's chunk takes such a window too (then up to SCAN_KEYS if it ends before the
budget: its chunks stay full after a store's first).  With no proofs to send and only registers
in the window, a chunk is cut column-wise (`_cut`: the running size of keys and registers,
bisected at `snapshot_chunk_bytes`), not by the per-key loop: the CPU to serve a whole
unsigned 1M-key store went from 1.04-1.12 s to 0.53-0.70 s (three runs each, in process), a
500,000-key delta's from 0.76-1.14 s to 0.55-0.66 s.  (Only a node keeping no proofs: an
edge with no origin public key.  An origin always signs; its chunks take the loop.)
A delta that changed at most `SPARSE_KEYS` keys of a store walks that store's changed keys
(from its change log, sorted once per session and store: `_changed`) instead of its keys: a
window scan took ~60 round trips for a few thousand changed keys of 1M, which a source
starved of CPU (an edge sharing its core with ten joining ones, at full write load) needed
minutes for while the gap it had to close grew.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, count, islice, repeat
from operator import add, gt, is_
from typing import Any, cast

from ..crdt.certificate import ENTRY, Certificate
from ..crdt.codec import encode_delta
from ..crdt.register import SEQ_AT, SEQ_BYTES, Register
from ..crdt.replica import Replica
from ..crdt.state import State
from ..errors import RemoteProtocolError
from .chunks import delta_size
from .config import GossipConfig
from .fields import MAX_SEQ
from .fields import field_int as _int
from .membership import Membership
from .messages import Send
from .peer import ALIVE, SUSPECT
from .snapshot_wire import (
    MAX_CHUNK_KEYS,
    MAX_CREDIT,
    MAX_HINTS,
    Cursor,
    parse_cursor,
    snap_data,
)
from .wire import Checked, Message

__all__ = [
    "MAX_SESSIONS",
    "SnapshotServer",
    "changed_since",
    "choose_source",
    "offer_instead",
    "offer_sources",
]

MAX_SESSIONS = 32  # snapshot sessions one node serves at once
SCAN_KEYS = 8_192  # keys one chunk examines at most (a sparse delta's chunk may hold few)
SCAN_PER_REQUEST = 16_384  # keys examined per request before the rest of its credit waits
FILTER_COST = 2  # a delta filters its keys column-wise first: half the cost per key (or less)
MIN_WINDOW = 256  # keys a delta's filter window holds at least
SPARSE_KEYS = 32_768  # a delta walks a store's changed keys when at most this many (256 KiB)
_from_bytes = int.from_bytes


# --- offers ---------------------------------------------------------------------------------------


def caught_up(
    members: Membership, state: str, wm: int, lag: int, skip: set[str] | None = None
) -> list[str]:
    """The edges in `state` whose watermark is within `lag` of `wm`, sorted, less `skip`."""
    return sorted(
        p.address
        for p in members.peers.values()
        if p.state == state
        and p.role == "edge"
        and p.watermark + lag >= wm
        and (skip is None or p.address not in skip)
    )


def offer_sources(
    members: Membership, wm: int, config: GossipConfig, rng: random.Random
) -> list[str]:
    """Rule 2: up to MAX_HINTS edges this node believes caught up with `wm`: the live ones
    (shuffled), then the suspected ones (shuffled).  A suspect is most often a busy edge (a
    caught-up edge building its trees while ten edges start on its CPU missed its acks, and
    all ten then took the whole store from the origin); a dead one costs the receiver one
    `snapshot_timeout`, then it resumes elsewhere."""
    out: list[str] = []
    for state in (ALIVE, SUSPECT):
        edges = caught_up(members, state, wm, config.snapshot_lag)
        rng.shuffle(edges)
        out += edges
    return out[:MAX_HINTS]


def choose_source(
    members: Membership,
    offerer: str,
    wm: int,
    lag: int,
    hints: list[str],
    tried: set[str],
    refused: set[str],
    rng: random.Random,
) -> str:
    """The receiver's rule 2: where a transfer (or its resume) takes its next chunks from:
    a live caught-up edge, one the offer named (`hints`: a bad one only costs a timeout,
    chunks are checked), a suspected one (most often a busy edge: still better than the
    origin), none of them `tried`; then (`tried` is cleared) one still a member that was
    only slow (timed out, not busy, not bad: not `refused`), before the offerer, often the
    origin (ten edges joining on one loaded core timed out on their source and four went to
    the origin).  A peer that is behind never serves (it would answer busy), so no other
    peer is tried."""
    pending = [a for a in hints if a not in tried]
    for pool in (caught_up(members, ALIVE, wm, lag, tried), pending):
        if pool:
            return rng.choice(pool)
    suspects = caught_up(members, SUSPECT, wm, lag, tried)
    if suspects:
        return rng.choice(suspects)
    tried.clear()
    slow = caught_up(members, ALIVE, wm, lag, refused) + caught_up(
        members, SUSPECT, wm, lag, refused
    )
    return rng.choice(slow) if slow else offerer


def changed_since(replica: Replica, wm: int, limit: int) -> int:
    """An upper bound of the keys changed after seq `wm`, exact enough up to `limit`: the
    change-log entries above `wm` (O(stores * log n)), or the seq gap for a log that cannot
    tell."""
    gap = replica.watermark - wm
    if gap <= limit:
        return max(gap, 0)
    n = 0
    for sr in replica.stores.values():
        above = sr.changes.count_above(wm)
        if above is None:  # a log not in order, or still pending (crdt/changelog.py rule 5)
            return min(gap, len(replica))
        n += above
    return min(n, gap)


def offer_instead(replica: Replica, wm: int, config: GossipConfig) -> int:
    """Rule 1: the keys changed after `wm` when a catch-up from it is too large to answer (a
    snapshot is offered instead), else 0."""
    limit = config.snapshot_from_keys
    if len(replica) <= limit:
        return 0
    changed = changed_since(replica, wm, limit)
    return changed if changed > limit else 0


# --- responder -----------------------------------------------------------------------------------


def _newer(window: list[str], states: dict[str, State], since: int) -> list[int]:
    """The positions in `window` of the keys a delta from `since` must look at: registers
    newer than it, found column-wise (a seq is 8 big-endian bytes of the register's header,
    so comparing those slices compares seqs), and every other kind of state (the chunk loop
    checks those).  A sparse delta then costs a few C loops per key, not a Python turn."""
    vals: list[Any] = list(map(states.__getitem__, window))
    mark = since.to_bytes(8, "big")
    if all(map(is_, map(type, vals), repeat(Register))):
        return list(compress(count(), map(gt, map(SEQ_BYTES, vals), repeat(mark))))
    return [i for i, v in enumerate(vals) if v.__class__ is not Register or SEQ_BYTES(v) > mark]


def _cut(
    window: list[str], picked: Sequence[int], states: dict[str, State], budget: int
) -> tuple[list[str], list[State], int, str, bool] | None:
    """A chunk as the loop of `_chunk` would take it when no proofs travel and every picked
    key of `window` holds a register: the picked keys in order up to and including the one
    whose running size (key and register lengths) reaches `budget`, as C-level passes.
    (keys, states, keys of the window consumed, the cursor's key, whether the window ended
    before the budget), or None (the loop takes it).  A whole unsigned 1M-key store took
    1.1 s of CPU through the loop, 0.5-0.7 s so (benchmarks/bench_serve.py)."""
    cand = window if len(picked) == len(window) else list(map(window.__getitem__, picked))
    if not cand:
        return None
    vals = list(map(states.__getitem__, cand))
    if not all(map(is_, map(type, vals), repeat(Register))):
        return None
    regs = cast("list[Register]", vals)
    at = bisect_left(list(accumulate(map(add, map(len, cand), map(len, regs)))), budget)
    if at < len(cand):  # the budget is reached at this key: taken, and the chunk ends
        return cand[: at + 1], vals[: at + 1], picked[at] + 1, cand[at], False
    return cand, vals, len(window), window[-1], True  # the whole window examined


@dataclass(slots=True)
class _Session:
    cursor: Cursor
    wm: int
    purged: int
    since: int = 0  # a delta snapshot: only keys whose state is newer (rule 9)
    dropped: int = 0  # the replica's `removed_high` when the session began (rule 9)
    credit: int = 0
    n: int = 0
    idle_since: float = 0.0
    window: int = 0  # a delta's next filter window (module docstring); 0: the largest
    sent: dict[bytes, Certificate] = field(default_factory=dict)  # certificates already sent
    changed: tuple[str, list[str] | None] | None = None  # a sparse delta's store, its keys


class SnapshotServer:
    """The responder side: sessions of peers taking a snapshot from this node (rules 3-4)."""

    def __init__(self, replica: Replica, config: GossipConfig, counters: Any) -> None:
        self.replica = replica
        self.config = config
        self.counters = counters
        self.sessions: dict[tuple[str, int], _Session] = {}
        # peer -> its sessions here.  Dissemination batches pushes to these for its longest
        # window (the origin's `push_window`): a taker serves none of their writes before its
        # install, and under full write load the origin pushed to it every 5 ms, each a
        # wake-up, a decode and an apply while its CPU builds the snapshot
        self.takers: dict[str, int] = {}
        self.busy = False  # set while this node takes a whole snapshot: it serves none

    def on_req(self, peer: str, m: Message, now: float) -> list[Send]:
        sid = _int(m, "sid")
        credit = _int(m, "credit", 1, MAX_CREDIT)
        after = parse_cursor(m)
        opening = m.get("open")
        if type(opening) is not bool:
            raise RemoteProtocolError("SNAP_REQ: open must be a boolean")
        since = m.get("since", 0)
        if type(since) is not int or not 0 <= since <= MAX_SEQ:
            raise RemoteProtocolError("SNAP_REQ: since must be a seq")
        self._expire(now)
        s = self.sessions.get((peer, sid))
        if s is None:
            if not opening:  # credit for a session that ended (or expired): nothing to send
                return []
            if self.busy or len(self.sessions) >= MAX_SESSIONS:
                self.counters["snapshot_busy"] += 1
                return [Send(peer, snap_data(sid, 0, 0, 0, 0, "", [], [], [], True, busy=True))]
            r = self.replica
            s = self.sessions[(peer, sid)] = _Session(after, r.watermark, r.purged, since)
            self.takers[peer] = self.takers.get(peer, 0) + 1
            s.dropped = r.removed_high
            self.counters["snapshot_sessions"] += 1
        s.credit = min(MAX_CREDIT, s.credit + credit)
        s.idle_since = now
        out: list[Send] = []
        scanned = 0
        while s.credit > 0 and (not out or scanned < SCAN_PER_REQUEST):
            msg, done, examined = self._chunk(sid, s)
            scanned += examined
            out.append(Send(peer, msg))
            s.credit -= 1
            s.n += 1
            if done:
                self._end((peer, sid))
                break
        return out

    def _end(self, key: tuple[str, int]) -> None:
        del self.sessions[key]
        peer = key[0]
        left = self.takers.pop(peer) - 1
        if left:
            self.takers[peer] = left

    def _expire(self, now: float) -> None:
        idle = 2 * self.config.snapshot_timeout
        for k in [k for k, s in self.sessions.items() if now - s.idle_since > idle]:
            self._end(k)

    def _chunk(self, sid: int, s: _Session) -> tuple[Message, bool, int]:
        """The next chunk after `s.cursor` (at most one store, about chunk_bytes, at most
        SCAN_KEYS keys examined), whether it is the last, and the keys it examined."""
        stores = self.replica.stores
        names = sorted(stores)
        store, after = s.cursor if s.cursor is not None else (names[0], None)
        i = next((j for j, n in enumerate(names) if n >= store), len(names))
        budget = self.config.snapshot_chunk_bytes
        while i < len(names):
            name = names[i]
            sr = stores[name]
            # (the metadata store "" is scanned: a few keys, and its window seeds the next's)
            sparse = self._changed(s, name) if s.since and name else None
            past = after if name == store else None  # resume after it in this store
            if sparse is not None:
                start, end = (0 if past is None else bisect_right(sparse, past)), len(sparse)
            else:
                start, end = (0 if past is None else sr.keys.bisect_right(past)), len(sr.keys)
            if start < end:
                keys: list[str] = []
                vals: list[State] = []
                states = sr.states
                proofs = self.replica.proofs
                certs = s.sent  # each certificate travels once per session
                had = len(certs)
                size = consumed = turns = 0
                key = ""
                since = s.since
                window: list[str] = []
                turns_of: Iterator[tuple[int, str]]
                if sparse is not None:  # the store's changed keys, less any removed since
                    window = sparse[start : start + SCAN_KEYS]
                    picked: Sequence[int] = [p for p, k in enumerate(window) if k in states]
                    turns_of = zip(picked, map(window.__getitem__, picked), strict=True)
                elif since:  # only the keys newer than `since` get a turn of the loop below
                    n = min(MAX_CHUNK_KEYS, FILTER_COST * SCAN_KEYS)
                    n = min(n, s.window) if s.window else n
                    window = list(sr.keys.islice(start, start + n))
                    picked = _newer(window, states, since)
                    turns_of = zip(picked, map(window.__getitem__, picked), strict=True)
                elif proofs is None:  # a window as a delta's: what the last chunk used, and some
                    n = min(MAX_CHUNK_KEYS, SCAN_KEYS)
                    window = list(sr.keys.islice(start, start + min(n, s.window or n)))
                    picked = range(len(window))
                    turns_of = enumerate(window)
                else:  # the loop takes the keys as it goes
                    n = min(MAX_CHUNK_KEYS, SCAN_KEYS)
                    turns_of = enumerate(sr.keys.islice(start, start + n))
                columns = proofs is None and sparse is None  # (`_cut`)
                cut = _cut(window, picked, states, budget) if columns else None
                if (
                    columns
                    and not since
                    and len(window) < min(n, end - start)
                    and (cut is None or cut[4])
                ):
                    # the window ended before the budget: a whole store's chunk scans on
                    window = list(sr.keys.islice(start, start + n))
                    picked = range(len(window))
                    turns_of = enumerate(window)
                    cut = _cut(window, picked, states, budget)
                if cut is not None:  # registers only, no proofs: column-wise
                    keys, vals, consumed, key, _ = cut
                    turns_of = iter(())
                    turns = len(keys)
                # the certificate that proved the last register (already in `certs`): most
                # neighbours in key order are in it too, at their dense position (one entry per
                # seq), which one slice compare checks; any other seq takes add_material
                cert_e, cert_lo = b"", 0
                for pos, key in turns_of:
                    consumed = pos + 1
                    turns += 1
                    st = states[key]
                    if st.__class__ is Register:  # the common case: seq read from its bytes
                        head = st[SEQ_AT : SEQ_AT + 8]
                        seq = _from_bytes(head, "big")
                        if since and seq <= since:
                            continue
                        size += len(key) + len(st)
                        if proofs is not None:  # rule 2: the certificates travel with the states
                            at = (seq - cert_lo) * ENTRY  # (not `i`: the store's index)
                            if at < 0 or cert_e[at : at + 8] != head:
                                c = proofs.sent_prover(seq, head, certs)
                                if c is None:  # a certificate not sent yet (or none)
                                    extra = proofs.add_material(certs, st)
                                    if extra < 0:
                                        size -= len(key) + len(st)
                                        self._unprovable(s)
                                        continue
                                    size += extra
                                    c = proofs.prover(seq)
                                if c is not None and c.signature in certs:  # (sent with it)
                                    cert_e, cert_lo = c.entries, c.lo
                    else:
                        if since and st.seq <= since:
                            continue
                        if proofs is not None:
                            extra = proofs.add_material(certs, st)
                            if extra < 0:
                                self._unprovable(s)
                                continue
                            size += extra
                        size += len(key) + delta_size(st)
                    keys.append(key)
                    vals.append(st)
                    if size >= budget:
                        break
                else:
                    if window and cut is None:  # the whole window was examined
                        consumed, key = len(window), window[-1]
                if window and sparse is None:  # the next window: what this chunk used, and some
                    s.window = max(MIN_WINDOW, consumed + consumed // 4)
                s.cursor = (name, key)
                done = i == len(names) - 1 and start + consumed == end
                self.counters["snapshot_keys_served"] += len(keys)
                msg = self._encode(sid, s, name, keys, vals, done)
                if len(certs) > had:
                    msg["proofs"] = [c.to_wire() for c in islice(certs.values(), had, None)]
                filtered = consumed // FILTER_COST if since and sparse is None else 0
                return msg, done, turns + filtered
            i += 1
            after = None
        n, total = s.n, len(self.replica)
        return (
            snap_data(sid, n, s.wm, s.purged, total, "", [], [], [], True, dropped=s.dropped),
            True,
            0,
        )

    def _changed(self, s: _Session, name: str) -> list[str] | None:
        """The keys of store `name` changed after the delta's `since`, sorted, when at most
        SPARSE_KEYS (None: scan the store's keys).  Built once per session and store, when
        the stream reaches it: a key changed later is newer than the session's `wm` and
        arrives by the normal paths (rule 5 of snapshot.py)."""
        if s.changed is not None and s.changed[0] == name:
            return s.changed[1]
        sr = self.replica.stores[name]
        keys = sr.changes.keys_since(s.since, sr.states, SPARSE_KEYS)  # ~10 ms at the limit
        s.changed = (name, keys)
        return keys

    def _unprovable(self, s: _Session) -> None:
        """A state this node cannot prove is never sent (crdt/proofs.py rule 3), and the
        snapshot then claims no seq (rule 5)."""
        self.counters["snapshot_unprovable"] += 1
        s.wm = 0

    def _encode(
        self, sid: int, s: _Session, store: str, keys: list[str], vals: list[State], last: bool
    ) -> Message:
        is_reg = list(map(is_, map(type, vals), repeat(Register)))
        if all(is_reg):  # the common case: one column of registers, no copy
            regs: list[Any] = vals
            others: list[Any] = []
        else:
            regs = [v if r else b"" for v, r in zip(vals, is_reg, strict=True)]
            others = [encode_delta(v) for v, r in zip(vals, is_reg, strict=True) if not r]
        # built from this node's own states (checked as they came in): not walked again at
        # encoding (wire.Checked)
        return Checked(
            snap_data(
                sid,
                s.n,
                s.wm,
                s.purged,
                len(self.replica),
                store,
                keys,
                regs,
                others,
                last,
                dropped=s.dropped,
            )
        )
