"""Fleet benchmarks: the origin's log in PostgreSQL beside SQLite, and the failover time.

    python benchmarks/bench_fleet.py [--quick]

Prints a markdown section and writes it to benchmarks/results/fleet.md.  A throwaway
PostgreSQL (initdb + pg_ctl in a temp dir on 127.0.0.1, fsync and synchronous_commit on:
`edgekv.testnet.postgres`) serves the PostgreSQL log; it runs on the same 2 cores and disk
as the origin and the clients.  Each run starts a fresh origin process (`edgekv origin`,
signed writes, the default) on a fresh log; the SQLite and PostgreSQL runs alternate, so both
see the same machine.  Throughput: 64 clients, one connection each, writing 100-byte values
for `--seconds`; every put is timed, giving p50/p99 under that load.  Single client: p50/p99
of sequential puts.  Failover: two origins on one PostgreSQL log, 16 writers, the leader
SIGKILLed after 300 acknowledged writes; the time from the kill to the first write
acknowledged by the new leader (`edgekv.testnet.failover`, which also checks that no
acknowledged write was lost and no seq reused or skipped).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from bench_origin import start_origin, stop_origin
from edgekv.node.keys import generate_keypair
from edgekv.origin.client import OriginClient
from edgekv.testnet.failover import FailoverReport, run_failover
from edgekv.testnet.postgres import ThrowawayPostgres, throwaway_postgres

RESULTS = Path(__file__).parent / "results" / "fleet.md"
_dbs = iter(range(1, 1_000_000))


def pct(samples: list[float], q: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * q))]


async def load(
    extra: Sequence[str], clients: int, seconds: float, value: bytes
) -> tuple[float, float, float]:
    """(durable puts/s, p50 ms, p99 ms) with `clients` writers, one connection each."""
    data = Path(tempfile.mkdtemp(prefix="edgekv-bench-"))
    proc, address = await start_origin(data, True, extra)
    try:
        async with OriginClient(address) as admin:
            await admin.create_store("bench")
        samples: list[float] = []
        counts = [0] * clients
        measuring = False
        stop = trio.Event()

        async def writer(i: int) -> None:
            async with OriginClient(address) as client:
                n = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await client.put("bench", f"c{i}:{n}", value)
                    n += 1
                    if measuring:
                        counts[i] += 1
                        samples.append((time.perf_counter() - t0) * 1000)

        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(writer, i)
            await trio.sleep(min(1.0, seconds / 3))  # warm up
            measuring = True
            t0 = time.perf_counter()
            await trio.sleep(seconds)
            measuring = False
            elapsed = time.perf_counter() - t0
            stop.set()
        return sum(counts) / elapsed, pct(samples, 0.5), pct(samples, 0.99)
    finally:
        await stop_origin(proc)
        shutil.rmtree(data, ignore_errors=True)


async def lone(extra: Sequence[str], n: int, value: bytes) -> tuple[float, float]:
    """p50 and p99 (ms) of one client's sequential durable puts."""
    data = Path(tempfile.mkdtemp(prefix="edgekv-bench-"))
    proc, address = await start_origin(data, True, extra)
    try:
        async with OriginClient(address) as client:
            await client.create_store("bench")
            for i in range(50):
                await client.put("bench", f"w{i}", value)
            samples = []
            for i in range(n):
                t0 = time.perf_counter()
                await client.put("bench", f"k{i}", value)
                samples.append((time.perf_counter() - t0) * 1000)
        return pct(samples, 0.5), pct(samples, 0.99)
    finally:
        await stop_origin(proc)
        shutil.rmtree(data, ignore_errors=True)


