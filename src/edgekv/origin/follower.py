"""Origin failover on a shared PostgreSQL log: follow the leader, take over when it dies.

Theory of operation
1. Every origin on a PostgreSQL log recovers its replica from the log, then tries to lead
   (`PostgresLog.try_lead`: the session advisory lock, then a new term).  The winner starts
   its sequencer at `high + 1`; the others follow.
2. A follower tails the log every `interval` seconds (`rows_after` its cursor) and applies the
   rows to its replica, so it stays warm: its replica trails the leader's by about one
   interval, and it serves reads and gossip like any replica (it signs what it applies with
   its own key, so edges that list every origin's public key verify what it serves).  Writes it refuses with
   `NotLeader` (clients and edges then try their next origin address).
3. Between two tails it tries to lead again.  The lock is free once the leader's session has
   ended (its process died: at once; its host: within the session keepalives), so a takeover
   follows a leader's death within about `interval`.  On taking over it reads the rest of the
   log (no one else can commit any more: the term moved), loads the recent request outcomes
   (a retried write is answered, not applied twice), sets the sequencer at `high + 1` and
   starts it.  Seqs stay contiguous: the new leader's first seq follows the last committed one.
4. A leader learns that it was deposed (another origin took the term: its session was cut,
   or it was paused past its keepalives) from a commit that fails (`Fenced`, or any
   `LogError`: the log is gone under it) or, when idle, from `still_leading()` every
   `interval`.  It steps down at once: writes are refused with `NotLeader` from then on,
   those in flight fail with the log's error (clients retry them under their request ids
   at the new leader, which applies each at most once), the commit loop stops, the old
   session is closed, and the origin follows the log through a new session from the last
   seq its replica holds (rule 2), as any follower does; it tries to lead again (rule 3,
   with a new term) only after `STEP_DOWN_HOLD` seconds, so that a healthy follower takes
   over first.  Its replica holds only durable rows (sequencer rule 2), so nothing
   it applied is lost by the step-down.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..crdt.codec import decode_delta, loads
from ..crdt.proofs import atoms_of
from .pglog import Fenced, PostgresLog
from .sequencer import run_in_thread
from .wal import LogError

if TYPE_CHECKING:
    from .server import Origin

__all__ = ["catch_up", "lead_or_follow"]

logger = logging.getLogger("edgekv.origin")

TAIL_BATCH = 10_000
STEP_DOWN_HOLD = 2.0  # seconds a deposed leader follows before it tries to lead again


async def catch_up(origin: Origin, log: PostgresLog, cursor: int, high: int | None = None) -> int:
    """Apply the log's rows after `cursor` to the origin's replica; returns the new cursor.
    With `high` (a leader's final catch-up) the replica is marked as holding 1..high."""
    while True:
        rows = await run_in_thread(log.rows_after, cursor, TAIL_BATCH)
        if rows:
            items = [(store, key, decode_delta(loads(blob))) for _, store, key, blob in rows]
            covers = [(cursor + 1, rows[-1][0])]
            if origin.runtime is not None and origin.runtime.running:
                origin.runtime.apply_local(items, covers)
            else:
                origin.replica.apply_batch(items, covers)
            _certify(origin, {(store, key) for store, key, _ in items})
            cursor = rows[-1][0]
        if len(rows) < TAIL_BATCH:
            break
    if high is not None and high > cursor:  # the top rows were compacted away
        origin.replica.apply_batch([], [(cursor + 1, high)])
        cursor = high
    return cursor


def _certify(origin: Origin, keys: set[tuple[str, str]]) -> None:
    """Sign the new states of `keys` with this origin's key, as the leader signed them, so
    that what this replica serves to edges verifies (edges list every origin's public key)."""
    signer, replica = origin.signer, origin.replica
    if signer is None or replica.proofs is None:
        return
    atoms = []
    for store, key in keys:
        st = replica.state(store, key)
        if st is not None:
            atoms.extend(atoms_of(store, key, st))
    if atoms:
        replica.proofs.add(signer.certify(atoms))


async def lead_or_follow(
    origin: Origin,
    log: PostgresLog,
    *,
    interval: float,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Lead at once if the log is free, else follow until it is (see the module docstring);
    step down when deposed and follow again (rule 4).  `task_status.started()` once leading
    or following."""
    cursor = log.high  # the recovery read the log up to here
    started = False
    lead_after = 0.0  # a deposed leader lets the others take over first (rule 4)
    while True:
        while time.monotonic() < lead_after or not await run_in_thread(log.try_lead):
            if not started:
                logger.info("event=following log=%s high=%d", log.where, cursor)
                task_status.started()
                started = True
            cursor = await catch_up(origin, log, cursor)
            await anyio.sleep(interval)
        await _take_over(origin, log, cursor)
        if not started:
            task_status.started()
            started = True
        error = await _until_deposed(origin, log, interval)
        log = await _step_down(origin, log, error, interval)
        lead_after = time.monotonic() + STEP_DOWN_HOLD
        cursor = origin.replica.watermark  # the durable prefix it applied (rule 4)


async def _take_over(origin: Origin, log: PostgresLog, cursor: int) -> None:
    took_over_at = time.monotonic()
    await catch_up(origin, log, cursor, high=log.high)
    sequencer = origin.sequencer
    sequencer.next_seq = log.high + 1
    await sequencer.load_recent_outcomes()
    await origin.start_leading()
    logger.info(
        "event=leading node=%s term=%d next_seq=%d catch_up_seconds=%.3f",
        origin.node_id,
        log.term,
        sequencer.next_seq,
        time.monotonic() - took_over_at,
    )


async def _until_deposed(origin: Origin, log: PostgresLog, interval: float) -> LogError:
    """Wait while this origin leads; returns the reason it no longer does (rule 4)."""
    sequencer = origin.sequencer
    while True:
        await anyio.sleep(interval)
        if sequencer.failed:
            return Fenced(f"the log failed under this origin (term {log.term})")
        if not await run_in_thread(log.still_leading):
            return Fenced(f"this origin was deposed (it led term {log.term})")


async def _step_down(
    origin: Origin, log: PostgresLog, error: LogError, interval: float
) -> PostgresLog:
    """Stop leading at once and open a new session on the log to follow it (rule 4)."""
    logger.warning("event=stepping_down node=%s reason=%s", origin.node_id, error)
    origin.stop_leading(error)
    # end the old session (its lock, if it still holds it) without waiting for a commit
    # that may hang on a dead connection
    threading.Thread(target=log.close, name="edgekv-log-close", daemon=True).start()
    while True:
        try:
            follower = await run_in_thread(
                partial(PostgresLog, log.dsn, owner=log.owner, lead=False)
            )
            break
        except LogError as exc:  # the database is out of reach: keep refusing writes
            logger.warning("event=log_unreachable node=%s error=%s", origin.node_id, exc)
            await anyio.sleep(max(interval, 0.5))
    origin.follow(follower)
    return follower
