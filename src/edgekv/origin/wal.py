"""The origin's write-ahead log: committed deltas in SQLite (WAL mode), fsynced before any ack.

Synchronous on purpose: the group committer calls `write` (a transaction into the OS page
cache, no flush: cheap enough for the event loop) and then `sync` (the disk flush), on the
event loop by default or in worker threads (`Sequencer(flush_threads=N)`), where the flush of
one commit group overlaps the planning and writing of the next.

Theory of operation
1. One row per seq: `log(seq PRIMARY KEY, store, key, delta)` where `delta` is the CBOR array
   of `crdt.codec.encode_delta`.  A seq whose op changed nothing is never handed out, so the
   seqs in the log are contiguous from 1 up to `high` (compaction removes rows, never seqs).
2. `high`, the highest seq ever committed, is the larger of `MAX(seq)` and `meta.high`.  Only
   compaction removes rows, and it writes the high seq of that moment into `meta.high` in its
   own transaction; every later row has a higher seq.  So after a crash `high + 1` is the next
   seq, never reused, even if compaction had removed the row that carried `high`; and a
   commit group writes nothing but its rows (a `meta` write per group cost a second B-tree
   page per transaction, more than half the cost of a one-row group).
3. `write` is one transaction for a whole commit group.  With `synchronous="FULL"` (the
   default) SQLite itself runs with synchronous=NORMAL (it does not flush at commit, but it
   still syncs the WAL before every checkpoint and the WAL header when the WAL is reused) and
   durability comes from `sync`: an fdatasync of the WAL file, which makes every transaction
   whose `write` returned before the sync started durable (survives kill -9 and power loss).
   That is the fsync discipline of synchronous=FULL, minus the rule that one flush must end
   before the next commit may start: several flushes may be in flight, and the committer acks
   a group only once a sync that started after its write has returned.  Each thread (the
   event loop's included) syncs through its own descriptor (see `sync`: a writeback error is reported once per open file,
   so concurrent flushes must not share one).  The directory is synced when a descriptor is
   opened (as SQLite does for a new WAL).  `append` is `write` + `sync`.  "EXTRA", "NORMAL"
   and "OFF" are passed to SQLite as they are (NORMAL and OFF are not durable per commit: for
   tests and bulk loads only).
4. `compact(keep, rewrites, upto)` deletes rows at or below `upto` that are not in `keep` (the
   seq of every key's latest state) and replaces the rows in `rewrites` by the key's whole state
   (sorted sets and Bloom filters are logged as partial deltas).  Replaying the compacted log
   gives the same states: a key's latest state at seq s carries the effect of every older row.
5. Request outcomes (sequencer rule 7: a client's request id, the last seq of its command,
   the outcome) go to `requests` in the transaction of their group's rows, so they are
   durable exactly when the write is; a restarted origin loads the newest with
   `recent_requests`, and a client that retries across the restart is answered, not
   applied twice.  The window is bounded by seqs: compaction drops the outcomes more than
   `KEEP_REQUEST_SEQS` seqs old (and the sequencer remembers at most `MAX_OUTCOMES`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import EdgeKVError

Row = tuple[int, str, str, bytes]  # seq, store, key, encoded delta
Request = tuple[bytes, int, bytes]  # request id, its last seq, its outcome (sequencer rule 7)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq   INTEGER PRIMARY KEY,
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    delta BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    rid     BLOB PRIMARY KEY,
    seq     INTEGER NOT NULL,
    outcome BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_seq ON requests (seq);
"""
KEEP_REQUEST_SEQS = 1_000_000  # compaction keeps the request outcomes of this many seqs


class LogError(EdgeKVError):
    """The log could not be read or written (disk full, corruption, another origin has it)."""

    code = "log_error"
    http_status = 503


