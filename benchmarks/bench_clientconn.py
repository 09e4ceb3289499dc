"""The origin's client connection before and after it became one path (issue #12).

    python benchmarks/bench_clientconn.py [--before REV] [--repeat 3] [--seconds 5]

Runs bench_origin's durable-write throughput (64 writers with a connection each, and 64
writers sharing one pipelined connection) against an origin process started from each
source tree in turn: `--before` (default: the commit before the one-path change), the
one-path commit itself (`--one-path`), and this checkout.  The clients are always this
checkout's, so only the origin's code differs.  Runs alternate between the trees, so that
each sees the same machine; besides puts/s (which a loaded machine distorts) it reports the
origin process's CPU time per put.  Writes benchmarks/results/origin_clientconn.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import trio

from bench_origin import throughput

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "origin_clientconn.md"
ONE_PATH = "ca3a497"  # "#12: origin client connection: one request path, ..."


def tree(rev: str, into: Path) -> Path:
    """The `src` directory of `rev`, extracted under `into`."""
    out = into / rev.replace("^", "_parent")
    out.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default=f"{ONE_PATH}^")
    parser.add_argument("--one-path", default=ONE_PATH)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, bool], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edgekv-clientconn-") as tmp:
        trees = {
            f"before ({args.before})": tree(args.before, Path(tmp)),
            f"one path ({args.one_path})": tree(args.one_path, Path(tmp)),
            "now (this checkout)": ROOT / "src",
        }
        for r in range(args.repeat):
            order = list(trees.items())
            if r % 2:
                order.reverse()
            for label, src in order:
                os.environ["PYTHONPATH"] = str(src)  # the origin process's code
                for shared in (False, True):
                    run = trio.run(throughput, args.clients, args.seconds, 100, shared)
                    runs.setdefault((label, shared), []).append(run)
                    print(label, "shared" if shared else "own", f"{run[0]:,.0f} puts/s", flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "## Origin client connection: before and after one path (issue #12)",
        "",
        f"`python benchmarks/bench_clientconn.py --repeat {args.repeat} --seconds "
        f"{args.seconds:g}`: {args.clients} writers, durable puts of 100-byte values, medians "
        f"of {args.repeat} alternating runs; only the origin's code differs.  Load average "
        f"{load_before:.1f} at start, {load_after:.1f} at end (puts/s suffers from load; "
        "CPU per put much less).",
        "",
        "| origin code | connections | puts/s | origin CPU per put (us) |",
        "| --- | --- | ---: | ---: |",
    ]
    for label in trees:
        for shared in (False, True):
            rs = runs[(label, shared)]
            puts = statistics.median(r[0] for r in rs)
            cpu = statistics.median(r[1] for r in rs)
            what = "one shared" if shared else "one each"
            lines.append(f"| {label} | {what} | {puts:,.0f} | {cpu:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
