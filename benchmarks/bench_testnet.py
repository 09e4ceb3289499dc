"""Testnet benchmarks: a 1,000-edge simulated scenario, and how many simulated edges fit in 16 GiB.

Run: `python benchmarks/bench_testnet.py [--edges 1000] [--sizes 100,200,400]`.  Prints a markdown
section and writes it to benchmarks/results/testnet.md.

1. Wall time of the bundled `flood-1000` scenario (1,000 edges, 50 ms +- 10 ms links, 100 writes,
   a partition of a tenth of the edges for 3 s, heal) in sim mode: trio virtual time, so the
   wall time is pure CPU cost of the simulation (gossip, network, checker probes).
2. Memory per simulated edge: a fresh subprocess per size starts a sim Testnet of N edges,
   writes 20 values, waits for convergence, and reports its resident set (VmRSS); the slope
   between the two largest sizes is the cost per edge.  The 16 GiB figure is an extrapolation of that slope,
   not a measurement (nothing close to 16 GiB is allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "testnet.md"
GIB = 1 << 30

_MEMORY_CHILD = """
import json, sys, trio
from edgekv.testnet.harness import Testnet, sim_clock

def rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

async def main(n: int) -> dict:
    base = rss()
    async with Testnet(edges=n, network="sim", latency=0.05, seed=1) as net:
        await net.client.create_store("m")
        for i in range(20):
            await net.client.put("m", f"k{i}", b"x" * 32)
        ok = await net.converged(timeout=30)
        return {"edges": n, "base": base, "rss": rss(), "converged": ok}

print(json.dumps(trio.run(main, int(sys.argv[1]), clock=sim_clock())))
"""


def flood(edges: int) -> dict[str, object]:
    import trio

    from edgekv.testnet.harness import sim_clock
    from edgekv.testnet.report import run_experiment
    from edgekv.testnet.scenario import load_scenario

    scenario = load_scenario("flood-1000")
    if edges != scenario.edges:
        scenario = scenario.shortened(scale=1.0, edges=edges)
    t0, c0 = time.perf_counter(), time.process_time()
    report = trio.run(lambda: run_experiment(scenario, network="sim"), clock=sim_clock())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "report": report}


def memory(sizes: list[int]) -> list[dict[str, float]]:
    out = []
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(n)],
            capture_output=True,
            check=True,
            timeout=1800,
        )
        out.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    return out


def quadratic_fit(points: list[dict[str, float]]) -> int:
    """Largest N with a + b*N + c*N^2 <= 16 GiB, the parabola through three (edges, rss)."""
    (x0, y0), (x1, y1), (x2, y2) = [(p["edges"], p["rss"]) for p in points]
    d1 = (y1 - y0) / (x1 - x0)
    d2 = (y2 - y1) / (x2 - x1)
    c = (d2 - d1) / (x2 - x0)
    b = d1 - c * (x0 + x1)
    a = y0 - b * x0 - c * x0 * x0
    target = 16 * GIB - a
    if c <= 0:
        return int(target / b) if b > 0 else 0
    return int((-b + (b * b + 4 * c * target) ** 0.5) / (2 * c))


def by_type(counts: dict[str, int], writes: int, digits: int) -> str:
    """`counts` per write, largest first: "PUSH 627.5, IHAVE 295.7, ..."."""
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v / writes:,.{digits}f}" for k, v in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument("--sizes", default="100,400,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    f = flood(args.edges)
    r = f["report"]
    assert isinstance(r, dict)
    c = r["checker"]
    w = max(1, c["writes_acked"])
    mem = memory(sizes)
    lo, hi = mem[-2], mem[-1]  # the two largest sizes: per-node membership grows with N
    per_edge = (hi["rss"] - lo["rss"]) / (hi["edges"] - lo["edges"])
    base = lo["rss"] - per_edge * lo["edges"]
    fit = int((16 * GIB - base) / per_edge) if per_edge > 0 else 0
    quad = quadratic_fit(mem[-3:]) if len(mem) >= 3 else None

    lines = [
        "## Testnet (`python benchmarks/bench_testnet.py`)",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "",
        f"**{args.edges}-edge simulated scenario** (`flood-1000`: 100 writes, 50 ms +- 10 ms links, "
        f"a 3 s partition of a tenth of the edges, heal; trio virtual time, seed {r['seed']}):",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time (target <= 60 s) | {f['wall']:.1f} s |",
        f"| CPU time of the process (the machine is shared: wall >= CPU) | {f['cpu']:.1f} s |",
        f"| writes acked | {c['writes_acked']} / {c['writes_issued']} |",
        f"| propagation ack -> each edge p50 / p99 / max (virtual) | {c['propagation']['p50']:.3f} / {c['propagation']['p99']:.3f} / {c['propagation']['max']:.3f} s |",
        f"| ack -> last edge p50 / max (partitioned writes included) | {c['propagation_to_last_edge']['p50']:.3f} / {c['propagation_to_last_edge']['max']:.3f} s |",
        f"| node-to-node messages (all types, incl. membership and anti-entropy) per write | {r['messages']['per_write']} |",
        f"| convergence after the timeline | {r['convergence_after_timeline']} s |",
        f"| unreached / lost / violations | {c['unreached']} / {len(r['lost'])} / {c['violations']} |",
        f"| assertions | {'all pass' if r['passed'] else 'FAILED'} |",
        "",
        "Messages per write by type (setup included): " + by_type(r["messages"]["by_type"], w, 1),
        "",
        "Bytes per write by type: " + by_type(r["messages"]["bytes_by_type"], w, 0),
        "",
        "**Memory per simulated edge** (fresh process per size, VmRSS after 20 writes converged):",
        "",
        "| edges | RSS |",
        "|---|---|",
        *[f"| {m['edges']} | {m['rss'] / (1 << 20):.0f} MiB |" for m in mem],
        "",
        "Extrapolated, not measured (nothing near 16 GiB is allocated): "
        + (
            f"a quadratic fit through the three sizes (every node's membership table holds every "
            f"other node, so total memory grows faster than linearly) puts the limit at about "
            f"**{quad:,} edges** in 16 GiB; "
            if quad
            else ""
        )
        + f"the linear slope between the two largest sizes ({per_edge / 1024:.0f} KiB per edge) "
        f"would say {fit:,}, which ignores that growth.  Each edge also holds a full replica, so "
        "the figure shrinks as the data set grows (20 keys here).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
