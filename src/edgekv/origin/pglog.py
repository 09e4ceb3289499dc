"""The origin's log in PostgreSQL (psycopg 3, blocking calls run in worker threads).

Theory of operation
1. Tables: `edgekv_log(seq PRIMARY KEY, store, key, delta)` (the rows of wal.py) and
   `edgekv_meta(name PRIMARY KEY, value)` holding `term` and `high` (the high seq at the last
   compaction, as in wal.py rule 2).  Created on first use under a transaction-scoped
   advisory lock, so two origins starting together do not race.
2. Leadership.  Several origins may open one database; exactly one leads.  The leader holds a
   session advisory lock (`pg_try_advisory_lock(LOCK_KEY)`) for as long as its connection
   lives, and on taking it increments `term` (it now owns that term).  PostgreSQL drops the
   lock when the leader's session ends: at once when its process dies (the socket closes),
   within the TCP keepalive settings of the session when its host or network dies.
3. Fencing.  Every commit reads `term` with `FOR SHARE` and inserts nothing unless it is
   still the leader's own term; a takeover's `UPDATE` of that row waits for commits in
   flight, and every later commit of the deposed leader sees the new term (under READ
   COMMITTED a row lock taken after a concurrent update reads the updated row).  So a
   deposed leader (a stale process whose session was cut, then reconnected, or a paused
   one) can never commit; `seq` being the primary key is a second barrier against reusing
   a seq.
4. Group commit.  `write(rows, high)` only stages a group (no I/O: it runs on the event
   loop); `sync()` (run in a flush thread by the sequencer) takes every staged row and commits
   them under a lock: a sync that started after a `write` returned either commits that group
   or waits for the sync that took it.  One commit is ONE statement in autocommit mode (the
   term check, the rows and the request outcomes, each column sent as one binary array and
   expanded by `unnest`; `_COMMIT`), so ONE round trip and one implicit transaction: the
   explicit BEGIN / SELECT ... FOR SHARE / COPY / COMMIT it replaced took five round trips
   and about three times the CPU per group, in the origin and in the server
   (benchmarks/bench_fleet.py, "commit path").  psycopg prepares it after its first uses.
   A failed commit raises `LogError` (`Fenced` when the term moved): the sequencer fails
   the groups in flight and the origin steps down (origin/follower.py).
5. Request outcomes (sequencer rule 7) go to `edgekv_requests(rid PRIMARY KEY, seq,
   outcome)` in the same transaction as their rows; a new leader reads the newest with
   `recent_requests`, and compaction drops those a million seqs old.
6. Followers read the log (`rows_after`) without the lock and take over with `try_lead()`;
   a leader checks `still_leading()` between commits and steps down when it is deposed
   (origin/follower.py).
7. One signing key for all the origins of a log: `edgekv_keys` holds the public key of the
   first origin that started, and `check_signing_key` refuses an origin with another one
   (each origin verifies what it receives from edges, which the others signed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .wal import KEEP_REQUEST_SEQS, LogError, Request, Row

__all__ = ["LOCK_KEY", "Fenced", "PostgresLog"]

logger = logging.getLogger("edgekv.origin")

LOCK_KEY = 0x65646765_6B760001  # "edgekv\x00\x01" as a bigint
_SCHEMA_KEY = LOCK_KEY + 1
# the leader's session: PostgreSQL probes an idle connection after 2 s, then every second,
# and drops it (and the leadership) after 3 failed probes: a dead host is noticed in ~5 s
_SESSION_OPTIONS = "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS edgekv_log (
        seq BIGINT PRIMARY KEY, store TEXT NOT NULL, key TEXT NOT NULL, delta BYTEA NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS edgekv_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS edgekv_requests (
        rid BYTEA PRIMARY KEY, seq BIGINT NOT NULL, outcome BYTEA NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS edgekv_requests_seq ON edgekv_requests (seq)",
    "CREATE TABLE IF NOT EXISTS edgekv_keys (name TEXT PRIMARY KEY, public BYTEA NOT NULL)",
    "INSERT INTO edgekv_meta VALUES ('term', 0), ('high', 0) ON CONFLICT DO NOTHING",
)


# one commit group (rules 3 and 4): the rows and the request outcomes go in only if the term
# is still this leader's; the statement returns the term it saw
_COMMIT = """WITH term AS (SELECT value FROM edgekv_meta WHERE name = 'term' FOR SHARE),
    log AS (INSERT INTO edgekv_log (seq, store, key, delta)
        SELECT * FROM unnest(%b::int8[], %b::text[], %b::text[], %b::bytea[])
        WHERE (SELECT value FROM term) = %b::int8),
    requests AS (INSERT INTO edgekv_requests (rid, seq, outcome)
        SELECT * FROM unnest(%b::bytea[], %b::int8[], %b::bytea[])
        WHERE (SELECT value FROM term) = %b::int8)
    SELECT value FROM term"""


class Fenced(LogError):
    """Another origin took over the log: this one must not commit (see rule 3)."""

    code = "fenced"


def _connect(dsn: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        raise LogError("the PostgreSQL log needs psycopg: pip install 'psycopg[binary]'") from exc
    try:
        return psycopg.connect(dsn, autocommit=True, options=_SESSION_OPTIONS, connect_timeout=5)
    except psycopg.Error as exc:
        raise LogError(f"cannot connect to the log database: {exc}") from exc


def _redact(dsn: str) -> str:
    """The DSN without its password (for messages)."""
    head, at, tail = dsn.rpartition("@")
    if not at:
        return dsn
    scheme, sep, cred = head.partition("://")
    return f"{scheme}{sep}{cred.partition(':')[0]}@{tail}"


class PostgresLog:
    """The log in a PostgreSQL database (see the module docstring)."""

    durable = True

    def __init__(
        self, dsn: str, *, owner: str = "", lead: bool = True, lead_wait: float = 2.0
    ) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn = dsn
        self.where = _redact(dsn)
        self.owner = owner
        self.term = 0
        self.leader = False
        self._conn = _connect(dsn)
        self._lock = threading.Lock()  # one statement stream per connection
        self._staged: list[Row] = []
        self._staged_requests: list[Request] = []
        self._staged_lock = threading.Lock()
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (_SCHEMA_KEY,))
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
            self.high = self.read_high()
            # a session that just ended may hold the lock for a moment: its backend exits
            # asynchronously
            deadline = time.monotonic() + lead_wait
            while lead and not self.try_lead():
                if time.monotonic() >= deadline:
                    raise LogError(f"another origin leads the log at {self.where}")
                time.sleep(0.05)
        except psycopg.Error as exc:
            self._conn.close()
            raise LogError(f"cannot open the log at {self.where}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    @property
    def backend_pid(self) -> int:
        """The process id of this log's session on the server (benchmarks measure its CPU)."""
        return int(self._conn.info.backend_pid)

    # -- leadership ----------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Take the leadership if no live session holds it: bump the term, read `high`."""
        if self.leader:
            return True
        with self._locked("cannot take the lead of the log"):
            got = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s::bigint)", (LOCK_KEY,)
            ).fetchone()[0]
            if not got:
                return False
            row = self._conn.execute(
                "UPDATE edgekv_meta SET value = value + 1 WHERE name = 'term' RETURNING value"
            ).fetchone()
            self.term = int(row[0])
            self.leader = True
        self.high = self.read_high()
        logger.info("event=leading log=%s term=%d high=%d", self.where, self.term, self.high)
        return True

    def current_term(self) -> int:
        with self._locked():
            row = self._conn.execute("SELECT value FROM edgekv_meta WHERE name = 'term'").fetchone()
        return int(row[0])

    @contextmanager
    def _locked(self, failed: str = "log read failed") -> Iterator[None]:
        """Hold the session; a database error in the block is a `LogError` saying `failed`."""
        try:
            with self._lock:
                yield
        except self._psycopg.Error as exc:
            raise LogError(f"{failed}: {exc}") from exc

    def still_leading(self) -> bool:
        """False once this origin is deposed: the term moved on, or its session (and with it
        the lock) is gone.  A leader asks between commits (origin/follower.py rule 4)."""
        if self.leader:
            try:
                self.leader = self.current_term() == self.term
            except LogError:
                self.leader = False
        return self.leader

    # -- reading ------------------------------------------------------------------------------

    def read_high(self) -> int:
        """The highest seq ever committed (rule 1)."""
        with self._locked():
            row = self._conn.execute(
                "SELECT GREATEST((SELECT COALESCE(MAX(seq), 0) FROM edgekv_log),"
                " (SELECT value FROM edgekv_meta WHERE name = 'high'))"
            ).fetchone()
        return int(row[0])

    def rows(self, batch: int = 65536) -> Iterator[list[Row]]:
        """Every row in seq order, in lists of up to `batch` rows (a server-side cursor)."""
        with self._locked(), self._conn.transaction():
            cur = self._conn.cursor(name="edgekv_rows", binary=True)
            cur.itersize = batch
            cur.execute(
                "SELECT seq, store, key, delta FROM edgekv_log WHERE seq <= %s ORDER BY seq",
                (self.high,),
            )
            while chunk := cur.fetchmany(batch):
                yield [(s, st, k, bytes(d)) for s, st, k, d in chunk]
            cur.close()

    def rows_after(self, seq: int, limit: int = 65536) -> list[Row]:
        """Up to `limit` rows after `seq`, in seq order (a follower's tail)."""
        with self._locked():
            cur = self._conn.cursor(binary=True)
            cur.execute(
                "SELECT seq, store, key, delta FROM edgekv_log WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            )
            return [(s, st, k, bytes(d)) for s, st, k, d in cur.fetchall()]

    def recent_requests(self, limit: int) -> list[tuple[bytes, bytes]]:
        """The newest `limit` request outcomes, oldest first (sequencer rule 7)."""
        with self._locked():
            cur = self._conn.cursor(binary=True)
            cur.execute(
                "SELECT rid, outcome FROM (SELECT rid, outcome, seq FROM edgekv_requests"
                " ORDER BY seq DESC LIMIT %s) AS r ORDER BY seq",
                (limit,),
            )
            return [(bytes(r), bytes(o)) for r, o in cur.fetchall()]

    def check_signing_key(self, public: bytes) -> None:
        """Every origin of one log signs with one key (rule 7): the first to start records
        its public key; another key is refused with a LogError that says so."""
        with self._locked():
            self._conn.execute(
                "INSERT INTO edgekv_keys VALUES ('signing', %s) ON CONFLICT DO NOTHING", (public,)
            )
            row = self._conn.execute(
                "SELECT public FROM edgekv_keys WHERE name = 'signing'"
            ).fetchone()
        if bytes(row[0]) != public:
            raise LogError(
                f"the origins of the log at {self.where} sign with another key: give every"
                " origin the same --signing-key (edges verify one origin key, and each origin"
                " verifies what the others signed)"
            )

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM edgekv_log").fetchone()[0])

    # -- writing ------------------------------------------------------------------------------

    def append(self, rows: Sequence[Row], high: int) -> None:
        self.write(rows, high)
        self.sync()

    def write(self, rows: Sequence[Row], high: int, requests: Sequence[Request] = ()) -> None:
        """Stage one commit group and its request outcomes (no I/O); `sync()` commits them."""
        if not self.leader:
            raise Fenced("this origin does not lead the log")
        with self._staged_lock:
            self._staged.extend(rows)
            self._staged_requests.extend(requests)
        self.high = high

    def sync(self) -> None:
        """Commit everything staged in one fenced transaction (rules 3 and 4)."""
        with self._lock:
            with self._staged_lock:
                rows, self._staged = self._staged, []
                requests, self._staged_requests = self._staged_requests, []
            if rows:
                self._commit(rows, requests)

    def _fenced(self) -> None:
        """Inside a transaction: abort unless this origin's term is still the current one."""
        row = self._conn.execute(
            "SELECT value FROM edgekv_meta WHERE name = 'term' FOR SHARE"
        ).fetchone()
        if int(row[0]) != self.term:
            self.leader = False
            raise Fenced(f"the log moved to term {row[0]} (this origin led term {self.term})")

    def _commit(self, rows: list[Row], requests: list[Request]) -> None:
        """One fenced commit: one statement, one round trip (rules 3 and 4)."""
        params = (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            self.term,
            [q[0] for q in requests],
            [q[1] for q in requests],
            [q[2] for q in requests],
            self.term,
        )
        try:
            row = self._conn.execute(_COMMIT, params).fetchone()
        except self._psycopg.Error as exc:
            raise LogError(f"log commit failed: {exc}") from exc
        if row is None or int(row[0]) != self.term:
            self.leader = False
            term = None if row is None else row[0]
            raise Fenced(f"the log moved to term {term} (this origin led term {self.term})")

    def compact(self, keep: Sequence[int], rewrites: Sequence[tuple[bytes, int]], upto: int) -> int:
        """Drop superseded rows at or below `upto` (see wal.py rule 4); returns rows removed."""
        with self._locked("log compaction failed"), self._conn.transaction():
            self._fenced()
            conn = self._conn
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS edgekv_keep (seq BIGINT PRIMARY KEY)")
            conn.execute("TRUNCATE edgekv_keep")
            with conn.cursor().copy("COPY edgekv_keep (seq) FROM STDIN") as copy:
                for s in sorted(set(keep)):
                    copy.write_row((s,))
            removed = conn.execute(
                "DELETE FROM edgekv_log WHERE seq <= %s"
                " AND seq NOT IN (SELECT seq FROM edgekv_keep)",
                (upto,),
            ).rowcount
            conn.cursor().executemany(
                "UPDATE edgekv_log SET delta = %s WHERE seq = %s", list(rewrites)
            )
            conn.execute(
                "UPDATE edgekv_meta SET value = GREATEST(value, %s) WHERE name = 'high'",
                (self.high,),
            )
            conn.execute("TRUNCATE edgekv_keep")
            conn.execute(  # the outcomes of old requests: nobody retries them any more
                "DELETE FROM edgekv_requests WHERE seq <= %s",
                (upto - KEEP_REQUEST_SEQS,),
            )
        return int(removed)

    def close(self) -> None:
        """Release the leadership and close the session."""
        if not self._conn.closed:  # a deposed leader may still hold the lock
            try:
                with self._lock:
                    self._conn.execute("SELECT pg_advisory_unlock_all()")
            except self._psycopg.Error:
                pass  # the session is gone: so is its lock
        self.leader = False
        self._conn.close()
