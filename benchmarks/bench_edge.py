"""Benchmark the edge node: get() through EdgeNode, admin HTTP GET, restart-to-first-read, idle CPU.

    python benchmarks/bench_edge.py [--keys 1000000] [--runs 3] [--idle-seconds 10] [--only restart]

Prints a markdown section and writes it to benchmarks/results/edge.md (with `--only restart`:
restart-to-first-read and its breakdown only, to benchmarks/results/edge_restart.md).  Each measurement runs
in fresh subprocesses; figures are the median over `--runs` (spread in brackets).

- Setup: an edge database (SQLite, as the node writes it after a snapshot: the registers in
  blocks, node/persistence.py rule 7) with `--keys` keys of 16 bytes and 100-byte values in
  one store, built once in a temporary directory.
- restart-to-first-read: a fresh process imports edgekv, enters `EdgeNode(data_dir=...)` and
  does one `store.get`; timed from process spawn (interpreter and imports included) and from
  `EdgeNode.__aenter__` (the node's own part).  The load is broken down (reading the blocks:
  fetch, checks and decode; `bulk_load` building digests and indexes, and the per-key
  `Replica.apply` path on the same states for comparison) in a separate process.
- get(): `node.open(store).get(key)` on random existing keys in the restarted node.  (a) The
  p50 and p99 (the targets): each call timed alone, timer overhead measured and subtracted;
  (b) a check: batches of 1,000 calls timed around the batch, median and p99 of the batch
  means (a mean counts the slow calls too, so it sits above the median call).
- admin HTTP GET: `GET /v1/stores/{store}/keys/{key}` against an `edgekv edge` daemon serving the
  same database over loopback (hypercorn, trio), one keep-alive httpx client, sequential.
- idle CPU: an origin and two edges on loopback with default gossip settings (pings every 1 s,
  anti-entropy every 2 s); one edge process measures its own CPU time with
  `resource.getrusage(RUSAGE_SELF)` over `--idle-seconds` of idleness after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bytecode import compile_sources

RESULTS = Path(__file__).resolve().parent / "results"
STORE = "bench"
NOWHERE = "127.0.0.1:9"  # an origin address nothing listens on: reads never need the origin


def key_of(i: int) -> str:
    return f"k{i:015d}"  # 16 bytes


# -- subprocess modes --------------------------------------------------------------------------


def mode_prepare(data_dir: str, keys: int) -> dict[str, Any]:
    import anyio

    from edgekv.crdt import META, Register
    from edgekv.node.persistence import ReplicaStore

    async def build() -> float:
        store = ReplicaStore(data_dir)
        store.load()
        replica = store.replica
        rng = random.Random(1)
        replica.apply(META, STORE, Register(1, 1_700_000_000_000, b"", None))
        batch = 100_000
        for lo in range(0, keys, batch):
            items = [
                (STORE, key_of(i), Register(i + 2, 1_700_000_000_000, rng.randbytes(100)))
                for i in range(lo, min(keys, lo + batch))
            ]
            replica.apply_batch(items)
        replica.covered.add(1, keys + 1)
        store.rewrite_all()  # as after a snapshot: registers in blocks (persistence rule 7)
        t = time.perf_counter()
        await store.close()
        return time.perf_counter() - t

    seconds = anyio.run(build, backend="trio")
    size = sum(f.stat().st_size for f in Path(data_dir).iterdir())
    return {"flush_seconds": seconds, "bytes": size}


def mode_restart(data_dir: str, keys: int, samples: int) -> dict[str, Any]:
    import anyio

    from edgekv.node.edge import EdgeNode

    imported = time.perf_counter()
    out: dict[str, Any] = {}

    async def run() -> None:
        t0 = time.perf_counter()
        c0 = time.process_time()  # all threads: the load runs in a worker thread
        async with EdgeNode(origin=NOWHERE, data_dir=data_dir, node_id="bench") as node:
            store = node.open(STORE)
            assert store.get(key_of(keys // 2)) is not None
            t1 = time.perf_counter()
            out["node_to_first_read_cpu"] = time.process_time() - c0
            assert node.load_report is not None
            out["node_to_first_read"] = t1 - t0
            out["load_seconds"] = node.load_report.seconds
            out["since_imports"] = t1 - imported
            out["first_read_wall"] = time.time()
            # the Merkle trees are built in a worker thread after reads start; gossip starts
            # after them.  Measure reads in the steady state, once that is done.
            while node.status()["syncing"]:  # noqa: ASYNC110 (a poll, as a user would)
                await anyio.sleep(0.01)
            out["node_to_gossip"] = time.perf_counter() - t0
            out.update(_get_latency(store, keys, samples))

    anyio.run(run, backend="trio")
    return out


def _get_latency(store: Any, keys: int, samples: int) -> dict[str, Any]:
    import gc

    rng = random.Random(7)
    get = store.get
    batch = 1000
    batches = max(1, samples // batch)
    key_sets = [[key_of(rng.randrange(keys)) for _ in range(batch)] for _ in range(batches)]
    for ks in key_sets[:10]:  # warm-up
        for k in ks:
            get(k)
    gc.disable()
    try:
        means = []
        pc = time.perf_counter_ns
        for ks in key_sets:
            t = pc()
            for k in ks:
                get(k)
            means.append((pc() - t) / batch)
        overhead = min(_timer_overhead() for _ in range(5))
        single = []
        for k in (key_of(rng.randrange(keys)) for _ in range(samples // 4)):
            t = pc()
            get(k)
            single.append(pc() - t - overhead)
    finally:
        gc.enable()
    means.sort()
    single.sort()
    return {
        "batch_p50_ns": _pct(means, 0.5),
        "batch_p99_ns": _pct(means, 0.99),
        "single_p50_ns": _pct(single, 0.5),
        "single_p99_ns": _pct(single, 0.99),
        "timer_overhead_ns": overhead,
    }


def _timer_overhead() -> float:
    pc = time.perf_counter_ns
    n = 10_000
    vals = []
    for _ in range(n):
        t = pc()
        vals.append(pc() - t)
    vals.sort()
    return float(vals[n // 2])


def _pct(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def mode_breakdown(data_dir: str) -> dict[str, Any]:
    """The phases of `ReplicaStore.load`, timed one by one (same query and checks), and the
    old per-key `Replica.apply` path on the same states for comparison."""
    import gc
    import sqlite3

    from edgekv.crdt import Replica, bulk_load_stores
    from edgekv.node.filerows import read_states

    db = sqlite3.connect(Path(data_dir) / "edge.db")
    gc.disable()  # as the loader does
    t = time.perf_counter()
    db.execute("PRAGMA quick_check").fetchall()
    quick_check = time.perf_counter() - t
    t = time.perf_counter()
    groups = {STORE: read_states(db)[0][STORE]}  # (the META store is not needed to time these)
    read = time.perf_counter() - t
    decoded = [(s, k, d) for s, states in groups.items() for k, d in states.items()]
    t = time.perf_counter()
    loaded = Replica()
    bulk_load_stores(loaded, groups, trees=False)
    bulk = time.perf_counter() - t
    t = time.perf_counter()
    loaded.install_trees(loaded.build_pending_trees())
    trees = time.perf_counter() - t
    del loaded
    replica = Replica()
    t = time.perf_counter()
    for s, k, d in decoded:
        replica.apply(s, k, d)
    apply = time.perf_counter() - t
    return {
        "quick_check": quick_check,
        "read": read,
        "bulk": bulk,
        "trees": trees,
        "apply": apply,
    }


def mode_origin() -> None:
    """A gossip-only origin on loopback (no writes): prints its address, runs until killed."""
    import anyio

    from edgekv.crdt import Replica
    from edgekv.gossip.core import GossipNode
    from edgekv.node.runtime import NodeRuntime
    from edgekv.node.tcp import TcpTransport

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            transport = await TcpTransport.create(
                "127.0.0.1:0", task_group=tg, cluster_id="edgekv", node_id="origin", role="origin"
            )
            gossip = GossipNode(transport.address, Replica(), role="origin")
            runtime = NodeRuntime(transport, gossip)
            await tg.start(runtime.run)
            print(transport.address, flush=True)

    anyio.run(run, backend="trio")


def mode_idle(origin: str, peer: str, warmup: float, seconds: float) -> dict[str, Any]:
    import anyio

    from edgekv.node.edge import EdgeNode

    out: dict[str, Any] = {}

    async def run() -> None:
        async with EdgeNode(origin=origin, peers=[peer] if peer else [], node_id="idle") as node:
            await anyio.sleep(warmup)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            await anyio.sleep(seconds)
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            out["cpu_seconds"] = cpu
            out["wall_seconds"] = t1 - t0
            out["cpu_percent"] = 100 * cpu / (t1 - t0)
            out["peers"] = {a: p.state for a, p in node.gossip.peers().items()}
            out["messages_sent"] = node.runtime.transport.stats.total()["sent_messages"]

    anyio.run(run, backend="trio")
    return out


# -- driver ------------------------------------------------------------------------------------


def _sub(*args: str, timeout: float = 900) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--mode", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _restart_from_spawn(data_dir: str, keys: int, samples: int) -> dict[str, Any]:
    loadavg = os.getloadavg()[0]
    spawn = time.time()
    result = _sub("restart", data_dir, str(keys), str(samples))
    result["spawn_to_first_read"] = result["first_read_wall"] - spawn
    result["loadavg_start"] = loadavg
    return result


def _http_latency(data_dir: str, keys: int, requests: int) -> dict[str, Any]:
    import httpx

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekv.edge_cli",
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
            "--origin",
            NOWHERE,
            "--http",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = dict(p.split("=", 1) for p in proc.stdout.readline().split())
        rng = random.Random(3)
        lat = []
        with httpx.Client(base_url=f"http://{ready['http']}") as client:
            for i in range(requests + 200):
                path = f"/v1/stores/{STORE}/keys/{key_of(rng.randrange(keys))}"
                t = time.perf_counter_ns()
                r = client.get(path)
                dt = time.perf_counter_ns() - t
                assert r.status_code == 200 and len(r.content) == 100
                if i >= 200:
                    lat.append(dt)
        lat.sort()
        return {"p50_us": _pct(lat, 0.5) / 1000, "p99_us": _pct(lat, 0.99) / 1000}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _idle_cpu(seconds: float) -> dict[str, Any]:
    origin = subprocess.Popen(
        [sys.executable, __file__, "--mode", "origin"], stdout=subprocess.PIPE, text=True
    )
    other: subprocess.Popen[str] | None = None
    try:
        assert origin.stdout is not None
        address = origin.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as d:
            other = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgekv.edge_cli",
                    "--data-dir",
                    d,
                    "--listen",
                    "127.0.0.1:0",
                    "--origin",
                    address,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert other.stdout is not None
            ready = dict(p.split("=", 1) for p in other.stdout.readline().split())
            return _sub("idle", address, ready["address"], "3", str(seconds), timeout=seconds + 60)
    finally:
        for p in (other, origin):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def _median(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    vals = sorted(r[key] for r in runs)
    return statistics.median(vals), vals[0], vals[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--http-requests", type=int, default=3000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["restart"], help="measure restart to first read only")
    parser.add_argument("--mode", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        mode, rest = args.mode[0], args.mode[1:]
        if mode == "prepare":
            print(json.dumps(mode_prepare(rest[0], int(rest[1]))))
        elif mode == "restart":
            print(json.dumps(mode_restart(rest[0], int(rest[1]), int(rest[2]))))
        elif mode == "breakdown":
            print(json.dumps(mode_breakdown(rest[0])))
        elif mode == "origin":
            mode_origin()
        elif mode == "idle":
            print(json.dumps(mode_idle(rest[0], rest[1], float(rest[2]), float(rest[3]))))
        return

    compile_sources()  # the spawned processes start as an installed package does
    keys = args.keys
    with tempfile.TemporaryDirectory() as data_dir:
        prep = _sub("prepare", data_dir, str(keys))
        restarts = [_restart_from_spawn(data_dir, keys, args.samples) for _ in range(args.runs)]
        breakdown = [_sub("breakdown", data_dir) for _ in range(args.runs)]
        if args.only is None:
            http = [_http_latency(data_dir, keys, args.http_requests) for _ in range(args.runs)]
    if args.only is not None:
        _report_restart(args, keys, prep, restarts, breakdown)
        return
    idle = [_idle_cpu(args.idle_seconds) for _ in range(args.runs)]

    def fmt(runs: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 2) -> str:
        m, lo, hi = _median(runs, key)
        return f"{m * scale:.{digits}f} [{lo * scale:.{digits}f}-{hi * scale:.{digits}f}]"

    def ok(value: float, target: float) -> str:
        return "met" if value <= target else "**missed**"

    get50 = _median(restarts, "single_p50_ns")[0] / 1000
    get99 = _median(restarts, "single_p99_ns")[0] / 1000
    restart = _median(restarts, "spawn_to_first_read")[0]
    cpu = _median(idle, "cpu_percent")[0]
    lines = [
        "## Edge node",
        "",
        f"`python benchmarks/bench_edge.py --keys {keys} --runs {args.runs}` — medians of "
        f"{args.runs} runs [min-max]; {keys:,} keys of 16 bytes with 100-byte values; "
        f"database {prep['bytes'] / 1e6:.0f} MB.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| get() through EdgeNode, p50, each call timed alone (timer overhead "
        f"{_median(restarts, 'timer_overhead_ns')[0]:.0f} ns subtracted) | "
        f"{fmt(restarts, 'single_p50_ns', 1e-3, 3)} us | <= 1 us | {ok(get50, 1)} |",
        f"| get() through EdgeNode, p99, each call timed alone | "
        f"{fmt(restarts, 'single_p99_ns', 1e-3, 3)} us | <= 5 us | {ok(get99, 5)} |",
        f"| get() through EdgeNode, median / p99 of 1,000-call batch means | "
        f"{fmt(restarts, 'batch_p50_ns', 1e-3, 3)} / {fmt(restarts, 'batch_p99_ns', 1e-3, 3)} us"
        " | | |",
        f"| admin HTTP GET on loopback, p50 | {fmt(http, 'p50_us', 1, 0)} us | | |",
        f"| admin HTTP GET on loopback, p99 | {fmt(http, 'p99_us', 1, 0)} us | | |",
        f"| restart to first read, from process spawn | {fmt(restarts, 'spawn_to_first_read')} s "
        f"| <= 5 s | {ok(restart, 5)} |",
        f"| restart to first read, from `EdgeNode.__aenter__` | "
        f"{fmt(restarts, 'node_to_first_read')} s | | |",
        f"| restart to gossip running (Merkle trees built in a worker thread), from "
        f"`EdgeNode.__aenter__` | {fmt(restarts, 'node_to_gossip')} s | | |",
        f"| idle node CPU (getrusage over {args.idle_seconds:g} s, origin + 2 edges) | "
        f"{fmt(idle, 'cpu_percent', 1, 2)} % of a core | <= 1 % | {ok(cpu, 1)} |",
        "",
        "Where the restart time goes (separate process, same database, seconds): "
        f"PRAGMA quick_check {fmt(breakdown, 'quick_check')}, reading the registers' blocks "
        f"(fetch, checks, decode) {fmt(breakdown, 'read')}, "
        f"`bulk_load` without the Merkle trees (sorted key index, change index) "
        f"{fmt(breakdown, 'bulk')}; then, after the first read, the Merkle trees in a worker "
        f"thread {fmt(breakdown, 'trees')}; for comparison, the same states through per-key "
        f"`Replica.apply` {fmt(breakdown, 'apply')}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edge.md").write_text(text)


def _report_restart(
    args: argparse.Namespace,
    keys: int,
    prep: dict[str, Any],
    restarts: list[dict[str, Any]],
    breakdown: list[dict[str, Any]],
) -> None:
    def fmt(runs: list[dict[str, Any]], key: str) -> str:
        m, lo, hi = _median(runs, key)
        return f"{m:.2f} [{lo:.2f}-{hi:.2f}]"

    restart = _median(restarts, "spawn_to_first_read")[0]
    load = [f"{r['loadavg_start']:.2f}" for r in restarts]
    lines = [
        "## Edge restart",
        "",
        f"`python benchmarks/bench_edge.py --only restart --keys {keys} --runs {args.runs}` — "
        f"medians of {args.runs} runs [min-max]; {keys:,} keys of 16 bytes with 100-byte "
        f"values; database {prep['bytes'] / 1e6:.0f} MB; 1-minute load average at each "
        f"restart: {', '.join(load)} ({os.cpu_count()} CPUs).",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| restart to first read, from process spawn | {fmt(restarts, 'spawn_to_first_read')} s "
        f"| <= 5 s | {'met' if restart <= 5 else '**missed**'} |",
        f"| restart to first read, from `EdgeNode.__aenter__` | "
        f"{fmt(restarts, 'node_to_first_read')} s | | |",
        f"| restart to gossip running (Merkle trees built in a worker thread), from "
        f"`EdgeNode.__aenter__` | {fmt(restarts, 'node_to_gossip')} s | | |",
        f"| CPU time of the process over the same span | "
        f"{fmt(restarts, 'node_to_first_read_cpu')} s | | |",
        f"| `ReplicaStore.load` | {fmt(restarts, 'load_seconds')} s | | |",
        "",
        "Where the load time goes (separate process, same database, GC off, seconds): "
        f"PRAGMA quick_check {fmt(breakdown, 'quick_check')}, reading the registers' blocks "
        f"(fetch, checks, decode) {fmt(breakdown, 'read')}, "
        f"`bulk_load` without the Merkle trees {fmt(breakdown, 'bulk')}; then, after the "
        f"first read, the Merkle trees in a worker thread {fmt(breakdown, 'trees')}; the "
        f"same states through per-key "
        f"`Replica.apply` {fmt(breakdown, 'apply')}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edge_restart.md").write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
