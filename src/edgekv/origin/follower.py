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
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..crdt.codec import decode_delta, loads
from ..crdt.proofs import atoms_of
from .pglog import PostgresLog
from .sequencer import MAX_OUTCOMES, run_in_thread

if TYPE_CHECKING:
    from .server import Origin

__all__ = ["catch_up", "lead_or_follow"]

logger = logging.getLogger("edgekv.origin")

TAIL_BATCH = 10_000


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
    then start the sequencer.  `task_status.started()` once leading or following."""
    cursor = log.high  # the recovery read the log up to here
    started = False
    while not await run_in_thread(log.try_lead):
        if not started:
            logger.info("event=following log=%s high=%d", log.where, cursor)
            task_status.started()
            started = True
        cursor = await catch_up(origin, log, cursor)
        await anyio.sleep(interval)
    took_over_at = time.monotonic()
    cursor = await catch_up(origin, log, cursor, high=log.high)
    sequencer = origin.sequencer
    sequencer.next_seq = log.high + 1
    sequencer.load_outcomes(await run_in_thread(log.recent_requests, MAX_OUTCOMES))
    await origin.start_leading()
    logger.info(
        "event=leading node=%s term=%d next_seq=%d catch_up_seconds=%.3f",
        origin.node_id,
        log.term,
        sequencer.next_seq,
        time.monotonic() - took_over_at,
    )
    if not started:
        task_status.started()
