"""The origin failover experiment: writers, a SIGKILLed leader, and the checks that matter.

`run_failover(...)` drives `clients` writer tasks against several origin addresses (each
write a fresh key, so every acknowledged write can be checked afterwards), kills the leader
(the caller's `kill`: a SIGKILL in the tests) once `before_kill` writes were acknowledged, and
keeps writing until `after_kill` writes were acknowledged by the new leader (every loop is
bounded in count and time).  Then it checks, from the new leader and the shared log:

- failover time: from the kill to the first write acknowledged by another origin;
- no acknowledged write lost: every acknowledged key reads back its value at the new leader;
- no seq reused or skipped: the log's seqs are exactly 1..high, every acknowledged seq is in it
  under its key, and no two acknowledgements share a seq;
- convergence: `roots()` returns the new leader's digest root and the edges'; they become equal.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from ..errors import OriginUnavailable
from ..origin.client import OriginClient

__all__ = ["FailoverReport", "log_seqs", "run_failover"]


@dataclass
class FailoverReport:
    acked: int = 0
    failed: int = 0  # writes that raised OriginUnavailable (allowed: never applied twice)
    failover_seconds: float = float("nan")
    lost: list[str] = field(default_factory=list)
    log_gaps: list[int] = field(default_factory=list)  # seqs missing from 1..high
    seq_mismatches: list[int] = field(default_factory=list)  # acked seq not holding its key
    reused_seqs: int = 0
    high: int = 0
    converged: bool = False
    converge_seconds: float = float("nan")
    last_roots: tuple[str | None, list[str]] = (None, [])  # the last digests compared

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.log_gaps
            and not self.seq_mismatches
            and not self.reused_seqs
            and self.converged
        )


def log_seqs(dsn: str) -> list[tuple[int, str, str]]:
    """Every (seq, store, key) of the shared log, in seq order (blocking)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, store, key FROM edgekv_log ORDER BY seq").fetchall()
    return [(int(s), str(st), str(k)) for s, st, k in rows]


async def run_failover(
    addresses: Sequence[str],
    leader: str,
    kill: Callable[[], None],
    dsn: str,
    roots: Callable[[], Awaitable[tuple[str | None, list[str]]]],
    *,
    clients: int = 16,
    before_kill: int = 400,
    after_kill: int = 400,
    store: str = "failover",
    time_limit: float = 60.0,
    converge_within: float = 30.0,
) -> FailoverReport:
    """Run the experiment (see the module docstring); the store must exist."""
    report = FailoverReport()
    acks: list[tuple[str, bytes, int]] = []  # key, value, seq
    killed_at: list[float] = []
    first_new: list[float] = []
    new_acks = 0
    done = anyio.Event()

    async def writer(i: int) -> None:
        async with OriginClient(list(addresses), timeout=10.0) as client:
            await write(i, client)

    async def write(i: int, client: OriginClient) -> None:
        nonlocal new_acks
        n = 0
        while not done.is_set() and n < 100_000:
            n += 1
            key, value = f"w{i}-{n}", b"%d:%d" % (i, n)
            try:
                v = await client.put(store, key, value)
            except OriginUnavailable:
                report.failed += 1
                continue
            acks.append((key, value, v.seq))
            if killed_at and client.address != leader:
                if not first_new:
                    first_new.append(time.monotonic())
                new_acks += 1
                if new_acks >= after_kill:
                    done.set()
            elif not killed_at and len(acks) >= before_kill:
                killed_at.append(time.monotonic())
                kill()

    with anyio.fail_after(time_limit):
        async with anyio.create_task_group() as tg:
            for i in range(clients):
                tg.start_soon(writer, i)
    report.acked = len(acks)
    if killed_at and first_new:
        report.failover_seconds = first_new[0] - killed_at[0]
    new_leader = next(a for a in addresses if a != leader)
    async with OriginClient(new_leader, timeout=30.0) as check:
        for key, value, _ in acks:
            if await check.get(store, key) != value:
                report.lost.append(key)
        rows = await anyio.to_thread.run_sync(log_seqs, dsn)
        report.high = rows[-1][0] if rows else 0
        present = {s for s, _, _ in rows}
        report.log_gaps = [s for s in range(1, report.high + 1) if s not in present][:100]
        by_seq = {s: k for s, st, k in rows if st == store}
        report.seq_mismatches = [s for k, _, s in acks if by_seq.get(s) != k][:100]
        report.reused_seqs = len(acks) - len({s for _, _, s in acks})
        # convergence: every replica reaches the new leader's digest
        started = time.monotonic()
        with anyio.move_on_after(converge_within):
            while True:
                want, replicas = report.last_roots = await roots()
                if want is not None and all(r == want for r in replicas):
                    report.converged = True
                    report.converge_seconds = time.monotonic() - started
                    break
                await anyio.sleep(0.1)
    return report
