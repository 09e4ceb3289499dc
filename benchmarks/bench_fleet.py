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

Wall-clock figures depend on what else runs on the machine; the CPU time per write of the
origin process and of the PostgreSQL server (all its processes) does much less, and so does
the commit path measured alone: `PostgresLog` committing groups of 1, 16 and 64 rows (with
their request ids) back to back, giving the wall time and the CPU time (this process, the
server's backend) per commit group.
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

from bench_origin import process_cpu, start_origin, stop_origin
from edgekv.node.keys import generate_keypair
from edgekv.origin.client import OriginClient
from edgekv.origin.pglog import PostgresLog
from edgekv.testnet.failover import FailoverReport, run_failover
from edgekv.testnet.postgres import ThrowawayPostgres, throwaway_postgres

RESULTS = Path(__file__).parent / "results" / "fleet.md"
_dbs = iter(range(1, 1_000_000))


def pct(samples: list[float], q: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * q))]


def server_cpu(pg: ThrowawayPostgres | None) -> float:
    """CPU seconds used so far by the PostgreSQL server: the postmaster and its children."""
    if pg is None:
        return 0.0
    postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


Load = tuple[float, float, float, float, float]


async def load(
    extra: Sequence[str],
    clients: int,
    seconds: float,
    value: bytes,
    pg: ThrowawayPostgres | None = None,
) -> Load:
    """(durable puts/s, p50 ms, p99 ms, origin CPU us per put, server CPU us per put) with
    `clients` writers, one connection each."""
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
            t0, o0, s0 = time.perf_counter(), process_cpu(proc.pid), server_cpu(pg)
            await trio.sleep(seconds)
            measuring = False
            elapsed = time.perf_counter() - t0
            o1, s1 = process_cpu(proc.pid), server_cpu(pg)
            stop.set()
        n = max(1, sum(counts))
        origin_us, server_us = (o1 - o0) / n * 1e6, (s1 - s0) / n * 1e6
        return n / elapsed, pct(samples, 0.5), pct(samples, 0.99), origin_us, server_us
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


def commit_path(pg: ThrowawayPostgres, size: int, groups: int) -> tuple[float, float, float]:
    """The PostgreSQL log alone: (wall ms, this process's CPU us, the backend's CPU us) per
    commit group of `size` rows, each with a request id, committed back to back."""
    log = PostgresLog(pg.create_database(f"bench_commit_{next(_dbs)}"))
    try:
        backend = log.backend_pid
        delta = b"\x85" + b"v" * 140
        outcome = b"\x82\x1b" + bytes(8) + b"\x81\x01"
        seq = 0
        batches = []
        for _ in range(groups):
            rows = [(seq + i + 1, "bench", f"k{seq + i}", delta) for i in range(size)]
            requests = [(os.urandom(16), seq + i + 1, outcome) for i in range(size)]
            seq += size
            batches.append((rows, seq, requests))
        t0, c0, b0 = time.perf_counter(), time.process_time(), process_cpu(backend)
        for rows, high, requests in batches:
            log.write(rows, high, requests)
            log.sync()
        t1, c1, b1 = time.perf_counter(), time.process_time(), process_cpu(backend)
        assert log.count() == seq
        return (t1 - t0) / groups * 1e3, (c1 - c0) / groups * 1e6, (b1 - b0) / groups * 1e6
    finally:
        log.close()


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
    runs: dict[str, list[Load]] = {"sqlite": [], "postgresql": []}
    lones: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgresql": []}
    reports: list[FailoverReport] = []
    sizes = (1, 16, 64)
    commits: dict[int, list[tuple[float, float, float]]] = {size: [] for size in sizes}
    with throwaway_postgres() as pg:
        for _ in range(args.repeat):
            for size in sizes:
                commits[size].append(commit_path(pg, size, 100 if args.quick else 300))
            for kind in ("sqlite", "postgresql"):
                server = None if kind == "sqlite" else pg
                extra = [] if kind == "sqlite" else ["--log", pg.create_database(f"b{next(_dbs)}")]
                runs[kind].append(trio.run(load, extra, args.clients, args.seconds, value, server))
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
            f" | {med([x[3] for x in r]):.0f} us"
            f" / {'-' if kind == 'sqlite' else f'{med([x[4] for x in r]):.0f} us'}"
            f" | {med([x[0] for x in lones[kind]]):.2f} / {med([x[1] for x in lones[kind]]):.2f} |"
        )
    commit_rows = [
        f"| {size} | {med([c[0] for c in commits[size]]):.2f} ms"
        f" | {med([c[1] for c in commits[size]]):.0f} us"
        f" | {med([c[2] for c in commits[size]]):.0f} us"
        f" | {med([c[1] + c[2] for c in commits[size]]) / size:.1f} us |"
        for size in sizes
    ]
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
        " | CPU per put: origin process / PostgreSQL server | single-client put p50 / p99 (ms) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "The PostgreSQL commit path alone (`PostgresLog.write` + `sync`, groups committed back"
        " to back, each row with a request id; one statement and one round trip per group):",
        "",
        "| rows per group | wall per group | CPU per group: client | CPU per group: server"
        " backend | CPU per row, both |",
        "|---|---|---|---|---|",
        *commit_rows,
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
