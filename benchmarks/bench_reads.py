"""CPU of one network read of a replica: an edge's client port beside a Redis replica.

Run: `python benchmarks/bench_reads.py [--reads 10000] [--runs 3] [--systems edgekv,redis]
[--profile-edge FILE] [--no-write]`.

The propagation benchmark (bench_peers.py) polls every replica through its cheap network read
path, so with 20 replicas on a small machine its resolution is bound by the CPU one read costs:
on the replica serving it and in the polling client.  This measures exactly that, for one
replica, with bench_peers's own systems (an origin and one edge process; a Redis primary and
one replica process) and its readers (`OriginClient.get` on the edge's gossip port, redis-py
asyncio GET): after 500 warm-up reads, `--reads` sequential reads of one key over one
connection.  Reported per read: the replica process's CPU (user + system from /proc/PID/stat,
its idle CPU over the same wall time, measured just before, subtracted; /proc counts 10 ms
ticks, hence 10,000 reads), this process's CPU (`time.process_time`: the client) and the wall
time.  `--gap` sleeps between reads, so that the replica goes idle between them as when 20
replicas are polled in turn: each read then wakes a sleeping process with cold caches, which
costs a Python process several times a hot read (the wall time then includes the gap).
Writes its section to benchmarks/results/reads.md.  Systems alternate within
each run, so the edgekv/Redis ratios come from the same machine state.

`--profile-edge FILE` runs the edge under cProfile and writes its profile to FILE (the edge is
stopped with SIGINT so that cProfile can write it); the CPU figures then include the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_peers import SYSTEMS, EdgekvSystem, Proc, System, alternating, check_installed, medians

RESULTS = Path(__file__).resolve().parent / "results" / "reads.md"
IDLE = 1.0  # seconds of idle CPU sampled before the reads (5 s with --gap: /proc counts 10 ms)
WARMUP = 500


async def read_cpu(system: System, reads: int, gap: float = 0.0) -> dict[str, float]:
    """Per-read CPU (us) of the replica and of this process, and wall us per read."""
    await system.write("probe", b"1")
    read = system.readers()[0]
    deadline = time.monotonic() + 30
    while await read() != 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the replica never served the probe")
        await asyncio.sleep(0.01)
    for _ in range(WARMUP):
        await read()
    proc = system.replica_proc(0)
    c0 = proc.cpu()
    idle = IDLE if not gap else 5 * IDLE
    await asyncio.sleep(idle)
    idle_rate = (proc.cpu() - c0) / idle
    sys0 = _sys_cpu(proc)
    s0, own0, t0 = proc.cpu(), time.process_time(), time.monotonic()
    for _ in range(reads):
        await read()
        if gap:
            await asyncio.sleep(gap)  # the replica goes idle between reads, as when polled
    s1, own1, t1 = proc.cpu(), time.process_time(), time.monotonic()
    sys1 = _sys_cpu(proc)
    wall = t1 - t0
    return {
        "server_us": max(0.0, (s1 - s0) - idle_rate * wall) * 1e6 / reads,
        "server_sys_us": (sys1 - sys0) * 1e6 / reads,
        "server_idle_ms_s": idle_rate * 1e3,
        "client_us": (own1 - own0) * 1e6 / reads,
        "wall_us": wall * 1e6 / reads,
    }


def _sys_cpu(proc: Proc) -> float:
    """System CPU seconds of `proc` so far."""
    assert proc.popen is not None
    stat = Path(f"/proc/{proc.popen.pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")


def _profiled(system: System, out: str) -> None:
    """Run the edge of `system` under cProfile (`--profile-edge`)."""
    assert isinstance(system, EdgekvSystem)
    spawn = system.cluster.spawn

    def spawn_profiled(name: str, argv: list[str]):  # type: ignore[no-untyped-def]
        if name.startswith("edge-"):
            argv = [argv[0], "-m", "cProfile", "-o", out, *argv[1:]]
        return spawn(name, argv)

    system.cluster.spawn = spawn_profiled  # type: ignore[method-assign]


async def profiled_run(root: Path, reads: int, gap: float, out: str) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(prefix="edgekv-", dir=root))
    system = EdgekvSystem(d)
    _profiled(system, out)
    try:
        await system.start(1)
        got = await read_cpu(system, reads, gap)
        proc = system.replica_proc(0)
        assert proc.popen is not None
        os.killpg(proc.popen.pid, signal.SIGINT)  # cProfile writes its file on the way out
        for _ in range(100):
            if proc.popen.poll() is not None:
                break
            await asyncio.sleep(0.1)
        return got
    finally:
        await system.stop()


async def run(args: argparse.Namespace) -> str:
    systems = args.systems.split(",")
    if args.profile_edge:
        root = Path(tempfile.mkdtemp(prefix="bench-reads-"))
        try:
            got = await profiled_run(root, args.reads, args.gap, args.profile_edge)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return f"edgekv under cProfile: {got}; profile in {args.profile_edge}"
    by_kind = await alternating(systems, args.runs, 1, lambda s: read_cpu(s, args.reads, args.gap))
    lines = [
        "| system | replica CPU per read | of which system | client CPU per read | wall per read"
        " | replica idle CPU |",
        "|---|---|---|---|---|---|",
    ]
    med: dict[str, dict[str, float]] = {}
    for kind in systems:
        m = med[kind] = medians(by_kind[kind])
        runs = ", ".join(f"{r['server_us']:.0f}" for r in by_kind[kind])
        lines.append(
            f"| {SYSTEMS[kind].name} | {m['server_us']:.0f} us (runs: {runs}) | "
            f"{m['server_sys_us']:.0f} us | "
            f"{m['client_us']:.0f} us | {m['wall_us']:.0f} us | {m['server_idle_ms_s']:.1f} ms/s |"
        )
    if "edgekv" in med and "redis" in med:
        e, r = med["edgekv"], med["redis"]
        lines.append(
            f"\nedgekv / Redis: replica CPU {e['server_us'] / max(r['server_us'], 1e-9):.2f}x, "
            f"client CPU {e['client_us'] / max(r['client_us'], 1e-9):.2f}x, "
            f"wall {e['wall_us'] / max(r['wall_us'], 1e-9):.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reads", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default="edgekv,redis")
    ap.add_argument("--profile-edge", default="", metavar="FILE")
    ap.add_argument(
        "--gap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep between reads (the replica idles between them, as when polled)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only, leave results/ alone")
    args = ap.parse_args()
    if args.profile_edge:
        args.profile_edge = str(Path(args.profile_edge).resolve())
    check_installed(args.systems.split(","))
    load0 = os.getloadavg()
    body = asyncio.run(run(args))
    load1 = os.getloadavg()
    text = (
        "## Network reads of one replica: CPU per read (`benchmarks/bench_reads.py`)\n\n"
        f"`python benchmarks/bench_reads.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f": medians of {args.runs} runs of {args.reads:,} sequential gets of one key over one "
        f"connection, systems alternating; load average {load0[0]:.2f} at the start, "
        f"{load1[0]:.2f} at the end ({os.cpu_count()} CPUs); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  Replica CPU: user + system "
        "of its process (/proc), its idle CPU subtracted; client CPU: `time.process_time` of "
        "the script (OriginClient on asyncio, redis-py asyncio).\n\n" + body + "\n"
    )
    print(text)
    if not args.no_write and not args.profile_edge:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
