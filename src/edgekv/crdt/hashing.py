"""Stable hashes: key placement in the Merkle tree, 128-bit entry hashes, Bloom positions.

Python's own `hash()` is salted per process, so every hash that crosses the wire or the disk is
computed from the bytes.  Entry hashes XOR together (a key's hash is the XOR of its entries'
hashes), so they must be strong: BLAKE2b.  Placement only has to be stable and uniform, not
collision resistant, so it is CRC-32 with a multiplicative finaliser: 8x cheaper than BLAKE2b,
and the apply path computes one per write.
"""

from __future__ import annotations

from hashlib import blake2b
from zlib import crc32


def key_hash64(key: str) -> int:
    """The 64-bit hash that places a key in a Merkle leaf."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


def key_placement(key: str) -> int:
    """A stable, uniform 32-bit hash of a key that places it in a Merkle leaf."""
    return (crc32(key.encode()) * 0x9E3779B1) & 0xFFFFFFFF


def entry_hash(tag: bytes, key: str, seq: int, extra: bytes = b"") -> int:
    """128-bit hash of one digest entry: (tag, key, seq, extra).  Key is length-prefixed."""
    kb = key.encode()
    h = blake2b(tag, digest_size=16)
    h.update(len(kb).to_bytes(4, "big"))
    h.update(kb)
    h.update(seq.to_bytes(8, "big"))
    h.update(extra)
    return int.from_bytes(h.digest(), "big")


def bloom_positions(item: bytes, m: int, k: int) -> list[int]:
    """The k bit positions of `item` in an m-bit filter (Kirsch-Mitzenmacher double hashing)."""
    d = blake2b(item, digest_size=16).digest()
    h1 = int.from_bytes(d[:8], "big")
    h2 = int.from_bytes(d[8:], "big") | 1
    return [(h1 + i * h2) % m for i in range(k)]


def root_hash(parts: list[tuple[str, int]]) -> int:
    """Fold (name, digest) pairs into one 128-bit value; order-independent (XOR of hashes)."""
    acc = 0
    for name, digest in parts:
        if digest:
            acc ^= entry_hash(b"root", name, 0, digest.to_bytes(16, "big"))
    return acc
