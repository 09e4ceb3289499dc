"""The sequencer: hands out seqs, group-commits to the log, applies to the replica, recovers.

Theory of operation
1. Writers hand a command to `submit_nowait(command, callback)` (or await `submit(command)`):
   the ticket joins a queue.  The commit loop takes *every* ticket pending when it wakes (up to
   `max_group`), plans them in order (`writer.Planner`: consecutive seqs, no seq for failures or
   no-ops) and writes the group's rows in one SQLite transaction (`wal.write`: no disk flush,
   so it runs on the event loop, no thread hop) and flushes it (`wal.sync`, an fdatasync,
   through `flusher.Flusher`).  By default (`flush_threads=0`) the flush runs right there on
   the event loop: whatever arrives meanwhile waits in the socket buffers and forms the next
   group, one flush per group (the cheapest on a fast disk, see flusher.py).  With
   `flush_threads=N` flushes run in N threads and the loop goes straight on with the next
   group: planning and writing group N+1 overlap the flush of group N.  Those flushes are
   group commits too: when none is in flight, one starts at once and covers every group
   written so far; while one is in flight, another starts only when at least
   `eager_flush_rows` rows wait for it (at most `flush_threads` at once), so that a busy
   origin does not pay one flush and one thread wake-up per tiny group; the rest waits for
   the end of a flush in flight.
2. Groups complete strictly in order, in one completer task.  A flush that started after
   group N's write returned makes groups 1..N durable (a log that is not durable per commit,
   e.g. in memory, makes a group durable once written); then each group, in order, is applied
   to the replica, its callers are answered (callbacks run on the event loop; then
   `after_answers()` lets the server send the answers of the whole group, one send per
   connection), and `on_commit(items, covers)` hands its deltas to gossip.  Failed commands
   are answered with their group too (their error may depend on writes of earlier groups,
   which must be durable first).  So nobody is told about a write before it is durable, and
   the replica (what reads see) holds exactly the durable prefix of the log.
3. Planning group N+1 must see the effects of groups written but not yet applied: the
   planner looks keys up in `_pending` (the newest planned state of every key of the groups in
   flight) before the replica.  An entry is dropped when the group that set it is applied.
4. If a log write fails, that group fails with `LogError`, its seqs are not used (the next
   group reuses them: nothing of it is in the log) and nothing changes.  A failed flush is
   different: the kernel may have dropped the dirty pages, so whether those rows survive is
   unknown; every group in flight fails and the sequencer refuses writes from then on (restart
   the origin, it recovers from what the disk holds), as databases do after an fsync error.
5. Recovery (`recovery.recover`) rebuilds the replica from the log and the sequencer resumes
   at `log.high + 1`; `covered` is 1..high because the origin has every seq.
6. Signing (crdt/proofs.py): with a `signer`, each group's atoms are hashed when the group is
   planned; the completer hands them to `replica.proofs.defer` once the group is applied,
   and they are signed, together with every group since, when proofs are next needed (a
   push, a forwarded write's answer), so answers never wait for a signature.  After
   recovery the live states are signed again (`certify_replica`).
7. Compaction waits until no group is in flight, runs between groups (holding `_lock`), and
   is triggered when the log holds more than `compact_ratio` rows per live state and at least
   `compact_min_rows`.
7. At most once: a command may carry the client's request id (`rid`).  The outcome of every
   planned command with a rid (its seqs and `written_at`) is remembered (the newest
   `MAX_OUTCOMES`, for at most `OUTCOME_TTL_MS`: a client retries only within its timeout)
   and goes to the log with its group (`write(rows, high, requests)`: the
   log keeps them in the same transaction, so a restarted origin or a new leader loads them
   with `load_recent_outcomes`).  A command whose rid has an outcome is not planned again: it is answered
   with that outcome (no items) when its group completes, so never before the original is
   durable.  A group whose log write fails forgets its rids (nothing of it was applied).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
import sniffio

from ..clock import wall_clock_ms
from ..crdt import Register, Replica, State
from ..crdt.codec import dumps, encode_delta, loads
from ..crdt.proofs import Atom, Certificate, Signer, atoms_of
from ..errors import EdgeKVError
from .flusher import Flusher
from .log import CommitLog
from .recovery import recover
from .wal import LogError, Row
from .writer import Command, Item, Planned, Planner, group_atoms

__all__ = ["Covers", "OnCommit", "Sequencer", "Ticket", "recover", "run_in_thread"]

logger = logging.getLogger("edgekv.origin")

Covers = list[tuple[int, int]]
MAX_OUTCOMES = 200_000  # request ids remembered for deduplication (rule 7)
OUTCOME_TTL_MS = 300_000  # ... and for at most this long (clients retry within their timeout)
T = TypeVar("T")
OnCommit = Callable[[list[Item], Covers], Awaitable[None]]
Key = tuple[str, str]


def certify_replica(signer: Signer, replica: Replica) -> list[Certificate]:
    """Certificates over every state of a recovered replica (rule 5): the log does not keep
    the certificates of past groups, so the origin signs its live states again at start."""
    atoms = [a for store, key, st in replica.iter_states() for a in atoms_of(store, key, st)]
    return signer.certify(atoms)


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread.  Under trio, trio's own thread hop is ~4x cheaper than
    anyio's wrapper around it (it sits on the latency path of every commit)."""
    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(fn, *args)
    return await anyio.to_thread.run_sync(fn, *args)