async def failover(pg: ThrowawayPostgres) -> FailoverReport:
    dsn = pg.create_database(f"bench_failover_{next(_dbs)}")
    top = Path(tempfile.mkdtemp(prefix="edgekv-bench-"))
    procs = []
    try:
        addresses = []
        private, _ = generate_keypair(top / "keys")  # the origins of one log share a key
        for name in ("a", "b"):
            extra = ["--log", dsn, "--signing-key", str(private)]
            proc, address = await start_origin(top / name, True, extra)
            procs.append(proc)
            addresses.append(address)
        async with OriginClient(addresses) as admin:
            await admin.create_store("failover")

        async def no_edges() -> tuple[str | None, list[str]]:
            return "", []

        return await run_failover(
            addresses,
            addresses[0],
            lambda: procs[0].send_signal(signal.SIGKILL),
            dsn,
            no_edges,
            clients=16,
            before_kill=300,
            after_kill=300,
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        shutil.rmtree(top, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--lone", type=int, default=500, help="sequential puts, one client")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.seconds, args.lone = 1, 1.0, 100
    value = b"v" * 100
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "postgresql": []}
    lones: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgresql": []}
    reports: list[FailoverReport] = []
    with throwaway_postgres() as pg:
        for _ in range(args.repeat):
            for kind in ("sqlite", "postgresql"):
                extra = [] if kind == "sqlite" else ["--log", pg.create_database(f"b{next(_dbs)}")]
                runs[kind].append(trio.run(load, extra, args.clients, args.seconds, value))
                extra = [] if kind == "sqlite" else ["--log", pg.create_database(f"b{next(_dbs)}")]
                lones[kind].append(trio.run(lone, extra, args.lone, value))
            reports.append(trio.run(failover, pg))
    load_after = os.getloadavg()[0]

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    rows = []
    for kind, label in (("sqlite", "SQLite (data dir)"), ("postgresql", "PostgreSQL (local)")):
        r = runs[kind]
        tputs = [x[0] for x in r]
        rows.append(
            f"| {label} | {med(tputs):,.0f} (runs: {', '.join(f'{t:,.0f}' for t in tputs)})"
            f" | {med([x[1] for x in r]):.2f} / {med([x[2] for x in r]):.2f}"
            f" | {med([x[0] for x in lones[kind]]):.2f} / {med([x[1] for x in lones[kind]]):.2f} |"
        )
    ratio = med([x[0] for x in runs["postgresql"]]) / med([x[0] for x in runs["sqlite"]])
    times = [r.failover_seconds for r in reports]
    ok = all(r.ok for r in reports)
    lines = [
        "## Fleet: the origin's log on PostgreSQL, and failover",
        "",
        f"`python benchmarks/bench_fleet.py` on {os.cpu_count()} cores; median of"
        f" {args.repeat} runs; values of 100 bytes; signed writes; {args.clients} clients with"
        f" one connection each for {args.seconds:g} s; the single-client rows time"
        f" {args.lone} sequential puts.  PostgreSQL 15 runs on the same machine (throwaway"
        " server, fsync and synchronous_commit on), so it competes with the origin and the"
        " clients for the 2 cores and the disk.",
        "",
        f"Machine load average (1 min) at the start: {load_before:.2f}, at the end:"
        f" {load_after:.2f} (other jobs share the machine).",
        "",
        f"| log | durable puts/s, {args.clients} clients | put p50 / p99 under that load (ms)"
        " | single-client put p50 / p99 (ms) |",
        "|---|---|---|---|",
        *rows,
        "",
        "Target: >= 5,000 durable writes/s with the PostgreSQL log.  In this run the"
        f" PostgreSQL log gave {ratio:.0%} of the SQLite log's throughput on the same machine;"
        " the SQLite figure beside it (compare the Origin section, measured on a quieter"
        " machine) shows how much of the 2 cores this run had.",
        "",
        "| failover (two origins on one PostgreSQL log, 16 writers, leader SIGKILLed) | result |",
        "|---|---|",
        f"| kill to first write acknowledged by the new leader | {med(times):.2f} s"
        f" (runs: {', '.join(f'{t:.2f}' for t in times)}); target <= 5 s |",
        f"| acknowledged writes lost / seqs reused or skipped | {'none' if ok else 'SEE RUNS'}"
        f" ({sum(r.acked for r in reports):,} acknowledged writes checked; writes that failed"
        f" with OriginUnavailable: {sum(r.failed for r in reports)}) |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
