"""The sequencer: hands out seqs, group-commits to the log, applies to the replica, recovers.

Theory of operation
1. Writers call `submit(command)`: the command joins a queue and the caller waits for its
   ticket.  One commit loop takes *every* command pending when it wakes (up to `max_group`),
   plans them in order (`writer.Planner`: consecutive seqs, no seq for failures or no-ops),
   and writes the group's rows in one SQLite transaction in a worker thread.  Only after that
   transaction is durable is the group applied to the replica, are the callers woken with
   their versions, and is `on_commit(items, covers)` called to hand the deltas to gossip.
2. While one group is being flushed, the next one accumulates: with many concurrent writers
   each fsync carries many writes (group commit); a lone writer pays one fsync per write.
3. If the log write fails, the whole group fails with `LogError`, its seqs are not used, and
   the replica is untouched: what the replica holds is always exactly what the log holds.
4. Recovery replays the log in seq order (folding each key's rows into one state first) and
   resumes at `log.high + 1`; `covered` is set to 1..high because the origin has every seq.
5. Compaction runs inside the commit loop (no group is in flight) and is triggered when the
   log holds more than `compact_ratio` rows per live state and at least `compact_min_rows`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
import cbor2
import sniffio

from ..crdt import Register, Replica, State
from ..crdt.codec import decode_delta, dumps, encode_delta
from ..crdt.state import merge
from ..errors import CodecError, EdgeKVError
from .wal import LogError, Row, WriteAheadLog
from .writer import Command, Item, Planned, Planner

logger = logging.getLogger("edgekv.origin")

Covers = list[tuple[int, int]]
T = TypeVar("T")
OnCommit = Callable[[list[Item], Covers], Awaitable[None]]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread.  Under trio, trio's own thread hop is ~4x cheaper than
    anyio's wrapper around it (it sits on the latency path of every commit)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(fn, *args)
    return await anyio.to_thread.run_sync(fn, *args)


class _Ticket:
    __slots__ = ("command", "done", "error", "planned", "written_at")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.done = anyio.Event()
        self.planned: Planned | None = None
        self.error: BaseException | None = None
        self.written_at = 0


def recover(wal: WriteAheadLog, replica: Replica) -> int:
    """Rebuild `replica` from the log; returns the number of rows read.  Synchronous."""
    folded: dict[tuple[str, str], State] = {}
    n = 0
    for chunk in wal.rows():
        for seq, store, key, blob in chunk:
            try:
                delta = decode_delta(cbor2.loads(blob))
            except (CodecError, ValueError, cbor2.CBORDecodeError) as exc:
                raise LogError(f"corrupt log row at seq {seq}: {exc}") from exc
            k = (store, key)
            new = merge(folded.get(k), delta)
            if new is not None:
                folded[k] = new
        n += len(chunk)
    # store metadata first so that keys of dropped stores are recognised as dead
    metas = [(k, st) for k, st in folded.items() if k[0] == ""]
    for (store, key), st in metas:
        replica.apply(store, key, st)
    for (store, key), st in folded.items():
        if store != "":
            replica.apply(store, key, st)
    if wal.high:
        replica.covered.add(1, wal.high)
    return n


class Sequencer:
    """Group commit of planned commands (see the module docstring)."""

    def __init__(
        self,
        wal: WriteAheadLog,
        replica: Replica,
        *,
        on_commit: OnCommit | None = None,
        wall_ms: Callable[[], int] = wall_clock_ms,
        max_group: int = 4096,
        compact_ratio: float = 2.0,
        compact_min_rows: int = 1_000_000,
    ) -> None:
        self.wal = wal
        self.replica = replica
        self.on_commit = on_commit
        self.wall_ms = wall_ms
        self.max_group = max_group
        self.compact_ratio = compact_ratio
        self.compact_min_rows = compact_min_rows
        self.next_seq = wal.high + 1
        self.log_rows = 0
        self.last_written_at = 0
        self.groups = 0
        self.commits = 0
        self._send, self._recv = anyio.create_memory_object_stream[_Ticket](math.inf)
        self._lock = anyio.Lock()
        self._running = False

    async def recover(self) -> int:
        """Replay the log into the (empty) replica in a worker thread."""
        n = await run_in_thread(recover, self.wal, self.replica)
        self.log_rows = n
        self.next_seq = self.wal.high + 1
        return n

    async def submit(self, command: Command) -> tuple[Planned, int]:
        """Plan, log and apply `command`; returns its outcome and `written_at` once durable."""
        if not self._running:
            raise EdgeKVError("the origin is not running")
        ticket = _Ticket(command)
        try:
            self._send.send_nowait(ticket)
        except anyio.ClosedResourceError:
            raise EdgeKVError("the origin is not running") from None
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.planned is not None
        return ticket.planned, ticket.written_at

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The commit loop.  Runs until cancelled; pending callers are then failed."""
        self._running = True
        task_status.started()
        try:
            while True:
                group = [await self._recv.receive()]
                while len(group) < self.max_group:
                    try:
                        group.append(self._recv.receive_nowait())
                    except anyio.WouldBlock:
                        break
                try:
                    async with self._lock:
                        await self._commit(group)
                finally:
                    for ticket in group:  # cancelled before the flush: nothing was written
                        if not ticket.done.is_set():
                            ticket.error = EdgeKVError("the origin is shutting down")
                            ticket.done.set()
                if self._should_compact():
                    await self.compact()
        finally:
            self._running = False
            self._fail_pending(EdgeKVError("the origin is shutting down"))
            self.close()

    def close(self) -> None:
        """Release the queue (idempotent); `submit` fails from now on."""
        self._running = False
        self._send.close()
        self._recv.close()

    def _fail_pending(self, error: EdgeKVError) -> None:
        while True:
            try:
                ticket = self._recv.receive_nowait()
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.EndOfStream):
                return
            ticket.error = error
            ticket.done.set()

    async def _commit(self, group: list[_Ticket]) -> None:
        written_at = max(self.wall_ms(), self.last_written_at)
        planner = Planner(self.replica, self.next_seq, written_at)
        ok: list[_Ticket] = []
        for ticket in group:
            ticket.written_at = written_at
            try:
                ticket.planned = planner.execute(ticket.command)
                ok.append(ticket)
            except EdgeKVError as exc:
                ticket.error = exc
            except Exception as exc:  # a bug must not take the origin down
                logger.exception("planning failed")
                ticket.error = EdgeKVError(f"internal error: {exc!r}")
        items = planner.items
        covers: Covers = []
        if items:
            first, high = self.next_seq, planner.next_seq - 1
            rows: list[Row] = [
                (d.seq, store, key, dumps(encode_delta(d))) for store, key, d in items
            ]
            try:
                with anyio.CancelScope(shield=True):  # never abandon a flush half way
                    await run_in_thread(self.wal.append, rows, high)
            except LogError as exc:
                logger.error("%s", exc)
                for ticket in ok:
                    ticket.error, ticket.planned = exc, None
                ok = []
                items = []
            else:
                self.next_seq = high + 1
                self.last_written_at = written_at
                self.log_rows += len(rows)
                self.commits += len(rows)
                covers = [(first, high)]
                self.replica.apply_batch(items, covers)
        self.groups += 1
        for ticket in group:
            ticket.done.set()
        if items and self.on_commit is not None:
            try:
                await self.on_commit(items, covers)
            except Exception:
                logger.exception("handing committed deltas to gossip failed")

    def _should_compact(self) -> bool:
        if self.log_rows < self.compact_min_rows:
            return False
        live = sum(len(sr.states) for sr in self.replica.stores.values())
        return self.log_rows > self.compact_ratio * max(live, 1)

    async def compact(self) -> int:
        """Rewrite the log to one row per key (see wal.compact); returns rows removed."""
        async with self._lock:
            keep: list[int] = []
            rewrites: list[tuple[bytes, int]] = []
            for _store, _key, st in self.replica.iter_states():
                keep.append(st.seq)
                if not isinstance(st, Register):
                    rewrites.append((dumps(encode_delta(st)), st.seq))
            upto = self.wal.high
            removed = await run_in_thread(self.wal.compact, keep, rewrites, upto)
            self.log_rows = max(0, self.log_rows - removed)
            logger.info("log compacted: %d rows removed, %d kept", removed, self.log_rows)
            return removed
