"""The origin's log: one interface, two implementations (SQLite file, PostgreSQL database).

The sequencer, recovery and compaction are written against `CommitLog`; `open_log(spec, ...)`
picks the implementation: no spec (or "sqlite") is the embedded SQLite log in the data dir
(`wal.WriteAheadLog`, the default), a `postgresql://...` URL is `pglog.PostgresLog`.  Both
pass the same suite (tests/test_origin_log.py).

The contract, whatever the storage:
1. `write(rows, high)` takes one commit group (rows of consecutive seqs, the last at `high`);
   it may only stage them.  `sync()` makes durable every group whose `write` returned before
   it started, and raises `LogError` if it cannot say so; the sequencer acks nothing before.
2. `high` is the highest seq ever written, and never goes down: seqs are never reused, even
   after compaction removed the row that carried it.  `rows()` yields every row in seq order.
3. `compact(keep, rewrites, upto)` removes superseded rows at or below `upto` (see wal.py).
4. `write` also takes the request outcomes of the group (sequencer rule 7); the log keeps
   them in the same transaction and hands the newest back through `recent_requests`, so
   neither a restarted origin nor a new leader applies a retried write twice.
5. `close()` releases the log (for PostgreSQL: the leadership, see pglog.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from .wal import LogError, Request, Row, WriteAheadLog

__all__ = ["CommitLog", "LogError", "Request", "Row", "is_postgres", "open_log"]


class CommitLog(Protocol):
    """What the sequencer needs of a log (see the module docstring)."""

    high: int
    durable: bool

    def rows(self, batch: int = 65536) -> Iterator[list[Row]]: ...

    def count(self) -> int: ...

    def append(self, rows: Sequence[Row], high: int) -> None: ...

    def write(self, rows: Sequence[Row], high: int, requests: Sequence[Request] = ()) -> None: ...

    def recent_requests(self, limit: int) -> list[tuple[bytes, bytes]]: ...

    def sync(self) -> None: ...

    def compact(
        self, keep: Sequence[int], rewrites: Sequence[tuple[bytes, int]], upto: int
    ) -> int: ...

    def close(self) -> None: ...


def is_postgres(spec: str | None) -> bool:
    return spec is not None and spec.startswith(("postgresql://", "postgres://"))


def open_log(
    spec: str | None, data_dir: Path | None, *, synchronous: str = "FULL", owner: str = ""
) -> CommitLog:
    """The log named by `spec` (blocking: run it in a worker thread)."""
    if spec is None or spec == "sqlite":
        path = ":memory:" if data_dir is None else data_dir / "origin.sqlite3"
        return WriteAheadLog(path, synchronous=synchronous)
    if is_postgres(spec):
        from .pglog import PostgresLog

        return PostgresLog(spec, owner=owner, lead=False)  # Origin decides: lead or follow
    raise LogError(f"unknown log {spec!r}: use 'sqlite' or a postgresql:// URL")
