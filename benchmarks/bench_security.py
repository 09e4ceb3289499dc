"""What transport security costs the origin: durable writes/s plain, with TLS, and with TLS plus
a cluster key and tokens, in the same run.

    python benchmarks/bench_security.py [--quick] [--repeat 3] [--seconds 4]

The origin runs as its own process (`edgekv origin`, synchronous=FULL) as in bench_origin.py,
whose `throughput` does the measuring: 64 clients each on its own connection, then 64 writers
sharing one pipelined connection.  The modes run interleaved (plain, TLS, TLS + key + tokens,
then again), so a change of machine load hits each alike; each figure is the median of
`--repeat` runs.  TLS here is mutual for nodes but the clients present no certificate (as
most clients would); certificates are ECDSA P-256 from `edgekv certs`' CA, TLS 1.3.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench_origin import throughput
from edgekv.node.certs import write_dev_certs
from edgekv.node.tlsconfig import TlsConfig

RESULTS = Path(__file__).parent / "results" / "security.md"
TOKEN = "bench-writer-token"


def modes(d: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Mode name -> (origin options, OriginClient keywords)."""
    write_dev_certs(d, ["origin"])
    (d / "key").write_text("bench-cluster-key\n")
    (d / "tokens").write_text(f"{TOKEN}=write:*\n")
    tls_args = [
        *("--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "origin.pem")),
        *("--tls-key", str(d / "origin-key.pem")),
    ]
    tls = TlsConfig(d / "ca.pem")
    return {
        "plain": ([], {}),
        "TLS": (tls_args, {"tls": tls}),
        "TLS + cluster key + tokens": (
            [*tls_args, "--cluster-key-file", str(d / "key"), "--tokens-file", str(d / "tokens")],
            {"tls": tls, "cluster_key": b"bench-cluster-key", "token": TOKEN},
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.seconds = 1, 1.0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgekv-bench-tls-") as tmp:
        table = modes(Path(tmp))
        runs: dict[tuple[str, bool], list[tuple[float, float, float, float]]] = {}
        for _ in range(args.repeat):
            for shared in (False, True):
                for name, (origin_args, client_kw) in table.items():
                    r = trio.run(
                        throughput,
                        args.clients,
                        args.seconds,
                        100,
                        shared,
                        True,
                        origin_args,
                        client_kw,
                    )
                    runs.setdefault((name, shared), []).append(r)
    load_after = os.getloadavg()[0]

    def row(name: str, shared: bool) -> str:
        rs = runs[(name, shared)]
        med = statistics.median(r[0] for r in rs)
        base = statistics.median(r[0] for r in runs[("plain", shared)])
        each = ", ".join(f"{r[0]:,.0f}" for r in rs)
        cpu_o = statistics.median(r[1] for r in rs)
        cpu_c = statistics.median(r[2] for r in rs)
        how = "one pipelined connection" if shared else "one connection each"
        return (
            f"| {name}, {args.clients} writers, {how} | {med:,.0f} (runs: {each}) | "
            f"{(med / base - 1) * 100:+.0f}% | origin {cpu_o:.0f} us, clients {cpu_c:.0f} us |"
        )

    lines = [
        "## Transport security",
        "",
        f"`python benchmarks/bench_security.py{' --quick' if args.quick else ''}` on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; median of {args.repeat} "
        f"interleaved runs of {args.seconds:g} s; values of 100 bytes; synchronous=FULL.  "
        f"Load average (1 min) {load_before:.2f} at the start, {load_after:.2f} at the end "
        "(a shared machine: compare the rows with each other, not with other sections).  Over "
        "TLS the origin reads each client connection with a task of its own (its one-epoll "
        "poller needs a plain socket), so part of the cost is that, not the cipher.",
        "",
        "| origin durable puts/s | result | vs plain | CPU per put |",
        "|---|---|---|---|",
        *(row(name, shared) for shared in (False, True) for name in table),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
