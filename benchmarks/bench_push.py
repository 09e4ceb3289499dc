"""CPU of one write's fan-out: what each replica and the source of truth spend per write.

Run: `python benchmarks/bench_push.py [--replicas 5] [--rate 100] [--seconds 10] [--runs 3]
[--systems edgekv,redis] [--no-write]`.

The propagation benchmark (bench_peers.py) puts N replica processes on this machine's few
CPUs, so its tail is set by the CPU each replica spends per write: N replicas cost N times
that per write.  This measures it alone, with bench_peers's own systems (an origin and N edge
processes, as deployed: signed writes verified at every edge; a Redis primary and N replica
processes) and nothing reading them: writes of one key at a steady `--rate` for `--seconds`
through the system's client.  Reported per write: the mean replica's CPU (user + system from
/proc/PID/stat, its idle CPU over the same wall time, measured just before, subtracted; /proc
counts 10 ms ticks), the part of it that is system time, and the source of truth's CPU.
Systems alternate within each run, so the edgekv/Redis ratios come from the same machine
state.  At 100 writes/s each write finds a replica idle since the last one, caches cold, as
in bench_peers.

The floor (`--floor`, on by default): N bare receiver processes, each reading a socket and
doing nothing else, get one frame of `--floor-bytes` per write at the same rate: a Python loop
blocked in `recv`, an asyncio stream and a trio stream (the edge's event loop).  Their CPU per
frame is what one wake-up of such a process costs at that rate, before any work: on this
machine an idle event loop woken every 10 ms costs several times a blocking loop, and a
replica polled by readers pays it again at every read.  Writes its section to
benchmarks/results/push.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_origin import process_cpu
from bench_peers import SYSTEMS, Proc, System, alternating, check_installed, medians

RESULTS = Path(__file__).resolve().parent / "results" / "push.md"
IDLE = 3.0  # seconds of idle CPU sampled before the writes
RECEIVER = """
import socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "blocking":
    s = socket.create_connection(("127.0.0.1", port))
    while s.recv(65536):
        pass
elif mode == "asyncio":
    import asyncio
    async def main():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while await r.read(65536):
            pass
    asyncio.run(main())
else:
    import trio
    async def main():
        s = await trio.open_tcp_stream("127.0.0.1", port)
        while await s.receive_some(65536):
            pass
    trio.run(main)
"""
FLOOR_MODES = {
    "blocking": "Python, blocking `recv` loop",
    "asyncio": "Python, asyncio stream",
    "trio": "Python, trio stream (the edge's loop)",
}


def _cpu(proc: Proc) -> tuple[float, float]:
    """(user + system, system) CPU seconds of `proc` so far."""
    assert proc.popen is not None
    fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick


def floor(mode: str, receivers: int, rate: float, seconds: float, size: int) -> float:
    """CPU microseconds per frame of the median bare receiver (module docstring)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        procs = [
            subprocess.Popen([sys.executable, "-c", RECEIVER, mode, str(port)])
            for _ in range(receivers)
        ]
        conns = []
        try:
            conns = [server.accept()[0] for _ in procs]
            time.sleep(1.0)  # imports done, each loop waiting
            c0 = [process_cpu(p.pid) for p in procs]
            frame = b"x" * size
            t0 = time.monotonic()
            n = 0
            while (due := t0 + n / rate) < t0 + seconds:
                time.sleep(max(0.0, due - time.monotonic()))
                n += 1
                for c in conns:
                    c.sendall(frame)
            time.sleep(0.5)
            used = [process_cpu(p.pid) - c for p, c in zip(procs, c0, strict=True)]
        finally:
            for c in conns:
                c.close()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return statistics.median(used) * 1e6 / n


