"""Edge persistence: the replica, its covered seq ranges and purge mark in SQLite (WAL mode).

Why: an edge restarts serving its last persisted state at once, then catches up by gossip;
losing the last flush interval of changes on a crash is fine (gossip re-sends them), serving
garbage is not.

Theory of operation
1. Schema: `states(store, key, seq, reg, state)` holds each key's whole CRDT state and its
   seq.  A plain value (a register, the bulk of any store) is stored as the register itself,
   its flat bytes (crdt/register.py) in `reg`, so loading one is a C-level copy into a
   `Register` after column-wise checks instead of a decode; other kinds (zset, bloom) are the
   strict CBOR array of `crdt.codec` in `state` (then `reg` is NULL).  `meta(name, value)`
   holds `format`, `covered` (CBOR ranges) and `purged`.  `certs(sig, key_id, lo, hi,
   entries)` holds the origin's certificates the replica keeps (crdt/proofs.py), so a
   restarted edge can still prove what it serves; those of keys no longer configured are
   not loaded.  Registers may instead be in `blocks` (rule 7).  A format older than the one
   before is moved aside like a corrupt file (rule 5) and re-synced.  A row is the state at some flush;
   rows and meta of one flush share a transaction, so the file always holds a consistent
   snapshot: every seq in `covered` is reflected in the states written with it.
2. Flushing is off the read path: a runtime listener only records dirty (store, key) pairs (a
   dict: repeated changes of one key coalesce).  The flusher task wakes every `flush_interval`
   (or when many keys are dirty), encodes the current states on the event loop (the replica is
   only touched there, so the snapshot is consistent) and writes them with
   `anyio.to_thread.run_sync` (SQLite in a worker thread, one transaction per flush).
3. Loading: per store (names found by index probes), one query of its register rows in key
   order fetching only (key, seq, reg), then column-wise (node/filerows.py): every check is a
   C-level pass over a column (types, the register header's flags, length and signs, and that
   its seq is the row's), and the rows become its states dict in one go; its other rows (few)
   are decoded one by one.
   `crdt.bulk_load_stores` then applies META first (so drop/recreate epochs apply), builds
   every index once (sorted key list, change log, Merkle tree) instead of key by key, adds the
   covered ranges and sets `purged` last (the replica ignores deltas at or below `purged` for
   keys it lacks, which would drop the rows being loaded).
4. A snapshot installed in the replica (gossip/snapshot.py) replaces nearly every key at once:
   `rewrite_all()` makes the next flush copy each store's states (a C-level dict copy on the
   event loop) and rewrite the table from them in its worker thread, in the flush's one
   transaction with the covered ranges of that moment; per-key dirty tracking goes on as usual.
   `rewrite_all(base)` gives it copies made before (the snapshot's tree copies, taken in the
   build's worker thread: gossip/snapshot_build.py) instead: their stores are written from
   them, their keys sorted in the writer thread, and every key changed since (all dirty: the
   install's joins too) is written on top as a row in the same transaction, so the file is
   as consistent as with a copy taken then.  Why: right after an install the copy on the loop
   took 116-143 ms (1M keys; the tree build's thread holding the GIL meanwhile), and every
   read that arrived then waited for it.
5. Corruption: the file is refused when it cannot be opened as SQLite, `PRAGMA quick_check`
   fails, the format is unknown, or any row fails to decode (`CodecError`, `ConflictingVersion`,
   wrong types).  Then the file (and its -wal/-shm) is moved aside as `*.corrupt-<ts>`, the
   failure is logged at ERROR level, and the node starts empty and re-syncs from its peers.
6. A restart in two steps: `open` reads only the file's metadata (the watermark its rows
   reflect), so the edge can start gossip and ask for what changed since at once;
   `load_states` then checks the file (rule 5's quick_check) and reads the rows into a new
   replica in a worker thread (the node joins it with its live replica when done, or drops
   what it asked on that watermark if the file is refused: gossip/snapshot.py rule 11); its
   halves `read_rows` (check, rows grouped per store) and `index_rows` (bulk load) let the
   node build the rows with a delta already received instead of indexing them alone.  Nothing flushes meanwhile
   (the edge starts `run` after the join): the loader has the connection to itself, and the
   file keeps the metadata it had.  `load` does both at once.
   Nothing flushes either while `held()` (the edge: a whole snapshot is under way): its
   install rewrites every row (rule 4), so writing the pushes that arrive meanwhile is wasted;
   it was a quarter of the CPU of ten edges joining on one core at full write load, whose
   snapshots then made no progress.  The file keeps the consistent state it had.
7. Blocks: a whole rewrite (rule 4) stores each store's registers in key order as
   `blocks(store, first, keys, regs, crc)` rows of BLOCK_KEYS keys each (`keys` and `regs`
   CBOR arrays, `crc` the CRC-32 of both), not one row per key; other kinds stay rows.  Later
   flushes write rows as before, which supersede the blocks' states on load; the removal of
   a key of a store that has blocks is a marker row (seq 0, `reg` and `state` NULL), since a
   block may hold it; a dropped or recreated store's blocks go with its rows.  Once the rows
   written past the blocks reach COMPACT_ROWS and half the keys, the next flush rewrites the
   file (so a load reads at most about half its keys as rows; a file of the format before,
   rows only, is upgraded in place and rewritten so).  Why: reading a block is a few C-level
   passes over its columns; at 1M registers reading them took 1.2-1.5 s instead of 2.1 s
   (row fetch and checks; `benchmarks/bench_edge.py --only restart`), and the whole rewrite
   1.5 s instead of about 8 s of row inserts.
"""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import is_, not_
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgekv.crdt import META, Change, Register, Replica, State, bulk_load_stores
from edgekv.crdt.codec import dumps, encode_delta
from edgekv.crdt.proofs import Certificate, ProofStore
from edgekv.crdt.seqranges import SeqRanges
from edgekv.errors import EdgeKVError
from edgekv.gossip.snapshot_file import FileBase
from edgekv.node import gcpolicy
from edgekv.node.filerows import (
    CorruptDatabase,
    LoadDropped,
    block_of,
    quick_check,
    read_meta,
    read_states,
)

