"""Origin-signed writes at an edge: deltas applied per second with and without verification,
and resident memory per key with the certificates kept.

    python benchmarks/bench_verify.py [--keys 1000000] [--runs 3] [--group 64]

Each measurement runs in a fresh subprocess and is repeated `--runs` times (median reported).
Keys are 16-byte strings, values 100 random bytes, one store, as in bench_replica.py.  The
deltas arrive as the origin makes them: in commit groups of `--group` writes, each group with
its certificate (one Ed25519 signature over the group's atom hashes, crdt/proofs.py).
- apply: `Replica.apply_batch` of each group (what a PUSH does), inserts of new keys, without
  verification and, in the same process, with `ProofStore.verify` of the group first (one
  signature check per group, one BLAKE2b atom hash and one lookup per delta).
- memory: RSS per key after loading `--keys` keys through the verified path, certificates
  included, against the same load without proofs.
- sign: the origin's cost, one `Signer.certify` per group (microseconds per write).
Prints a markdown section and writes it to benchmarks/results/verify.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.crdt import META, Register, Replica
from edgekv.crdt.proofs import Certificate, ProofStore, Signer, atoms_of

RESULTS = Path(__file__).parent / "results" / "verify.md"
T0 = 1_700_000_000_000
CHECKS = 2000


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


Group = tuple[list[tuple[str, str, Register]], list[Certificate], tuple[int, int]]


def make_groups(n: int, group: int, signer: Signer) -> list[Group]:
    """n register inserts at seqs 2..n+1, in signed groups."""
    out: list[Group] = []
    for start in range(0, n, group):
        out.extend(make_groups_at(start, min(n, start + group), signer))
    return out


def make_groups_at(start: int, stop: int, signer: Signer) -> list[Group]:
    """One signed group: the inserts of keys start..stop-1."""
    items = [
        ("bench", f"k{i:015d}", Register(i + 2, T0, random.randbytes(100)))
        for i in range(start, stop)
    ]
    atoms = [a for s, k, d in items for a in atoms_of(s, k, d)]
    return [(items, signer.certify(atoms, start + 2, stop + 1), (start + 2, stop + 1))]


def fresh(proofs: ProofStore | None, signer: Signer) -> Replica:
    r = Replica()
    meta = Register(1, T0, b"")
    if proofs is not None:
        r.use_proofs(proofs)
        proofs.add(signer.certify(atoms_of(META, "bench", meta)))
    r.apply(META, "bench", meta)
    return r


def child_speed(n: int, group: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    groups = make_groups(n, group, signer)
    t = time.process_time()  # the origin's part: atom hashes and one signature per group
    for items, _certs, cover in groups:
        signer.certify([a for s, k, d in items for a in atoms_of(s, k, d)], *cover)
    sign_us = (time.process_time() - t) / n * 1e6
    plain = fresh(None, signer)
    t = time.process_time()
    for items, _certs, cover in groups:
        plain.apply_batch(items, [cover])
    plain_s = time.process_time() - t
    proofs = ProofStore([key.public_key()])
    checked = fresh(proofs, signer)
    state = checked.state
    t = time.process_time()
    for items, certs, cover in groups:
        ok = proofs.verify(items, certs, state)
        checked.apply_batch(ok, [cover])
    verified_s = time.process_time() - t
    assert len(checked) == len(plain) == n
    # one signature check, as for a push of one write: OpenSSL through cryptography against
    # libsodium through PyNaCl (what ProofStore.check_signature uses), the same certificate
    ((_items, (cert, *_), _cover),) = make_groups_at(n, n + 1, signer)
    public, body = key.public_key(), cert.body()
    t = time.process_time()
    for _ in range(CHECKS):
        public.verify(cert.signature, body)
    openssl_us = (time.process_time() - t) / CHECKS * 1e6
    t = time.process_time()
    for _ in range(CHECKS):
        proofs.check_signature(cert)
    store_us = (time.process_time() - t) / CHECKS * 1e6
    return {
        "plain_per_s": n / plain_s,
        "verified_per_s": n / verified_s,
        "sign_us_per_write": sign_us,
        "check_openssl_us": openssl_us,
        "check_store_us": store_us,
    }


def child_memory(n: int, group: int, with_proofs: bool) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    proofs = ProofStore([key.public_key()]) if with_proofs else None
    replica = fresh(proofs, signer)
    before = rss_bytes()
    for start in range(0, n, group):  # made group by group: only what the replica keeps stays
        ((items, certs, cover),) = make_groups_at(start, min(n, start + group), signer)
        wire = [Certificate.from_wire(c.to_wire()) for c in certs]
        ok = proofs.verify(items, wire, replica.state) if proofs is not None else items
        replica.apply_batch(ok, [cover])
    return {
        "bytes_per_key": (rss_bytes() - before) / n,
        "certificates": len(proofs) if proofs is not None else 0,
    }


def run_child(kind: str, n: int, group: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--keys", str(n), "--group", str(group)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--speed-keys", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child == "speed":
        print(json.dumps(child_speed(args.keys, args.group)))
        return
    if args.child in ("memory", "memory-plain"):
        print(json.dumps(child_memory(args.keys, args.group, args.child == "memory")))
        return
    load = [os.getloadavg()[0]]
    speed = [run_child("speed", args.speed_keys, args.group) for _ in range(args.runs)]
    big = [run_child("speed", args.speed_keys, 1024) for _ in range(args.runs)]
    mem = [run_child("memory", args.keys, args.group) for _ in range(args.runs)]
    mem_plain = [run_child("memory-plain", args.keys, args.group) for _ in range(args.runs)]
    load.append(os.getloadavg()[0])

    def med(runs: list[dict[str, Any]], field: str) -> float:
        values: list[float] = [r[field] for r in runs]
        return statistics.median(values)

    def each(runs: list[dict[str, Any]], field: str) -> str:
        return ", ".join(f"{r[field]:,.0f}" for r in runs)

    g = args.group
    lines = [
        "## Origin-signed writes at an edge (`benchmarks/bench_verify.py`)",
        "",
        f"`python benchmarks/bench_verify.py --keys {args.keys} --runs {args.runs} --group {g}`"
        f" on {os.cpu_count()} cores, shared with other jobs (1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end); CPU time "
        "(`time.process_time`), median of the runs, each in a fresh process.  Register inserts"
        " of 100-byte values under 16-byte keys arrive in commit groups with their origin"
        " certificate; the verified path checks the group's Ed25519 signature once and each"
        " delta's BLAKE2b-128 atom hash against it (crdt/proofs.py), then applies the group.",
        "",
        "| measure | median | runs | target |",
        "|---|---|---|---|",
        f"| apply, groups of {g}, without verification | {med(speed, 'plain_per_s'):,.0f} "
        f"deltas/s | {each(speed, 'plain_per_s')} | |",
        f"| apply, groups of {g}, verified | {med(speed, 'verified_per_s'):,.0f} deltas/s | "
        f"{each(speed, 'verified_per_s')} | >= 100,000 |",
        f"| apply, certificates of 1,024, without verification | "
        f"{med(big, 'plain_per_s'):,.0f} deltas/s | {each(big, 'plain_per_s')} | |",
        f"| apply, certificates of 1,024, verified | {med(big, 'verified_per_s'):,.0f} "
        f"deltas/s | {each(big, 'verified_per_s')} | |",
        f"| one signature check, OpenSSL (cryptography's Ed25519PublicKey.verify) | "
        f"{med(speed, 'check_openssl_us'):.0f} us | {each(speed, 'check_openssl_us')} | |",
        f"| one signature check, libsodium (PyNaCl; ProofStore.check_signature) | "
        f"{med(speed, 'check_store_us'):.0f} us | {each(speed, 'check_store_us')} | |",
        f"| origin: atom hashes and one signature per group of {g}, per write | "
        f"{med(speed, 'sign_us_per_write'):.1f} us | | |",
        f"| resident memory per key, {args.keys:,} keys, certificates included | "
        f"{med(mem, 'bytes_per_key'):.0f} bytes | {each(mem, 'bytes_per_key')} | <= 450 |",
        f"| the same load without proofs | {med(mem_plain, 'bytes_per_key'):.0f} bytes | "
        f"{each(mem_plain, 'bytes_per_key')} | |",
        f"| certificates kept for {args.keys:,} keys | {med(mem, 'certificates'):,.0f} | | |",
        "",
        "The origin signs everything committed since its last signature when a push leaves"
        " (crdt/proofs.py rule 2), so a certificate covers one push batch: about 64 writes at"
        " 20k writes/s on loopback, where the adaptive push window is a few ms; on a WAN link"
        " the window grows towards 150 ms and a certificate towards thousands of writes (the"
        " 1,024 rows; certificates stop at 4,096 atoms).  A quiet origin signs small"
        " certificates, but then few writes arrive per second, so the signature checks (about 60 us"
        " each with libsodium, more on a loaded machine) cost little in total.  A replica keeps, per"
        " live seq, the newest certificate holding it (24 bytes per entry plus about 100 per"
        " certificate); the origin signs the live entries of sparse certificates again into"
        " compact ones, so under rewrites the store stays within a few entries per live atom"
        " (crdt/proofs.py rule 4).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