async def push_cpu(system: System, replicas: int, rate: float, seconds: float) -> dict[str, float]:
    """CPU microseconds per write: the mean replica (idle subtracted), its system part, and
    the source of truth (idle subtracted)."""
    await system.write("probe", b"0")
    await asyncio.sleep(1.0)  # the first write's catch-up and table exchanges settle
    procs = [system.cluster.procs[0], *(system.replica_proc(i) for i in range(replicas))]
    c0 = [_cpu(p) for p in procs]
    await asyncio.sleep(IDLE)
    c1 = [_cpu(p) for p in procs]
    idle = [(b[0] - a[0]) / IDLE for a, b in zip(c0, c1, strict=True)]
    t0 = time.monotonic()
    n = 0
    while (due := t0 + n / rate) < t0 + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        n += 1
        await system.write("probe", str(n).encode())
    await asyncio.sleep(0.5)  # the last pushes land
    wall = time.monotonic() - t0
    c2 = [_cpu(p) for p in procs]
    used = [(b[0] - a[0]) - r * wall for a, b, r in zip(c1, c2, idle, strict=True)]
    system_part = [b[1] - a[1] for a, b in zip(c1[1:], c2[1:], strict=True)]
    return {
        "replica_us": max(0.0, statistics.mean(used[1:])) * 1e6 / n,
        "replica_sys_us": statistics.mean(system_part) * 1e6 / n,
        "source_us": max(0.0, used[0]) * 1e6 / n,
        "writes": n,
    }


async def run(args: argparse.Namespace) -> str:
    systems = args.systems.split(",")
    by_kind = await alternating(
        systems,
        args.runs,
        args.replicas,
        lambda s: push_cpu(s, args.replicas, args.rate, args.seconds),
    )
    lines = [
        "| system | replica CPU per write (mean replica) | of which system | source of truth"
        " CPU per write |",
        "|---|---|---|---|",
    ]
    med: dict[str, dict[str, float]] = {}
    for kind in systems:
        runs = by_kind[kind]
        m = med[kind] = medians(runs)
        each = ", ".join(f"{r['replica_us']:.0f}" for r in runs)
        lines.append(
            f"| {SYSTEMS[kind].name} | {m['replica_us']:.0f} us (runs: {each}) | "
            f"{m['replica_sys_us']:.0f} us | {m['source_us']:.0f} us |"
        )
    if "edgekv" in med and "redis" in med:
        e, r = med["edgekv"], med["redis"]
        lines.append(
            f"\nedgekv / Redis: replica CPU per write "
            f"{e['replica_us'] / max(r['replica_us'], 1e-9):.1f}x, source of truth "
            f"{e['source_us'] / max(r['source_us'], 1e-9):.1f}x.  With {args.replicas} replicas "
            f"on {os.cpu_count()} CPUs, edgekv's replicas need "
            f"{e['replica_us'] * args.replicas / 1e3:.1f} ms of CPU per write together."
        )
    if args.floor:
        rows: dict[str, list[float]] = {m: [] for m in FLOOR_MODES}
        for _ in range(args.runs):
            for mode in FLOOR_MODES:
                rows[mode].append(
                    floor(mode, args.replicas, args.rate, args.seconds, args.floor_bytes)
                )
        lines += [
            "",
            f"The floor: {args.replicas} bare receiver processes, one {args.floor_bytes}-byte"
            f" frame each per write at {args.rate:g}/s for {args.seconds:g} s, nothing done with"
            " it; CPU per frame of the median receiver (medians of the runs; /proc counts 10 ms"
            " ticks):",
            "",
            "| receiver | CPU per frame |",
            "|---|---|",
        ]
        for mode, name in FLOOR_MODES.items():
            each = ", ".join(f"{v:.0f}" for v in rows[mode])
            lines.append(f"| {name} | {statistics.median(rows[mode]):.0f} us (runs: {each}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--replicas", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0, help="writes per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default="edgekv,redis")
    ap.add_argument(
        "--floor", action=argparse.BooleanOptionalAction, default=True, help="bare receivers too"
    )
    ap.add_argument("--floor-bytes", type=int, default=300, help="frame size of the floor")
    ap.add_argument("--no-write", action="store_true", help="print only, leave results/ alone")
    args = ap.parse_args()
    check_installed(args.systems.split(","))
    load0 = os.getloadavg()
    body = asyncio.run(run(args))
    load1 = os.getloadavg()
    text = (
        "## One write's fan-out: CPU per write at each replica (`benchmarks/bench_push.py`)\n\n"
        f"`python benchmarks/bench_push.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f": medians of {args.runs} runs, {args.replicas} replicas, writes of one key at "
        f"{args.rate:g}/s for {args.seconds:g} s, nothing reading; systems alternating; load "
        f"average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end "
        f"({os.cpu_count()} CPUs); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  "
        "CPU: user + system of each process (/proc), its idle CPU subtracted.\n\n" + body + "\n"
    )
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