__all__ = ["CorruptDatabase", "LoadReport", "ReplicaStore"]

logger = logging.getLogger("edgekv.persistence")

FORMAT = 5  # 2: registers in four columns; 3: a register is one blob; 4: + certs; 5: + blocks
BLOCK_KEYS = 1 << 14  # registers per block (rule 7): a block is a few ms of C-level work
COMPACT_ROWS = 1 << 16  # rows past the blocks before a rewrite is considered (rule 7)
DB_NAME = "edge.db"
FLUSH_INTERVAL = 0.5
FLUSH_EAGER_KEYS = 50_000  # flush early when this many keys are dirty
RELEASE_ROWS = 100_000  # hand the C heap's free pages back after this many rows (gcpolicy rule 2)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `ReplicaStore.load` found."""

    keys: int
    watermark: int
    seconds: float
    corrupt_moved_to: str | None = None


class ReplicaStore:
    """The SQLite file of one edge replica: `load` at start, then `run` flushes in the background."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        flush_interval: float = FLUSH_INTERVAL,
        eager_keys: int = FLUSH_EAGER_KEYS,
        public_keys: Sequence[Ed25519PublicKey] | None = None,
    ) -> None:
        self.dir = Path(data_dir)
        self.public_keys = public_keys  # None: the replica keeps no proofs
        self.path = self.dir / DB_NAME
        self.replica = Replica()
        self.flush_interval = flush_interval
        self.eager_keys = eager_keys
        self._dirty: dict[tuple[str, str], None] = {}
        self._rewrite = False
        self._rewrite_base: dict[str, dict[str, State]] | None = None  # rule 4
        self._saved_covered: list[tuple[int, int]] = []
        self._saved_purged = 0
        self._kick = anyio.Event()
        self._db: sqlite3.Connection | None = None
        self.flushes = 0
        self.failures = 0
        self.rows_written = 0
        self._rows_unreleased = 0  # rows written since the last gcpolicy.release()
        self.persisted_watermark = 0
        self.corrupt_moved_to: str | None = None  # where `open`/`load_states` moved a bad file
        self.loading = False  # rule 6: opened, rows not yet joined: nothing flushes
        self.held: Callable[[], bool] = bool  # rule 6: nothing flushes while true (bool(): no)
        self._meta: tuple[list[tuple[int, int]], int] = ([], 0)  # covered, purged (`open`)
        self._blocked: set[str] = set()  # stores with blocks in the file (rule 7)
        self._rows_past_blocks = 0  # rows in the file or written since its blocks (rule 7)

    # -- open / load ---------------------------------------------------------------------------

    def load(self, *, trees: bool = True) -> LoadReport:
        """Open (creating if needed) and load the file into a new `self.replica`.

        A corrupt file is moved aside and the replica left empty; never raises for bad data.
        With `trees=False` the Merkle trees are left for `Replica.build_pending_trees` (reads
        work without them; the edge builds them in a worker thread before gossip starts).
        """
        started = time.perf_counter()
        self.open()
        self.replica = self.load_states(trees=trees)
        self.loading = False
        return LoadReport(
            len(self.replica),
            self.replica.watermark,
            time.perf_counter() - started,
            self.corrupt_moved_to,
        )

    def open(self) -> int:
        """Rule 6: open (creating if needed) the file and read its metadata only; returns the
        watermark its rows reflect.  `self.replica` is a new empty replica (the live one of a
        node that loads the rows meanwhile with `load_states`).  A corrupt file is moved aside
        (the watermark is then 0)."""
        self.replica = self._new_replica()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.corrupt_moved_to = None
        self.loading = True  # until the caller has joined the rows (`loading = False`)
        try:
            self._db = self._open(check=False)  # checked by `load_states`, off the critical path
            self._meta = read_meta(self._db)
        except (sqlite3.DatabaseError, CorruptDatabase, EdgeKVError) as exc:
            self.corrupt_moved_to = self._quarantine(exc)
            self._db = self._open()
            self._meta = ([], 0)
        ranges = SeqRanges()
        ranges.update(self._meta[0])
        return ranges.watermark

    def load_states(self, *, trees: bool = False) -> Replica:
        """Rule 6: the rows of the file `open` opened, in a NEW replica (`read_rows` then
        `index_rows`; pure CPU and reads of this file: run it in a worker thread while
        nothing flushes).  A damaged row moves the file aside (`corrupt_moved_to`) and gives
        an empty replica."""
        rows = self.read_rows()
        return self._new_replica() if rows is None else self.index_rows(rows, trees=trees)

    def read_rows(self, wanted: Callable[[], bool] = lambda: True) -> FileBase | None:
        """Rule 6, first half: the file's states grouped per store (not indexed yet), its
        covered ranges, purge mark and certificates; None when the check or a row fails (the
        file moved aside) or once `wanted`, asked between blocks, says the rows are not wanted
        any more (a whole snapshot replaces them; the file stays)."""
        db = self._db
        assert db is not None, "open() first"
        # Loading allocates millions of objects that all live on: pausing the cyclic GC while
        # it runs saves a fifth of the time (re-enabled at once, whatever happens).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if not wanted():
                raise LoadDropped
            quick_check(db)
            rows = self._read_rows(db, wanted)
        except LoadDropped:
            logger.info("event=file_dropped path=%s reason=whole_snapshot", self.path)
            rows = None
        except (sqlite3.DatabaseError, CorruptDatabase, EdgeKVError) as exc:
            self.corrupt_moved_to = self._quarantine(exc)
            self._db = self._open()
            rows = None
        finally:
            if gc_was_enabled:
                gc.enable()
        gcpolicy.release()  # the rows and decode buffers of the load (in the loader's thread)
        return rows

    def index_rows(self, rows: FileBase, *, trees: bool = False) -> Replica:
        """Rule 6, second half: `rows` bulk-loaded into a new replica (which takes their
        dicts), its proof store holding their certificates, taken as swept (they were when
        saved).  Pure CPU: a worker thread."""
        replica = self._new_replica()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            bulk_load_stores(replica, rows.groups, rows.covered, rows.purged, trees=trees)
        finally:
            if gc_was_enabled:
                gc.enable()
        if replica.proofs is not None:
            replica.proofs.add(rows.certs)
            replica.proofs.drain_journal()
            replica.proofs.settle()  # swept when saved: no sweep of every state at once
        self._saved_covered = list(replica.covered)
        self._saved_purged = replica.purged
        self.persisted_watermark = replica.watermark
        return replica

    def _open(self, *, check: bool = True) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if check:
                quick_check(db)
            db.execute(
                "CREATE TABLE IF NOT EXISTS certs (sig BLOB PRIMARY KEY, key_id BLOB NOT NULL,"
                " lo INTEGER NOT NULL, hi INTEGER NOT NULL, entries BLOB NOT NULL) WITHOUT ROWID"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS states ("
                " store TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,"
                " reg BLOB, state BLOB,"
                " PRIMARY KEY (store, key)) WITHOUT ROWID"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS blocks ("
                " store TEXT NOT NULL, first TEXT NOT NULL, keys BLOB NOT NULL,"
                " regs BLOB NOT NULL, crc INTEGER NOT NULL,"
                " PRIMARY KEY (store, first)) WITHOUT ROWID"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB)")
            row = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is None or row[0] == FORMAT - 1:  # the one before reads as this one
                db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
            elif row[0] != FORMAT:
                raise CorruptDatabase(f"unknown database format {row[0]!r}")
            self._blocked = {r[0] for r in db.execute("SELECT DISTINCT store FROM blocks")}
        except BaseException:
            db.close()
            raise
        return db

    def _read_rows(self, db: sqlite3.Connection, wanted: Callable[[], bool]) -> FileBase:
        ranges, purged = self._meta
        try:
            groups, self._rows_past_blocks = read_states(db, wanted)
            certs: list[Certificate] = []
            if self.public_keys is not None:
                keys = ProofStore(self.public_keys, journal=False).keys  # by key id
                rows = db.execute("SELECT key_id, lo, hi, entries, sig FROM certs").fetchall()
                certs = [Certificate.from_wire(list(row)) for row in rows if row[0] in keys]
        except (EdgeKVError, LoadDropped):
            raise
        except Exception as exc:  # anything else a damaged row can make the decoder do
            raise CorruptDatabase(f"undecodable row: {exc!r}") from exc
        return FileBase(groups, list(ranges), purged, certs)

    def _quarantine(self, exc: BaseException) -> str:
        """Move the bad file aside, reset the replica; return where it went."""
        if self._db is not None:
            self._db.close()
            self._db = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        target = f"{self.path}.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{target}{suffix}")
        logger.error(
            "event=corrupt_database path=%s moved_to=%s reason=%r action=start_empty_and_resync",
            self.path,
            target,
            str(exc),
        )
        self.replica = self._new_replica()
        return target

    def _new_replica(self) -> Replica:
        replica = Replica()
        if self.public_keys is not None:
            replica.use_proofs(ProofStore(self.public_keys))
        return replica

    # -- flushing --------------------------------------------------------------------------------

    def rewrite_all(self, base: dict[str, dict[str, State]] | None = None) -> None:
        """Rule 4: rewrite every row at the next flush (after a snapshot was installed); with
        `base`, store -> a copy of its states whose every later change is reported to
        `on_changes` (the next flush writes those stores from it, not from a copy of its own)."""
        self._rewrite = True
        self._rewrite_base = base
        self._kick.set()

    def on_changes(self, changes: list[Change]) -> None:
        """Runtime listener: remember which keys to write at the next flush."""
        dirty = self._dirty
        for change in changes:
            dirty[(change.store, change.key)] = None
        if len(dirty) >= self.eager_keys and not self.held():
            self._kick.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush every `flush_interval` until cancelled; a final flush happens in `close`."""
        task_status.started()
        while True:
            with anyio.move_on_after(self.flush_interval):
                await self._kick.wait()
            self._kick = anyio.Event()
            try:
                await self.flush()
            except Exception as exc:  # the node keeps serving; the next flush retries
                self.failures += 1
                logger.error("event=flush_failed path=%s error=%r", self.path, exc)

    def _snapshot(self) -> _Batch:
        replica = self.replica
        dirty, self._dirty = self._dirty, {}
        everything: list[tuple[str, list[str] | None, dict[str, State]]] | None = None
        blocked = self._blocked
        if self._rewrite:
            self._rewrite = False
            base, self._rewrite_base = self._rewrite_base, None
            if base is None:
                dirty = {}  # every state is in `everything`
                base = {}
            else:  # rule 4: the keys changed since `base` was copied are written on top
                blocked = blocked | set(base)
            # each store's keys in order and a copy of its states (C-level, ~40 ms per 1M
            # keys on the loop; the rare kinds joined in place copied), or its copy from
            # `base` (keys sorted in the thread): looked up, and the blocks and rows made, in
            # the thread
            everything = [
                (name, None, base[name])
                if name in base
                else (name, list(whole.keys), whole.states_copy())
                for name, whole in replica.stores.items()
            ]
        # A store (re)created or dropped drops its older keys without per-key changes: such a
        # store is rewritten whole (its rows deleted, its current keys written).
        rewrite = [key for store, key in dirty if store == META]
        for name in rewrite:
            sr = replica.stores.get(name)
            if sr is not None:
                dirty.update(((name, k), None) for k in sr.states)
        upserts: list[tuple[Any, ...]] = []
        deletes: list[tuple[str, str]] = []
        for store, key in dirty:
            state = replica.state(store, key)
            if state is not None:
                upserts.append(_row(store, (key, state)))
            elif store in blocked and store not in rewrite:  # its block may hold the key
                upserts.append((store, key, 0, None, None))  # a removal marker (rule 7)
            else:
                deletes.append((store, key))
        meta: list[Any] = []
        covered = list(replica.covered)
        if covered != self._saved_covered:
            meta.append(("covered", dumps([list(r) for r in covered])))
            self._saved_covered = covered
        if replica.purged != self._saved_purged:
            meta.append(("purged", replica.purged))
            self._saved_purged = replica.purged
        added: list[Certificate] = []
        dropped: list[Certificate] = []
        if replica.proofs is not None:
            added, dropped = replica.proofs.drain_journal()
        return _Batch(rewrite, upserts, deletes, meta, added, dropped, everything)

    async def flush(self) -> int:
        """Write every dirty key and changed metadata; returns rows written (none while the
        rows load, rule 6: the live replica does not hold them yet, nor while `held()`)."""
        proofs = self.replica.proofs
        if (
            self.loading
            or self.held()
            or (
                not self._dirty
                and not (proofs is not None and (proofs.added or proofs.dropped))
                and not self._rewrite
                and list(self.replica.covered) == self._saved_covered
                and (self.replica.purged == self._saved_purged)
            )
        ):
            return 0
        watermark = self.replica.watermark
        batch = self._snapshot()
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except BaseException:
            # not written (disk full, I/O error, cancelled first): keep it for the next flush
            for store, key, *_ in batch.upserts:
                self._dirty[(store, key)] = None
            self._dirty.update(dict.fromkeys(batch.deletes))
            self._dirty.update(((META, name), None) for name in batch.rewrite)
            self._rewrite = self._rewrite or batch.everything is not None
            self._saved_covered, self._saved_purged = [], -1
            proofs = self.replica.proofs
            if proofs is not None:  # journal them again
                proofs.added[:0] = batch.certs_added
                proofs.dropped[:0] = batch.certs_dropped
            raise
        rows = len(batch.upserts) + len(batch.deletes)
        if batch.everything is not None:
            self._blocked = {name for name, keys, _ in batch.everything if keys}
            self._rows_past_blocks = 0
            rows += sum(len(keys or ()) for _, keys, _ in batch.everything)
        self._blocked -= set(batch.rewrite)  # (their blocks were deleted)
        self._rows_past_blocks += len(batch.upserts)
        if self._rows_past_blocks >= max(COMPACT_ROWS, len(self.replica) // 2):
            self._rewrite = True  # rule 7: the rows past the blocks would slow the next load
        self.flushes += 1
        self.rows_written += rows
        self._rows_unreleased += rows
        if self._rows_unreleased >= RELEASE_ROWS:  # a bulk arrived (gossip or a snapshot)
            self._rows_unreleased = 0
            await anyio.to_thread.run_sync(gcpolicy.release)
        self.persisted_watermark = watermark
        return rows

    def _write(self, batch: _Batch) -> None:
        db = self._db
        if db is None:
            return
        db.execute("BEGIN")
        try:
            if batch.everything is not None:
                db.execute("DELETE FROM states")
                db.execute("DELETE FROM blocks")
                for i, (name, keys, states) in enumerate(batch.everything):
                    if keys is None:  # a copy given to `rewrite_all` (rule 4)
                        keys = sorted(states)
                        batch.everything[i] = (name, keys, states)
                    blocks, rows = _blocks_and_rows(name, keys, states)
                    db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", blocks)
                    db.executemany("INSERT INTO states VALUES (?, ?, ?, ?, ?)", rows)
            for name in batch.rewrite:
                db.execute("DELETE FROM states WHERE store = ?", (name,))
                db.execute("DELETE FROM blocks WHERE store = ?", (name,))
            if batch.upserts:
                db.executemany(
                    "INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?, ?)", batch.upserts
                )
            if batch.deletes:
                db.executemany("DELETE FROM states WHERE store = ? AND key = ?", batch.deletes)
            if batch.meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", batch.meta)
            if batch.certs_added:
                db.executemany(
                    "INSERT OR IGNORE INTO certs VALUES (?, ?, ?, ?, ?)",
                    [(c.signature, c.key_id, c.lo, c.hi, c.entries) for c in batch.certs_added],
                )
            if batch.certs_dropped:
                db.executemany(
                    "DELETE FROM certs WHERE sig = ?", [(c.signature,) for c in batch.certs_dropped]
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Final flush, checkpoint the WAL and close (shielded: runs even while cancelled)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            finally:
                db, self._db = self._db, None
                if db is not None:
                    await anyio.to_thread.run_sync(_checkpoint_and_close, db)


def _checkpoint_and_close(db: sqlite3.Connection) -> None:
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def _row(store: str, item: tuple[str, State]) -> tuple[Any, ...]:
    key, state = item
    if type(state) is Register:
        return (store, key, state.seq, state, None)
    return (store, key, state.seq, None, dumps(encode_delta(state)))


def _blocks_and_rows(
    store: str, keys: list[str], states: dict[str, State]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A whole store's block rows (the registers of each BLOCK_KEYS of its keys in order) and
    state rows (its other kinds, through `_row`): rule 7.  Block by block, so that no C-level
    pass holds the GIL for long in the writer thread: one lookup pass over 1M keys held it
    for about 0.3 s, which every read on the event loop waited for."""
    blocks: list[tuple[Any, ...]] = []
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(keys), BLOCK_KEYS):
        ks = keys[i : i + BLOCK_KEYS]
        vals = list(map(states.__getitem__, ks))
        is_reg = list(map(is_, map(type, vals), repeat(Register)))
        if all(is_reg):
            reg_keys, regs = ks, cast("list[Any]", vals)
        else:
            reg_keys, regs = list(compress(ks, is_reg)), list(compress(vals, is_reg))
            others = compress(zip(ks, vals, strict=True), map(not_, is_reg))
            rows += map(_row, repeat(store), others)
        if reg_keys:
            blocks.append((store, reg_keys[0], *block_of(reg_keys, regs)))
    return blocks, rows


@dataclass(slots=True)
class _Batch:
    rewrite: list[str]
    upserts: list[tuple[Any, ...]]
    deletes: list[tuple[str, str]]
    meta: list[Any]
    certs_added: list[Certificate] = field(default_factory=list)
    certs_dropped: list[Certificate] = field(default_factory=list)
    everything: list[tuple[str, list[str] | None, dict[str, State]]] | None = None
