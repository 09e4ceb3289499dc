"""Benchmark the replica and the read API: get() latency, delta apply rate, memory, prefix scan.

    python benchmarks/bench_replica.py [--keys 1000000] [--runs 3] [--only bulk]

Every measurement runs in a fresh subprocess (so memory figures start from a clean heap) and is
repeated `--runs` times; the report gives the median run (and the spread).  Prints a markdown
section and writes it to benchmarks/results/replica.md.

What is measured (keys are 16-byte strings, values 100 random bytes, one store):
- get(): `KvStore.get` on random existing keys of a 1M-key store.  (a) The p50 and p99 (the
  targets): each call timed alone; the timer's own cost (two back-to-back `perf_counter_ns`
  calls, measured) is reported and subtracted.  (b) A check: batches of 1,000 calls timed
  around the batch, the median and p99 of the batch means.
- apply: `Replica.apply_batch` of Register deltas (digest, sorted key index and change index
  all maintained): inserts of new keys in seq order, and overwrites of random existing keys.
- memory: RSS (from /proc/self/statm) of a fresh process before and after loading the keys,
  divided by the number of keys: keys, values, states and every index included.
- scan: `KvStore.scan("NN:*")` where the prefix selects 1% of the keys.
- bulk load (`--only bulk`, to benchmarks/results/replica_bulk.md): `crdt.bulk_load_stores` of
  the final states of `--keys` keys into an empty replica, keys in sorted order (as the edge's
  database returns them) with seqs (a) ascending with the keys and (b) in random order (the
  change log needs one sort); and the same states through per-key `Replica.apply`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgekv.crdt import META, Register, Replica, State
from edgekv.node.kvstore import KvStore

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_700_000_000_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def key_of(i: int) -> str:
    """16 bytes; the first two digits spread keys over 100 prefixes of 1% each."""
    return f"{i % 100:02d}:{i:013d}"


def load(replica: Replica, n: int, batch: int = 10_000) -> tuple[float, float]:
    """Insert n keys (seqs 2..n+1) in batches; returns the (wall, CPU) seconds spent applying."""
    replica.apply(META, "bench", Register(1, T0, b""))
    replica.covered.add(1, 1)
    urandom = os.urandom
    wall = cpu = 0.0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        items = [
            ("bench", key_of(i), Register(i + 2, T0 + i // 1000, urandom(100)))
            for i in range(start, stop)
        ]
        c = time.process_time()
        t = time.perf_counter()
        replica.apply_batch(items, [(start + 2, stop + 1)])
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    return wall, cpu


def child_memory(n: int) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    replica = Replica()
    load(replica, n)
    gc.collect()
    after = rss_bytes()
    assert len(replica) == n
    return {"bytes_per_key": (after - before) / n}


def child_data(n: int) -> dict[str, Any]:
    """The same keys, values and Register states in one flat list, without any replica."""
    gc.collect()
    before = rss_bytes()
    urandom = os.urandom
    data: list[object] = []
    for i in range(n):
        data.append(key_of(i))
        data.append(Register(i + 2, T0 + i // 1000, urandom(100)))
    gc.collect()
    after = rss_bytes()
    return {"data_bytes_per_key": (after - before) / n - 16}  # minus the list's two slots


def child_speed(n: int) -> dict[str, Any]:
    replica = Replica()
    insert_wall, insert_cpu = load(replica, n)
    store = KvStore(replica.store("bench"), clock=lambda: T0)
    rng = random.Random(1)
    get = store.get

    # (a) batches of 1,000 gets: wall clock and CPU time per call
    keys = [key_of(rng.randrange(n)) for _ in range(200_000)]
    wall_batches, cpu_batches = [], []
    wall, cpu = time.perf_counter_ns, time.process_time_ns
    for b in range(0, len(keys), 1000):
        batch = keys[b : b + 1000]
        c_ns = cpu()
        t_ns = wall()
        for k in batch:
            get(k)
        wall_batches.append((wall() - t_ns) / len(batch))
        cpu_batches.append((cpu() - c_ns) / len(batch))
    # (b) every call timed alone, minus the timer's own cost
    overheads = []
    for _ in range(100_000):
        t_ns = wall()
        overheads.append(wall() - t_ns)
    overhead = statistics.median(overheads)
    singles = []
    for k in keys[:100_000]:
        t_ns = wall()
        get(k)
        singles.append(wall() - t_ns - overhead)
    assert all(get(k) is not None for k in keys[:1000])

    # apply: overwrite random existing keys (seqs continue after the load)
    m = min(200_000, n)
    seq = n + 2
    items = [
        ("bench", key_of(rng.randrange(n)), Register(seq + i, T0 + n, b"x" * 100)) for i in range(m)
    ]
    c = time.process_time()
    t = time.perf_counter()
    for start in range(0, m, 10_000):
        stop = min(start + 10_000, m)
        replica.apply_batch(items[start:stop], [(seq + start, seq + stop - 1)])
    update_wall = time.perf_counter() - t
    update_cpu = time.process_time() - c
    assert replica.watermark == seq + m - 1
    # duplicates (what gossip delivers most): the same deltas again, all rejected
    t = time.perf_counter()
    changed = replica.apply_batch(items[: m // 2])
    dup_wall = time.perf_counter() - t
    assert changed == []

    # scan of a 1% prefix
    scans = []
    for p in range(10):
        t = time.perf_counter()
        found = store.scan(f"{p:02d}:*")
        scans.append(time.perf_counter() - t)
        assert len(found) == n // 100
    return {
        "get_batch_p50_ns": _pct(wall_batches, 50),
        "get_batch_p99_ns": _pct(wall_batches, 99),
        "get_cpu_batch_p50_ns": _pct(cpu_batches, 50),
        "get_cpu_batch_p99_ns": _pct(cpu_batches, 99),
        "get_single_p50_ns": _pct(singles, 50),
        "get_single_p99_ns": _pct(singles, 99),
        "timer_overhead_ns": overhead,
        "insert_per_s": n / insert_wall,
        "insert_cpu_per_s": n / insert_cpu,
        "update_per_s": m / update_wall,
        "update_cpu_per_s": m / update_cpu,
        "duplicate_per_s": (m // 2) / dup_wall,
        "scan_ms": statistics.median(scans) * 1000,
        "scan_keys": n // 100,
        "load_average": os.getloadavg()[0],
    }


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def run_child(kind: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--keys", str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def median_of(runs: list[dict[str, Any]], field: str) -> tuple[float, float, float]:
    xs = [r[field] for r in runs]
    return statistics.median(xs), min(xs), max(xs)


HISTORY = (
    "History (wall clock, same machine and load): the first version of crdt/ (commit a3320bd,"
    " change index in a SortedKeyList, BLAKE2b leaf placement, regex per scanned key) measured"
    " get() p50 1,359 ns / p99 13,441 ns (batches), inserts 45,000 deltas/s, overwrites"
    " 21,000 deltas/s, 472 bytes/key, 1% prefix scan 32.8 ms.  Since then: an append-only change"
    " log, CRC-32 leaf placement, older deltas rejected before hashing, and scans that slice the"
    " sorted index by the literal prefix.  The change log marks an overwritten key's old entry"
    " (about 1 us per overwrite) so that its periodic compaction is a C-level filter: the worst"
    " single apply at 1M keys went from 1.4 s (compaction looking up every key) to 0.12 s."
    "  Then (commit 4f866fc) a register became one flat bytes object (flags, seq,"
    " written_at, optional expiry, value) instead of a Register object pointing at a value and"
    " two int objects: the key, value and state objects went from 370 to about 260 bytes/key"
    " and the total from 477 to about 367 bytes/key; overwrites went from 95,805 to about"
    " 109,000 deltas/s (one header unpack instead of several attribute reads); get() went"
    " from 1,308 ns (batch mean) / 1,038 ns (single calls) to the figures above.  get() is"
    " bound by memory latency on this VM: its CPU-time and wall-clock figures agree, the same"
    " call on a 1,000-key store takes about 130 ns, and at 1M keys a bare `dict.get` on random"
    " keys takes about 490 ns and touching the value it returns about 350 ns more (one cache"
    " and TLB miss each), which leaves about 150 ns for the method itself."
)


def report(n: int, speed: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
    def row(
        name: str, runs: list[dict[str, Any]], field: str, unit: str, target: str, fmt: str = ",.0f"
    ) -> str:
        med, lo, hi = median_of(runs, field)
        return f"| {name} | {med:{fmt}} {unit} | {lo:{fmt}} to {hi:{fmt}} | {target} |"

    loads = ", ".join(f"{r['load_average']:.1f}" for r in speed)
    lines = [
        "## Replica and read API (`benchmarks/bench_replica.py`)",
        "",
        f"`python benchmarks/bench_replica.py --keys {n} --runs {len(speed)}`: {n:,} keys of 16"
        " bytes with 100-byte values in one store; median of"
        f" {len(speed)} runs, each in a fresh process (range across runs in the third column)."
        f" 1-minute load average during the runs: {loads} on {os.cpu_count()} CPUs.  Wall-clock"
        " figures include time the process waited for a CPU on a loaded machine; CPU-time"
        " figures (`time.process_time`) count only time it ran.",
        "",
        "| measure | median | range | target |",
        "|---|---|---|---|",
        row(
            "get() p50, each call timed alone (timer cost subtracted)",
            speed,
            "get_single_p50_ns",
            "ns",
            "<= 1,000 ns",
        ),
        row(
            "get() p99, each call timed alone (timer cost subtracted)",
            speed,
            "get_single_p99_ns",
            "ns",
            "<= 5,000 ns",
        ),
        row("get(), median of 1,000-call batch means, wall", speed, "get_batch_p50_ns", "ns", ""),
        row("get(), p99 of 1,000-call batch means, wall", speed, "get_batch_p99_ns", "ns", ""),
        row(
            "get(), median of 1,000-call batch means, CPU", speed, "get_cpu_batch_p50_ns", "ns", ""
        ),
        row("get(), p99 of 1,000-call batch means, CPU", speed, "get_cpu_batch_p99_ns", "ns", ""),
        row("timer cost (two perf_counter_ns calls)", speed, "timer_overhead_ns", "ns", ""),
        row("apply, inserts of new keys, wall", speed, "insert_per_s", "deltas/s", ">= 100,000"),
        row("apply, inserts of new keys, CPU", speed, "insert_cpu_per_s", "deltas/s", ">= 100,000"),
        row(
            "apply, overwrites of random keys, wall",
            speed,
            "update_per_s",
            "deltas/s",
            ">= 100,000",
        ),
        row(
            "apply, overwrites of random keys, CPU",
            speed,
            "update_cpu_per_s",
            "deltas/s",
            ">= 100,000",
        ),
        row(
            "apply, duplicates of applied deltas (rejected), wall",
            speed,
            "duplicate_per_s",
            "deltas/s",
            "",
        ),
        row("resident memory per key, all included", memory, "bytes_per_key", "bytes", "<= 400"),
        row(
            "of which key, value and state objects alone", memory, "data_bytes_per_key", "bytes", ""
        ),
        row(
            "of which dict and indexes (digest tree, sorted keys, change log)",
            memory,
            "index_bytes_per_key",
            "bytes",
            "",
        ),
        row(f"scan of a 1% prefix ({n // 100:,} keys)", speed, "scan_ms", "ms", "", ",.1f"),
        "",
        "The p50 and p99 of get() are percentiles of single calls, each timed alone with"
        " `perf_counter_ns` (the timer's own cost, measured in the same run, is subtracted)."
        "  A batch mean is the mean of 1,000 calls: it counts the slow calls too, so it sits"
        " above the median call; it is shown as a check on the timer, not as a percentile.",
        "",
        "Apply maintains the store's Merkle digest (two BLAKE2b entry hashes per overwrite, one per"
        " insert), the sorted key index and the change log.",
        "",
        HISTORY,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", choices=list(CHILDREN))
    ap.add_argument("--only", choices=["bulk"], help="measure the bulk load only")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.keys)))
        return
    if args.only == "bulk":
        bulk = [run_child("bulk", args.keys) for _ in range(args.runs)]
        text = report_bulk(args.keys, args.runs, bulk)
        print(text)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "replica_bulk.md").write_text(text)
        return
    speed = [run_child("speed", args.keys) for _ in range(args.runs)]
    memory = [run_child("memory", args.keys) for _ in range(args.runs)]
    data = [run_child("data", args.keys) for _ in range(args.runs)]
    for m, d in zip(memory, data, strict=True):
        m.update(d)
        m["index_bytes_per_key"] = m["bytes_per_key"] - d["data_bytes_per_key"]
    text = report(args.keys, speed, memory)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replica.md").write_text(text)


def child_bulk(n: int) -> dict[str, Any]:
    """Seconds to bulk-load n register states (two seq orders) and to apply them one by one."""
    from edgekv.crdt import bulk_load_stores

    rng = random.Random(3)
    keys = [key_of(i) for i in range(n)]
    shuffled = list(range(2, n + 2))
    rng.shuffle(shuffled)
    out: dict[str, Any] = {"loadavg": os.getloadavg()[0]}
    for name, seqs in (("ascending", range(2, n + 2)), ("random", shuffled)):
        states = {
            k: Register(s, T0 + s, rng.randbytes(100)) for k, s in zip(keys, seqs, strict=True)
        }
        meta: dict[str, State] = {"bench": Register(1, T0, b"", None)}
        gc.collect()
        t = time.perf_counter()
        bulk_load_stores(Replica(), {META: meta, "bench": dict(states)})
        out[f"bulk_{name}"] = time.perf_counter() - t
    replica = Replica()
    replica.apply(META, "bench", Register(1, T0, b"", None))
    gc.disable()
    t = time.perf_counter()
    apply = replica.apply
    for k, st in states.items():
        apply("bench", k, st)
    out["apply"] = time.perf_counter() - t
    gc.enable()
    return out


def report_bulk(n: int, runs: int, bulk: list[dict[str, Any]]) -> str:
    def cell(field: str) -> str:
        m, lo, hi = median_of(bulk, field)
        return f"{m:.2f} [{lo:.2f}-{hi:.2f}] s"

    loads = ", ".join(f"{r['loadavg']:.2f}" for r in bulk)
    return "\n".join(
        [
            "## Replica bulk load",
            "",
            f"`python benchmarks/bench_replica.py --only bulk --keys {n} --runs {runs}` — "
            f"medians of {runs} runs [min-max], {n:,} register states in one store; 1-minute "
            f"load average at each run: {loads} ({os.cpu_count()} CPUs).",
            "",
            "| path | seconds |",
            "|---|---|",
            f"| `bulk_load_stores`, keys sorted, seqs ascending | {cell('bulk_ascending')} |",
            f"| `bulk_load_stores`, keys sorted, seqs random | {cell('bulk_random')} |",
            f"| per-key `Replica.apply` (GC off), seqs random | {cell('apply')} |",
            "",
        ]
    )


CHILDREN = {
    "speed": child_speed,
    "memory": child_memory,
    "data": child_data,
    "bulk": child_bulk,
}

if __name__ == "__main__":
    main()
