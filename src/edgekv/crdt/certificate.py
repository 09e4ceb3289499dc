"""Certificates: the origin's Ed25519 signature over the sorted (seq, atom hash) entries of a
seq range, and their wire form.  How they are made, kept and checked: proofs.py."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from hashlib import blake2b
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import RemoteProtocolError

__all__ = ["ENTRY", "MAX_CERT_ATOMS", "Certificate", "key_id", "public_key", "raw_key"]

MAX_CERT_ATOMS = 4096
ENTRY = 24  # seq (8, big-endian) + atom hash (16)
DOMAIN = b"edgekv-cert-v1\x00"
SEQ = struct.Struct(">q")
SEQ_ONLY = struct.Struct(">q16x")  # the seq of one entry
TWO = struct.Struct(">qq")


def raw_key(public: Ed25519PublicKey) -> bytes:
    """The key's 32 raw bytes (what libsodium verifies with, and what `key_id` hashes)."""
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> bytes:
    return blake2b(raw_key(public), digest_size=8).digest()


def public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


class Certificate:
    """The origin's signature over the sorted (seq, atom) entries of seqs lo..hi."""

    __slots__ = ("entries", "hi", "key_id", "lo", "order", "signature")

    def __init__(self, key_id: bytes, lo: int, hi: int, entries: bytes, signature: bytes) -> None:
        self.key_id = key_id
        self.lo = lo
        self.hi = hi
        self.entries = entries
        self.signature = signature
        self.order = 0  # the store's add counter: newer certificates are preferred (rule 4)

    def body(self) -> bytes:
        return DOMAIN + self.key_id + TWO.pack(self.lo, self.hi) + self.entries

    def __len__(self) -> int:
        return len(self.entries) // ENTRY

    def contains(self, seq: int, h: bytes) -> bool:
        rec = SEQ.pack(seq) + h
        e = self.entries
        i = (seq - self.lo) * ENTRY  # a dense certificate (one atom per seq) holds it right here
        if i >= 0 and e[i : i + ENTRY] == rec:
            return True
        j = bisect_entries(e, rec) * ENTRY  # entries are sorted: binary search
        return e[j : j + ENTRY] == rec

    def has_seq(self, seq: int) -> bool:
        """Whether some entry carries `seq` (what a sender checks before choosing it)."""
        key = SEQ.pack(seq)
        e = self.entries
        i = (seq - self.lo) * ENTRY
        if i >= 0 and e[i : i + 8] == key:
            return True
        j = bisect_entries(e, key) * ENTRY
        return e[j : j + 8] == key

    def seqs(self) -> Iterator[int]:
        for (seq,) in SEQ_ONLY.iter_unpack(self.entries):
            yield seq

    def to_wire(self) -> list[Any]:
        return [self.key_id, self.lo, self.hi, self.entries, self.signature]

    @classmethod
    def from_wire(cls, obj: object) -> Certificate:
        """Parse the wire form; raises RemoteProtocolError (nothing is verified here)."""
        if not isinstance(obj, list) or len(obj) != 5:
            raise RemoteProtocolError("a certificate is [key_id, lo, hi, entries, signature]")
        kid, lo, hi, entries, sig = obj
        if not (isinstance(kid, bytes) and len(kid) == 8):
            raise RemoteProtocolError("certificate key id must be 8 bytes")
        for v in (lo, hi):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 63:
                raise RemoteProtocolError("certificate seq out of range")
        if lo > hi:
            raise RemoteProtocolError("certificate lo > hi")
        if not isinstance(entries, bytes) or len(entries) % ENTRY:
            raise RemoteProtocolError("certificate entries must be 24-byte records")
        if len(entries) > ENTRY * MAX_CERT_ATOMS * 16:
            raise RemoteProtocolError("certificate too large")
        if not (isinstance(sig, bytes) and len(sig) == 64):
            raise RemoteProtocolError("certificate signature must be 64 bytes")
        return cls(kid, lo, hi, entries, sig)

    def __repr__(self) -> str:
        return f"Certificate(lo={self.lo}, hi={self.hi}, atoms={len(self)})"


def bisect_entries(entries: bytes, rec: bytes) -> int:
    """The index of the first 24-byte record of `entries` that is >= `rec` (a prefix works)."""
    lo, hi = 0, len(entries) // ENTRY
    while lo < hi:
        mid = (lo + hi) >> 1
        i = mid * ENTRY
        if entries[i : i + ENTRY] < rec:
            lo = mid + 1
        else:
            hi = mid
    return lo
