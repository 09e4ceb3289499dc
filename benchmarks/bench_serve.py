"""Serving a whole signed snapshot: the responder's CPU per key, by how the store was written.

    python benchmarks/bench_serve.py [--keys 1000000] [--runs 3]

Writes benchmarks/results/serve.md.  In this process: a replica of `--keys` registers (16-byte
keys, 100-byte values) whose proofs are certificates of 64 consecutive seqs each, as the origin
signs one push batch; then `SnapshotServer` serves it whole to one session (credit 4 per
request, as a receiver asks) and every chunk is encoded as a frame.  Four stores:

- not signed: keys in key order, no proofs (how an edge that keeps none, with no origin
  public key configured, serves a snapshot: its chunks are cut column-wise,
  gossip/snapshot_server.py `_cut`; an origin always signs);
- key order: keys written in key order, so neighbours in key order share a certificate (how
  bench_bootstrap's origin log is written);
- random order: the same keys written in random order, so in key order each register is proved
  by another certificate (a store written by real clients over time);
- what bench_bootstrap's origin serves: keys in key order certified 4,096 seqs at a time (the
  origin certifies its live states again at start), then 2% of them written again in random
  order (the put loops), each proved by another certificate in the middle of a long run.

Reported: CPU seconds (`time.process_time`) to serve every chunk, and of that the frame
encoding; medians of `--runs`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.crdt import Register, Replica, bulk_load
from edgekv.crdt.proofs import ProofStore, Signer, atoms_of
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.snapshot_server import SnapshotServer
from edgekv.gossip.snapshot_wire import snap_req
from edgekv.gossip.wire import encode_frame

RESULTS = Path(__file__).resolve().parent / "results" / "serve.md"
BATCH = 64  # seqs per certificate


def signed_store(keys: int, shuffled: bool, batch: int = BATCH, rewritten: float = 0.0) -> Replica:
    """`keys` registers written in key order (or `shuffled`), certified `batch` seqs at a
    time (`batch` 0: not signed, no proofs); then a `rewritten` share of them written again in
    random order, certified BATCH seqs at a time (push batches)."""
    order = list(range(keys))
    if shuffled:
        random.Random(1).shuffle(order)
    items = [
        ("s", f"key{i:012d}", Register(n, 0, b"v" * 100, None)) for n, i in enumerate(order, 1)
    ]
    replica = Replica()
    bulk_load(replica, items, [(1, keys)])
    if not batch:  # unsigned: the responder sends no proofs (chunks cut column-wise)
        return replica
    proofs = replica.use_proofs(ProofStore([KEY.public_key()]))
    signer = Signer(KEY)
    for lo in range(0, keys, batch):
        proofs.add(
            signer.certify([a for s, k, st in items[lo : lo + batch] for a in atoms_of(s, k, st)])
        )
    again = random.Random(2).sample(range(keys), int(keys * rewritten))
    seq = keys
    for lo in range(0, len(again), BATCH):
        atoms = []
        for i in again[lo : lo + BATCH]:
            seq += 1
            key = f"key{i:012d}"
            replica.apply("s", key, Register(seq, 0, b"w" * 100, None))
            state = replica.state("s", key)
            assert state is not None
            atoms += atoms_of("s", key, state)
        proofs.add(signer.certify(atoms))
    return replica


def serve(replica: Replica) -> tuple[float, float, int]:
    """(CPU seconds serving, of which encoding, keys served)."""
    server = SnapshotServer(replica, GossipConfig(), Counter())
    t0 = time.process_time()
    encoding = 0.0
    served = 0
    req = snap_req(1, None, 4, True)
    while True:
        for send in server.on_req("bench", req, 0.0):
            t1 = time.process_time()
            encode_frame(send.message)
            encoding += time.process_time() - t1
            served += len(send.message["keys"])
        if not server.sessions:
            return time.process_time() - t0, encoding, served
        req = snap_req(1, None, 4, False)


KEY = Ed25519PrivateKey.generate()
CASES = [  # (name, shuffled, seqs per certificate, share of the keys rewritten since)
    ("key order, not signed (no proofs: an edge with no origin key serving)", False, 0, 0.0),
    ("key order", False, BATCH, 0.0),
    ("random order", True, BATCH, 0.0),
    (
        "key order, certified again at start (4,096 seqs a certificate), 2% rewritten",
        False,
        4096,
        0.02,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, shuffled, batch, rewritten in CASES:
        replica = signed_store(args.keys, shuffled, batch, rewritten)
        runs = [serve(replica) for _ in range(args.runs)]
        assert all(n == args.keys for _, _, n in runs), "a key was not served"
        total = statistics.median(r[0] for r in runs)
        enc = statistics.median(r[1] for r in runs)
        each = ", ".join(f"{r[0]:.2f}" for r in runs)
        rows.append(
            f"| {name} | {total:.2f} s ({each}) | {total / args.keys * 1e6:.2f} us | {enc:.2f} s |"
        )
        print(rows[-1], flush=True)
        del replica
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join(
        [
            "## Serving a whole snapshot (`benchmarks/bench_serve.py`)",
            "",
            f"`python benchmarks/bench_serve.py --keys {args.keys} --runs {args.runs}`: one"
            f" session served {args.keys:,} registers (16 B keys, 100 B values), not signed or"
            f" signed with certificates of {BATCH} consecutive seqs (or as the case says), in"
            f" process; CPU time, median of the runs; {when},"
            f" load average {load}.",
            "",
            "| store written in | CPU to serve it all (runs) | per key | of which frame encoding |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