class WriteAheadLog:
    """The SQLite file holding every committed delta (see the module docstring)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        mode = synchronous.upper()
        if mode not in ("FULL", "EXTRA", "NORMAL", "OFF"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        in_memory = str(path) == ":memory:"
        # FULL: our own fdatasync of the WAL file (see rule 3), so SQLite itself runs NORMAL
        self.durable = mode == "FULL" and not in_memory
        try:
            if not in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'NORMAL' if self.durable else mode}")
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # one origin per log
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LogError(f"cannot open the log {self.path}: {exc}") from exc
        self._conn = conn
        self._fds = threading.local()  # .fd: this thread's descriptor of the WAL file
        self._all_fds: list[int] = []
        self._fds_lock = threading.Lock()
        self.high = self._read_high()

    def _read_high(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'high'").fetchone()
        top = self._conn.execute("SELECT MAX(seq) FROM log").fetchone()
        return max(int(row[0]) if row else 0, int(top[0] or 0))

    def rows(self, batch: int = 65536) -> Iterator[list[Row]]:
        """Every row in seq order, in lists of up to `batch` rows."""
        cur = self._conn.execute("SELECT seq, store, key, delta FROM log ORDER BY seq")
        while chunk := cur.fetchmany(batch):
            yield chunk

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM log").fetchone()[0])

    def append(self, rows: Sequence[Row], high: int) -> None:
        """Commit `rows` (the last of them at seq `high`) in one durable transaction."""
        self.write(rows, high)
        self.sync()

    def write(self, rows: Sequence[Row], high: int, requests: Sequence[Request] = ()) -> None:
        """Commit `rows` (the last at seq `high`) and the group's request outcomes (rule 5)
        in one transaction; durable after `sync()`."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)
                if requests:
                    conn.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?)", requests)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LogError(f"log write failed: {exc}") from exc
        self.high = high

    def sync(self) -> None:
        """Flush every transaction written so far to disk (a no-op unless `durable`).

        Thread-safe: may run in several threads at once, and concurrently with `write`.  Each
        thread flushes through its own descriptor of the WAL file: the kernel reports a failed
        writeback once per open file, so with a shared descriptor one flush could take the
        error and a concurrent one return success for pages that were lost; with one
        descriptor per thread every flush that overlaps the failure reports it.
        """
        if not self.durable:
            return
        try:
            fd: int = getattr(self._fds, "fd", -1)
            if fd < 0:
                fd = self._open_wal_fd()
            os.fdatasync(fd)
        except OSError as exc:
            raise LogError(f"log flush failed: {exc}") from exc

    def _open_wal_fd(self) -> int:
        """This thread's descriptor of the WAL file (fdatasync flushes the file, whatever the
        descriptor); the directory is synced too, so that a newly created WAL file is found
        after a crash."""
        fd = os.open(f"{self.path}-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            os.close(fd)
            raise
        with self._fds_lock:
            self._all_fds.append(fd)
        self._fds.fd = fd
        return fd

    def recent_requests(self, limit: int) -> list[tuple[bytes, bytes]]:
        """The newest `limit` request outcomes, oldest first (rule 5)."""
        try:
            got = self._conn.execute(
                "SELECT rid, outcome FROM (SELECT rid, outcome, seq FROM requests"
                " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LogError(f"log read failed: {exc}") from exc
        return [(bytes(r), bytes(o)) for r, o in got]

    def compact(self, keep: Sequence[int], rewrites: Sequence[tuple[bytes, int]], upto: int) -> int:
        """Drop superseded rows at or below `upto`; returns how many rows were removed."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (seq INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM keep")
                conn.executemany("INSERT OR IGNORE INTO keep VALUES (?)", ((s,) for s in keep))
                cur = conn.execute(
                    "DELETE FROM log WHERE seq <= ? AND seq NOT IN (SELECT seq FROM keep)",
                    (upto,),
                )
                removed = cur.rowcount
                conn.executemany("UPDATE log SET delta = ? WHERE seq = ?", rewrites)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('high', ?)", (self.high,))
                conn.execute("DELETE FROM keep")
                conn.execute(  # the outcomes of old requests: nobody retries them any more
                    "DELETE FROM requests WHERE seq <= ?", (upto - KEEP_REQUEST_SEQS,)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise LogError(f"log compaction failed: {exc}") from exc
        return int(removed)

    def close(self) -> None:
        with self._fds_lock:
            fds, self._all_fds = self._all_fds, []
            self._fds = threading.local()  # no thread keeps a closed descriptor number
        for fd in fds:
            os.close(fd)
        self._conn.close()
