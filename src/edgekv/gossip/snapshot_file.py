"""A restart's file joined with its delta (gossip/snapshot.py rule 11): the data and the pure
steps the receiver (`SnapshotClient`) takes with it.

Theory of operation
1. The driver reads the file's metadata first (its watermark w) and starts gossip with an
   empty live replica (`expect_base(w)`): catch-up and snapshot offers ask from w (`floor`),
   so the delta streams while the rows load in a worker thread.  Meanwhile every delta chunk
   is staged (the live replica has no prefix to join it to), pushes apply to the live
   replica as usual, anti-entropy waits (`settling`), and the node is not ready.
2. Rows read while the delta is small so far (at most `delta_stage_from` keys staged) are
   indexed by the driver (a bulk load) and `install_base` makes the live replica the file's
   joined with everything applied meanwhile (`adopt_file`: crdt/bulk.py `adopt` from seq 0;
   the file's certificates replace the proof store, those received meanwhile added), then
   hands its trees out as rule 10's job; a delta that already ended is then finished: joined
   key by key when small, else rebuilt as in rule 9.
3. Rows read while a large delta streams or once it is staged, or once an offer announced
   one (`changed` past `delta_stage_from`), are not indexed alone (it will be rebuilt anyway;
   a file in blocks often loads before 20,000 keys of its delta arrived, and was then indexed,
   installed and rebuilt: 8.6 s instead of 5.2-6.0 s in one away run): `join_file` keeps them (`FileBase`) and the staged snapshot is built
   with them as its base when the delta ends: one bulk load instead of two, no copy of the
   live stores.  The delta's chunks that arrive once they are kept are joined into them at
   once (`join_into`), not staged: one dict insert per key fewer (500,000 keys: ~0.2 s of the
   receiver's CPU, which bounds the away step).  The live replica holds them from that
   install on (`file_pending` until then): such a node serves its file's keys only then, not
   while the delta streams.
   Measured (away step, 1M keys, 500,000 changed): a file indexed mid-delta, then rebuilt
   with it, took 11.7-13.9 s from spawn to the origin's watermark in two runs of three.
4. A whole snapshot (an empty file, or rule 9's switch) drops the file; a file that fails to
   load turns a delta under way into a whole snapshot.
5. A large delta from an edge becomes a whole snapshot (snapshot.py rule 12): an offer says
   how many keys changed after the requester's watermark (`changed`, from the change logs);
   while the file still loads, a delta of at least `snapshot_whole_from` of the offer's keys
   whose transfer's first source is an edge drops the file (its load stops: `base_wm` is
   cleared, `wants_file`) and asks that edge for the whole store.  Reading a row of the file
   costs the receiver about a third of the CPU of receiving a key, but a large delta also
   costs a rebuild with the file's states; and the whole store is more bytes and chunks,
   which the origin must not pay for: every write shares its CPU.  Measured at 1M keys with
   500,000 changed and the origin the only source, the file's rows one per row: the delta
   took 7.9 s from spawn to the origin's watermark with the origin's puts at 48-70% of idle,
   the whole store 5.8-6.3 s with them at 23-44%; with the file in blocks (node/persistence.py
   rule 7) the delta took 5.1-8.9 s (medians 5.67, 7.26 s), a fresh edge's whole store 4.2 s
   (benchmarks/results/bootstrap.md).  So the origin serves the delta
   and a caught-up edge the whole store.
6. Trees (snapshot.py rule 10).  A node back after a long absence asks for its delta as soon
   as its file is read, not after its trees (measured at 1M keys under load: 3.6 s of the
   22.8 s from spawn to the origin's watermark went to the trees before the first request).
   The tree job waits until the node is ready: built alongside, in a thread holding the GIL
   most of the time, it slowed the stream of a 500,000-key delta to ~4,000 keys/s; and a
   large delta replaces the stores (rule 9), so their trees from before are never built.
Measured at 1M keys with 500,000 changed (bench_bootstrap's away step): the load (~3 s) and
the stream (~4 s) ran one after the other before, then a rebuild with copies of the loaded
stores (~1.8 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..crdt.atoms import states_seqs
from ..crdt.bulk import adopt
from ..crdt.certificate import Certificate
from ..crdt.proofs import ProofStore
from ..crdt.replica import Change, Replica
from ..crdt.state import State

__all__ = ["FileBase", "add_file_certs", "adopt_file", "file_seqs"]


@dataclass(slots=True)
class FileBase:
    """A restart's file as read, not indexed: store -> key -> state, the ranges of seqs and
    the purge mark its rows reflect, and the certificates it kept."""

    groups: dict[str, dict[str, State]]
    covered: list[tuple[int, int]]
    purged: int
    certs: list[Certificate]


def adopt_file(
    live: Replica, loaded: Replica, live_seqs: Callable[[], Iterable[int]] | None
) -> list[Change]:
    """Rule 2: `live` becomes `loaded` (the indexed file) joined with everything applied to
    it meanwhile; the file's proof store takes over, with the certificates received meanwhile
    added (journaled: persisted).  `live_seqs`: the proof store's live seqs while a snapshot
    is under way (its staged states count).  Returns the joined changes."""
    received = live.proofs
    changes = adopt(live, loaded, 0)
    proofs = loaded.proofs
    if proofs is not None and received is not None and proofs is not received:
        proofs.add(iter(received))
        live.use_proofs(proofs)
        if live_seqs is not None:
            proofs.live_seqs = live_seqs
    return changes


def add_file_certs(proofs: ProofStore | None, certs: list[Certificate]) -> None:
    """Rule 3: the file's certificates join the live proof store, unjournaled (the file holds
    them already)."""
    if proofs is None or not certs:
        return
    journal, proofs.journal = proofs.journal, False
    try:
        proofs.add(certs)
    finally:
        proofs.journal = journal


def file_seqs(base: dict[str, dict[str, State]]) -> Iterator[int]:
    """The seqs the proofs of the file's states need (they count as live while it waits)."""
    for group in base.values():
        yield from states_seqs(group.values())