class Ticket:
    """One submitted command; `callback(ticket)` runs once `planned` or `error` is final."""

    __slots__ = ("callback", "command", "error", "planned", "written_at")

    def __init__(self, command: Command, callback: Callable[[Ticket], None]) -> None:
        self.command = command
        self.callback = callback
        self.planned: Planned | None = None
        self.error: BaseException | None = None
        self.written_at = 0


class _Group:
    """One commit group between its log write and its completion."""

    __slots__ = ("atoms", "covers", "items", "keys", "no", "tickets")

    def __init__(self, no: int, tickets: list[Ticket]) -> None:
        self.no = no
        self.tickets = tickets
        self.atoms: list[Atom] = []
        self.items: list[Item] = []
        self.covers: Covers = []
        self.keys: list[Key] = []


class Sequencer:
    """Pipelined group commit of planned commands (see the module docstring)."""

    def __init__(
        self,
        wal: CommitLog,
        replica: Replica,
        *,
        on_commit: OnCommit | None = None,
        after_answers: Callable[[], None] | None = None,
        wall_ms: Callable[[], int] = wall_clock_ms,
        max_group: int = 4096,
        flush_threads: int = 0,
        eager_flush_rows: int = 16,
        compact_ratio: float = 2.0,
        compact_min_rows: int = 1_000_000,
        signer: Signer | None = None,
    ) -> None:
        self.wal = wal
        self.signer = signer  # signs each group's atoms (crdt/proofs.py), kept in replica.proofs
        self.replica = replica
        self.on_commit = on_commit
        self.after_answers = after_answers  # called after each group's callbacks have run
        self.wall_ms = wall_ms
        self.max_group = max_group
        self.flush_threads = flush_threads
        self.eager_flush_rows = eager_flush_rows
        self.compact_ratio = compact_ratio
        self.compact_min_rows = compact_min_rows
        self.next_seq = wal.high + 1
        self.log_rows = 0
        self.last_written_at = 0
        self.groups = 0
        self.commits = 0
        self._queue: deque[Ticket] = deque()
        self._wake = anyio.Event()
        self._idle = False  # the commit loop waits on `_wake`
        self._inflight: deque[_Group] = deque()  # written, not yet completed, in order
        self._pending: dict[Key, tuple[State, int]] = {}  # key -> (planned state, group no)
        self._group_no = 0
        self._durable_no = 0  # every group up to this one is durable
        self._written_no = 0  # the last group written to the log
        self._unflushed_rows = 0  # rows written after the start of the last flush
        self._flushes = 0  # flushes in flight
        self.flush_count = 0
        self._flusher: Flusher | None = None
        self._flush_ended = anyio.Event()
        self._drained = anyio.Event()  # set when `_inflight` becomes empty
        self._complete_wake = anyio.Event()
        self._completer_idle = False
        self._lock = anyio.Lock()
        self._running = False
        self._failed: LogError | None = None
        self.outcomes: dict[bytes, tuple[tuple[int | None, ...], int]] = {}  # rid -> (seqs, at)
        self.deduplicated = 0

    @property
    def failed(self) -> bool:
        """The log failed under this sequencer (rule 4): it takes no more writes."""
        return self._failed is not None

    def load_outcomes(self, requests: list[tuple[bytes, bytes]]) -> None:
        """Remember the outcomes the log holds (rule 7), oldest first."""
        for rid, blob in requests:
            try:
                written_at, seqs = loads(blob)
                self.outcomes[rid] = (tuple(seqs), int(written_at))
            except Exception:
                logger.warning("ignoring an undecodable request outcome in the log")
        self._trim_outcomes()

    async def load_recent_outcomes(self) -> None:
        """Load the newest outcomes the log keeps (rule 7): at start, or on taking over."""
        self.load_outcomes(await run_in_thread(self.wal.recent_requests, MAX_OUTCOMES))

    def _trim_outcomes(self, now_ms: int | None = None) -> None:
        """Forget the oldest outcomes past MAX_OUTCOMES, and those older than OUTCOME_TTL_MS
        (so a steady write rate holds a steady number of them, not 200,000 after hours)."""
        outcomes = self.outcomes
        while len(outcomes) > MAX_OUTCOMES:
            del outcomes[next(iter(outcomes))]
        if now_ms is not None:
            horizon = now_ms - OUTCOME_TTL_MS
            while outcomes and outcomes[rid := next(iter(outcomes))][1] < horizon:
                del outcomes[rid]

    async def recover(self) -> int:
        """Replay the log into the (empty) replica in a worker thread."""
        n = await run_in_thread(recover, self.wal, self.replica)
        if self.signer is not None and self.replica.proofs is not None and n:
            certs = await run_in_thread(certify_replica, self.signer, self.replica)
            self.replica.proofs.add(certs)
            self.replica.proofs.settle()  # they prove exactly the live states: no sweep due
        self.log_rows = n
        self.next_seq = self.wal.high + 1
        return n

    # -- submitting --------------------------------------------------------------------------------

    def submit_nowait(self, command: Command, callback: Callable[[Ticket], None]) -> Ticket:
        """Queue `command`; `callback(ticket)` runs on the event loop once its outcome is durable
        (or failed).  Raises EdgeKVError at once if the sequencer is not running."""
        if not self._running:
            raise EdgeKVError("the origin is not running")
        if self._failed is not None:
            raise self._failed
        ticket = Ticket(command, callback)
        self._queue.append(ticket)
        if self._idle:
            self._idle = False
            self._wake.set()
        return ticket

    async def submit(self, command: Command) -> tuple[Planned, int]:
        """Plan, log and apply `command`; returns its outcome and `written_at` once durable."""
        done = anyio.Event()
        ticket = self.submit_nowait(command, lambda _ticket: done.set())
        await done.wait()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.planned is not None
        return ticket.planned, ticket.written_at

    # -- the commit loop -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The commit loop.  Runs until cancelled; pending callers are then failed."""
        self._running = True
        if self.wal.durable:
            self._flusher = Flusher(self.wal.sync, self._flush_done, threads=self.flush_threads)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._completer)
                task_status.started()
                while True:
                    if not self._queue:
                        self._wake = anyio.Event()
                        self._idle = True
                        await self._wake.wait()
                    if self._lock.locked():  # a compaction runs: wait for its end
                        async with self._lock:
                            pass
                    group = self._take_group()
                    self._write_group(group)  # synchronous: no compaction can start meanwhile
                    if group.items:
                        self._maybe_flush()
                    else:
                        self._wake_completer()
                    if self._should_compact():
                        await self.compact()
                    elif self._queue:  # more work at once: let readers run first
                        await anyio.lowlevel.checkpoint()
        finally:
            self._running = False
            if self._flusher is not None:
                self._flusher.close()
                with anyio.move_on_after(30, shield=True):  # the log must outlive its flushes
                    while self._flushes:
                        self._flush_ended = anyio.Event()
                        await self._flush_ended.wait()
            error = EdgeKVError("the origin is shutting down")
            for group in self._inflight:
                self._fail(group.tickets, error)
            self._inflight.clear()
            self._pending.clear()
            self._fail_pending(error)
            self.close()

    def _take_group(self) -> _Group:
        queue = self._queue
        if len(queue) <= self.max_group:
            tickets = list(queue)
            queue.clear()
        else:
            tickets = [queue.popleft() for _ in range(self.max_group)]
        self._group_no += 1
        return _Group(self._group_no, tickets)

    def _write_group(self, group: _Group) -> None:
        """Plan the group on top of the replica and the groups in flight, and write it."""
        written_at = max(self.wall_ms(), self.last_written_at)
        self.last_written_at = written_at
        planner = Planner(self.replica, self.next_seq, written_at, self._pending_state)
        outcomes = self.outcomes
        requests: list[tuple[bytes, int, bytes]] = []  # rid, last seq, outcome (rule 7)
        for ticket in group.tickets:
            ticket.written_at = written_at
            rid = ticket.command.rid
            if rid is not None:
                done = outcomes.get(rid)
                if done is not None:  # a retry: the first outcome, not a second apply
                    ticket.planned = Planned(seqs=list(done[0]))
                    ticket.written_at = done[1]
                    self.deduplicated += 1
                    continue
            try:
                planned = ticket.planned = planner.execute(ticket.command)
            except EdgeKVError as exc:
                ticket.error = exc
                continue
            except Exception as exc:  # a bug must not take the origin down
                logger.exception("planning failed")
                ticket.error = EdgeKVError(f"internal error: {exc!r}")
                continue
            if rid is not None:
                outcomes[rid] = (tuple(planned.seqs), written_at)
                requests.append((rid, planned.last, dumps([written_at, planned.seqs])))
        if requests:
            self._trim_outcomes(written_at)
        self.groups += 1
        self._inflight.append(group)
        items = planner.items
        if not items:
            return
        first, high = self.next_seq, planner.next_seq - 1
        rows: list[Row] = [(d.seq, store, key, dumps(encode_delta(d))) for store, key, d in items]
        try:
            if requests:
                self.wal.write(rows, high, requests)
            else:
                self.wal.write(rows, high)
        except LogError as exc:
            logger.error("%s", exc)
            for rid, _, _ in requests:
                outcomes.pop(rid, None)
            for ticket in group.tickets:
                if ticket.error is None:
                    ticket.error, ticket.planned = exc, None
            return
        self.next_seq = high + 1
        self._written_no = group.no
        self._unflushed_rows += len(rows)
        self.log_rows += len(rows)
        self.commits += len(rows)
        group.items = items
        group.covers = [(first, high)]
        if self.signer is not None:
            group.atoms = group_atoms(planner)
        no = group.no
        pending = self._pending
        for key, st in planner.states.items():
            pending[key] = (st, no)
        group.keys = list(planner.states)

    def _pending_state(self, store: str, key: str) -> State | None:
        hit = self._pending.get((store, key))
        return None if hit is None else hit[0]

    def _maybe_flush(self) -> None:
        """Start a flush for the groups written since the last one started (see rule 1)."""
        if not self._unflushed_rows or self._failed is not None:
            return
        flusher = self._flusher
        if flusher is None:  # not durable per commit: written is as good as it gets
            self._unflushed_rows = 0
            self._durable_no = self._written_no
            self._wake_completer()
            return
        if self._flushes and (
            self._flushes >= self.flush_threads or self._unflushed_rows < self.eager_flush_rows
        ):
            return  # the end of a flush in flight starts the next one
        self._unflushed_rows = 0
        self._flushes += 1
        self.flush_count += 1
        flusher.request(self._written_no, handoff=self._flushes == 1 and not self._queue)

    def _flush_done(self, no: int, error: BaseException | None) -> None:
        """Flusher callback (on the event loop): every group up to `no` is durable."""
        self._flushes -= 1
        self._flush_ended.set()
        if error is not None:
            if not isinstance(error, LogError):
                error = LogError(f"log flush failed: {error!r}")
            self._flush_failed(error)
            return
        if no > self._durable_no:
            self._durable_no = no
        self._maybe_flush()
        self._wake_completer()

    def depose(self, exc: LogError) -> None:
        """Another origin leads the log now (or may): refuse writes from now on and fail
        every write in flight and queued with `exc` (a client retries those under their
        request ids at the new leader, which applies each at most once)."""
        if self._failed is None:
            self._failed = exc
        self._fail_all(exc)

    def _flush_failed(self, exc: LogError) -> None:
        if self._failed is not None:  # deposed already, or a second flush failing
            self._fail_all(self._failed)
            return
        logger.critical("%s: refusing writes until the origin restarts", exc)
        self._failed = LogError(f"the log is unusable after a failed flush ({exc}); restart")
        self._fail_all(self._failed)

    def _fail_all(self, error: LogError) -> None:
        for group in self._inflight:
            self._fail(group.tickets, error)
        self._inflight.clear()
        self._pending.clear()
        self._fail_pending(error)
        self._drained.set()

    def _wake_completer(self) -> None:
        if self._completer_idle:
            self._completer_idle = False
            self._complete_wake.set()

    async def _completer(self) -> None:
        """Complete durable groups in order (rule 2)."""
        inflight = self._inflight
        while True:
            if not (inflight and (not inflight[0].items or inflight[0].no <= self._durable_no)):
                self._complete_wake = anyio.Event()
                self._completer_idle = True
                await self._complete_wake.wait()
                continue
            group = inflight.popleft()
            if group.items:
                self.replica.apply_batch(group.items, group.covers)
                if group.atoms and self.replica.proofs is not None:
                    self.replica.proofs.defer(group.atoms, group.covers[0][0], group.covers[0][1])
                pending = self._pending
                no = group.no
                for key in group.keys:
                    hit = pending.get(key)
                    if hit is not None and hit[1] == no:
                        del pending[key]
            self._answer(group)
            if not inflight:
                self._drained.set()
            if group.items and self.on_commit is not None:
                try:
                    await self.on_commit(group.items, group.covers)
                except Exception:
                    logger.exception("handing committed deltas to gossip failed")

    def _answer(self, group: _Group) -> None:
        for ticket in group.tickets:
            try:
                ticket.callback(ticket)
            except Exception:
                logger.exception("answering a write failed")
        self._answered()

    def _fail(self, tickets: list[Ticket], error: BaseException) -> None:
        for ticket in tickets:
            ticket.error, ticket.planned = error, None
            try:
                ticket.callback(ticket)
            except Exception:
                logger.exception("answering a write failed")
        self._answered()

    def _answered(self) -> None:
        if self.after_answers is not None:
            try:
                self.after_answers()
            except Exception:
                logger.exception("sending answers failed")

    async def _wait_drained(self) -> None:
        self._drained = anyio.Event()
        await self._drained.wait()

    def close(self) -> None:
        """Refuse submissions from now on (idempotent); queued tickets are failed."""
        self._running = False
        self._fail_pending(EdgeKVError("the origin is shutting down"))

    def _fail_pending(self, error: BaseException) -> None:
        tickets = list(self._queue)
        self._queue.clear()
        self._fail(tickets, error)

    # -- compaction --------------------------------------------------------------------------------

    def _should_compact(self) -> bool:
        if self.log_rows < self.compact_min_rows:
            return False
        live = sum(len(sr.states) for sr in self.replica.stores.values())
        return self.log_rows > self.compact_ratio * max(live, 1)

    async def compact(self) -> int:
        """Rewrite the log to one row per key (see wal.compact); returns rows removed."""
        async with self._lock:
            while self._inflight:  # the replica must hold every written row
                await self._wait_drained()
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
