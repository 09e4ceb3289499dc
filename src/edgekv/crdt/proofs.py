"""Origin-signed writes: atoms, certificates, and the proof store every replica keeps.

Theory of operation
1. An *atom* is the smallest piece of state a replica can hold on its own, hashed with
   BLAKE2b-128 over a canonical, length-prefixed encoding (`atoms_of`):
     register   (store, key, flags, seq, written_at, expiry, value)  - a value, tombstone, or
                (in the reserved store "") a store create / drop;
     zset head  (store, key, reset, seq, written_at)                 - one per zadd / zrem;
     zset member (store, key, reset, member, seq, score | removed)   - one per touched member;
     bloom      (store, key, reset, m, k, seq, written_at, bits)     - the whole filter *after*
                the bf_add at seq: Bloom filters are joins of bit deltas that cannot be split
                back, so the origin certifies each state it reaches.
   A replica verifies a state by recomputing its atoms and finding each (seq, hash) pair in a
   certificate it trusts.  A Bloom *delta* verifies when applying it to the state held here
   yields a certified filter; if this replica lacks the predecessor it is skipped (not an
   offence): anti-entropy brings the whole filter, which verifies directly.
2. A *certificate* is one Ed25519 signature by the origin over (key id, lo, hi, the sorted
   (seq, atom hash) pairs of seqs lo..hi).  The origin hashes each commit group's atoms as it
   commits it (~1 us per write) and `defer`s them; it signs everything deferred in one
   certificate when proofs are next needed (`seal`): when a push leaves (the origin batches
   pushes for a window under load), a forwarded write is answered, a catch-up or
   anti-entropy answer is built, or `MAX_CERT_ATOMS` atoms wait.  Acks to clients never wait
   for a signature.  So one signature (33 us) covers a whole push batch at the origin, and a
   receiver pays one verification (110 us) per batch, cached, plus one hash (~0.5 us) and a
   set lookup per atom.  One signature per delta would cap verification at ~9k deltas/s and
   cost the origin ~40% of its throughput; a Merkle root per batch would make every proof
   carry a path.  An XOR digest (the anti-entropy tree) is not collision-resistant, so
   nothing signed is one.  After a restart the origin certifies its live states again
   (`certify`), so its certificates always partition the seqs it has signed since; edges may
   also hold older ones: certificates may overlap, a seq is looked up among every one that
   covers it.
3. Proofs travel with states: a message carrying states carries the certificates covering
   them (`ProofStore.material_for`), taken from the sender's store, unchanged, whoever sent
   them.  A receiver checks them with `ProofStore.verify` before anything is applied: a state
   whose atoms are not all certified raises `ForgedState` (the message is rejected whole, the
   peer is counted and cut off by the driver).  Accepted certificates join the store.
4. The store keeps a certificate while some live state needs it: `sweep(seqs)` (run when the
   store has doubled since the last sweep) drops those covering no live seq that were already
   present at the previous sweep (so a delta still queued for relay keeps its proof).  Memory:
   24 bytes per atom plus ~300 bytes per certificate, a few bytes per key when keys are
   written once; a certificate stays whole while any of its atoms is live (worst case one live
   key holding a `MAX_CERT_ATOMS` certificate).
5. Keys rotate without downtime: a verifier accepts any of a small set of public keys (by key
   id, the first 8 bytes of BLAKE2b of the raw key); the origin signs with the newest.

Public API for other paths (snapshots): `ProofStore.material_for(items) -> list[Certificate]`
is the proof material that must travel with those states; `ProofStore.verify(items, certs,
current)` verifies states with it (and keeps the certificates); `Certificate.to_wire()` /
`Certificate.from_wire(obj)` are the encoded form.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from hashlib import blake2b
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import RemoteProtocolError
from .bloom import Bloom, BloomDelta
from .register import Register
from .state import Delta, State
from .zset import ZSet

__all__ = [
    "MAX_CERT_ATOMS",
    "Atom",
    "Certificate",
    "ForgedState",
    "ProofStore",
    "Signer",
    "atoms_of",
    "bloom_atom",
    "key_id",
]

MAX_CERT_ATOMS = 4096
ENTRY = 24  # seq (8, big-endian) + atom hash (16)
_DOMAIN = b"edgekv-cert-v1\x00"
_SEQ = struct.Struct(">q")
_TWO = struct.Struct(">qq")
_THREE = struct.Struct(">qqq")
_MEMBER = struct.Struct(">qq?d")
_BLOOM = struct.Struct(">qqqqq")

Atom = tuple[int, bytes]  # (seq, 16-byte hash)
Item = tuple[str, str, Delta]


class ForgedState(RemoteProtocolError):
    """A peer sent a state (or certificate) the origin never signed."""


def key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return blake2b(raw, digest_size=8).digest()


_LEN1 = [bytes([n]) for n in range(256)]
_unpack_seq = _SEQ.unpack_from


def _name(store: str, key: str) -> bytes:
    s, k = store.encode(), key.encode()
    return _LEN1[len(s)] + s + len(k).to_bytes(2, "big") + k


def _h(tag: bytes, name: bytes, body: bytes) -> bytes:
    return blake2b(tag + name + body, digest_size=16).digest()


def bloom_atom(store: str, key: str, bloom: Bloom) -> Atom:
    """The atom of a whole Bloom filter (its state after the bf_add at `bloom.seq`)."""
    head = _BLOOM.pack(bloom.reset, bloom.m, bloom.k, bloom.seq, bloom.written_at)
    return bloom.seq, _h(b"B", _name(store, key), head + bytes(bloom.bits))


def register_atom(store: str, key: str, reg: Register) -> Atom:
    """The atom of a register (the hot path: one BLAKE2b over name and register bytes)."""
    s, k = store.encode(), key.encode()
    body = b"R" + _LEN1[len(s)] + s + len(k).to_bytes(2, "big") + k + reg
    return _unpack_seq(reg, 1)[0], blake2b(body, digest_size=16).digest()


def atoms_of(store: str, key: str, delta: Delta) -> list[Atom]:
    """The atoms a register, zset (state or delta) or whole Bloom filter is made of.

    A `BloomDelta` has no atoms of its own (see rule 1): it raises TypeError."""
    if delta.__class__ is Register:
        return [register_atom(store, key, delta)]
    name = _name(store, key)
    if isinstance(delta, ZSet):
        reset = delta.reset
        out = [(delta.seq, _h(b"Z", name, _THREE.pack(reset, delta.seq, delta.written_at)))]
        for member, (mseq, score) in delta.members.items():
            body = _MEMBER.pack(reset, mseq, score is None, score or 0.0) + member
            out.append((mseq, _h(b"M", name, body)))
        return out
    if isinstance(delta, Bloom):
        return [bloom_atom(store, key, delta)]
    raise TypeError(f"no atoms for {delta!r}")


def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


class Certificate:
    """The origin's signature over the sorted (seq, atom) entries of seqs lo..hi."""

    __slots__ = ("_index", "born", "entries", "hi", "key_id", "lo", "signature")

    def __init__(self, key_id: bytes, lo: int, hi: int, entries: bytes, signature: bytes) -> None:
        self.key_id = key_id
        self.lo = lo
        self.hi = hi
        self.entries = entries
        self.signature = signature
        self._index: frozenset[bytes] | None = None
        self.born = 0

    def body(self) -> bytes:
        return _DOMAIN + self.key_id + _TWO.pack(self.lo, self.hi) + self.entries

    def __len__(self) -> int:
        return len(self.entries) // ENTRY

    def contains(self, seq: int, h: bytes) -> bool:
        rec = _SEQ.pack(seq) + h
        i = (seq - self.lo) * ENTRY  # a dense certificate (one atom per seq) holds it right here
        if self.entries[i : i + ENTRY] == rec:
            return True
        index = self._index
        if index is None:
            e = self.entries
            index = self._index = frozenset(e[j : j + ENTRY] for j in range(0, len(e), ENTRY))
        return rec in index

    def drop_index(self) -> None:
        self._index = None

    def seqs(self) -> Iterator[int]:
        e = self.entries
        for i in range(0, len(e), ENTRY):
            yield _SEQ.unpack_from(e, i)[0]

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


class Signer:
    """The origin's signing side: turns committed atoms into certificates."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def certify(self, atoms: Iterable[Atom], lo: int = 0, hi: int = 0) -> list[Certificate]:
        """Certificates over `atoms`, each at most MAX_CERT_ATOMS atoms (a seq is never split).

        `lo..hi` is the seq range claimed (widened to the atoms' own range)."""
        recs = sorted(_SEQ.pack(s) + h for s, h in atoms)
        out: list[Certificate] = []
        start = 0
        while start < len(recs):
            end = min(start + MAX_CERT_ATOMS, len(recs))
            while end < len(recs) and recs[end][:8] == recs[end - 1][:8]:
                end += 1
            first = _SEQ.unpack_from(recs[start])[0]
            last = _SEQ.unpack_from(recs[end - 1])[0]
            c_lo = min(first, lo) if lo and start == 0 else first
            c_hi = max(last, hi) if hi and end == len(recs) else last
            entries = b"".join(recs[start:end])
            cert = Certificate(self.key_id, c_lo, c_hi, entries, b"")
            cert.signature = self.private.sign(cert.body())
            out.append(cert)
            start = end
        return out


class ProofStore:
    """The certificates a replica trusts, indexed by seq range (see the module docstring).

    `public_keys`: the origin keys accepted (raw 32-byte Ed25519 keys or key objects)."""

    def __init__(self, public_keys: Sequence[Ed25519PublicKey | bytes] = ()) -> None:
        keys = [_public_key(k) if isinstance(k, bytes) else k for k in public_keys]
        self.keys: dict[bytes, Ed25519PublicKey] = {key_id(k): k for k in keys}
        self._los: list[int] = []
        self._certs: list[Certificate] = []
        self._by_sig: dict[bytes, Certificate] = {}
        self._span = 0
        self._hot: list[Certificate] = []  # certificates holding a lookup index (bounded)
        self.generation = 0
        self._swept_size = 0
        self.live_seqs: Callable[[], Iterable[int]] | None = None  # set by the owner (Replica)
        self.signer: Signer | None = None  # at the origin: seals deferred atoms (rule 2)
        self._pending: list[Atom] = []
        self._pending_range = (0, 0)
        self.added: list[Certificate] = []  # journal for persistence (drained by it)
        self.dropped: list[Certificate] = []

    def __len__(self) -> int:
        return len(self._certs)

    def __iter__(self) -> Iterator[Certificate]:
        return iter(list(self._certs))

    @property
    def atoms(self) -> int:
        return sum(len(c) for c in self._certs)

    # -- adding --------------------------------------------------------------------------------

    def defer(self, atoms: Iterable[Atom], lo: int, hi: int) -> None:
        """At the origin: atoms of seqs lo..hi, committed, to be signed when proofs are next
        needed (`seal`), so one signature covers every group since (rule 2)."""
        self._pending.extend(atoms)
        plo, phi = self._pending_range
        self._pending_range = (lo if not plo else min(plo, lo), max(phi, hi))
        if len(self._pending) >= MAX_CERT_ATOMS:
            self.seal()

    def seal(self) -> None:
        """Sign the deferred atoms now (a no-op when there are none)."""
        if not self._pending or self.signer is None:
            return
        lo, hi = self._pending_range
        certs = self.signer.certify(self._pending, lo, hi)
        self._pending, self._pending_range = [], (0, 0)
        self.add(certs)

    def add(self, certs: Iterable[Certificate]) -> None:
        """Keep already-trusted certificates (the origin's own, or verified ones)."""
        for c in certs:
            if c.signature in self._by_sig:
                continue
            c.born = self.generation
            self._by_sig[c.signature] = c
            i = bisect.bisect_right(self._los, c.lo)
            self._los.insert(i, c.lo)
            self._certs.insert(i, c)
            self._span = max(self._span, c.hi - c.lo)
            self.added.append(c)
        if len(self._certs) > 2 * self._swept_size + 256 and self.live_seqs is not None:
            self.sweep(self.live_seqs())

    def check_signature(self, cert: Certificate) -> Certificate:
        """The stored twin of `cert`, or `cert` after its signature verified; ForgedState if not."""
        known = self._by_sig.get(cert.signature)
        if known is not None:
            if known.body() != cert.body():
                raise ForgedState("a certificate reuses another one's signature")
            return known
        public = self.keys.get(cert.key_id)
        if public is None:
            raise ForgedState("certificate signed by an unknown key")
        try:
            public.verify(cert.signature, cert.body())
        except InvalidSignature:
            raise ForgedState("bad certificate signature") from None
        return cert

    # -- lookup --------------------------------------------------------------------------------

    def _covering(self, seq: int, extra: Sequence[Certificate] = ()) -> Iterator[Certificate]:
        for c in extra:
            if c.lo <= seq <= c.hi:
                yield c
        los, certs = self._los, self._certs
        i = bisect.bisect_right(los, seq) - 1
        floor = seq - self._span
        while i >= 0 and los[i] >= floor:
            c = certs[i]
            if c.hi >= seq:
                yield c
            i -= 1

    def _hot_add(self, c: Certificate) -> None:
        hot = self._hot
        if c in hot:
            return
        hot.append(c)
        if len(hot) > 64:
            hot.pop(0).drop_index()

    def find(self, seq: int, h: bytes, extra: Sequence[Certificate] = ()) -> Certificate | None:
        for c in self._covering(seq, extra):
            if c.contains(seq, h):
                self._hot_add(c)
                return c
        return None

    def proves(self, atoms: Iterable[Atom], extra: Sequence[Certificate] = ()) -> bool:
        return all(self.find(s, h, extra) is not None for s, h in atoms)

    def material_for(self, items: Iterable[Item]) -> list[Certificate]:
        """The certificates that prove `items` (what must travel with them).  Items this store
        cannot prove are simply not covered (the receiver then rejects them)."""
        out: dict[bytes, Certificate] = {}
        for _store, _key, d in items:
            if self.add_material(out, d) < 0:
                break
        return list(out.values())

    def add_material(self, out: dict[bytes, Certificate], d: Delta) -> int:
        """Add the certificates proving `d` to `out`; returns the bytes they add (for chunking),
        or -1 when this store holds no certificate for one of its seqs: the caller must not
        send `d` (an honest peer would count it as forged)."""
        if self._pending:
            self.seal()
        added = 0
        for seq in _seqs(d):
            for c in self._covering(seq):
                if c.signature not in out:
                    out[c.signature] = c
                    added += len(c.entries) + 100
                break
            else:
                return -1
        return added

    # -- verifying -----------------------------------------------------------------------------

    def verify(
        self,
        items: Sequence[Item],
        certs: Sequence[Certificate],
        current: Callable[[str, str], State | None],
    ) -> list[Item]:
        """The items of a received message that are proven, after checking `certs`.

        Raises ForgedState when a certificate is bad or an item is not certified; Bloom deltas
        that do not land on a certified filter here are left out (rule 1).  The certificates
        that prove something join the store."""
        checked = [self.check_signature(c) for c in certs]
        used: dict[bytes, Certificate] = {}
        out: list[Item] = []
        last: Certificate | None = None  # consecutive items mostly share a certificate
        for item in items:
            store, key, d = item
            if d.__class__ is Register:  # the hot path
                seq, h = register_atom(store, key, d)
                if last is None or not (last.lo <= seq <= last.hi and last.contains(seq, h)):
                    last = self.find(seq, h, checked)
                    if last is None:
                        raise ForgedState(f"{store}/{key} at seq {seq} is not signed by the origin")
                    used[last.signature] = last
                out.append(item)
                continue
            if isinstance(d, BloomDelta):
                atom = _bloom_delta_atom(store, key, d, current(store, key))
                if atom is None or self.find(*atom, checked) is None:
                    continue
                c = self.find(*atom, checked)
                assert c is not None
                used[c.signature] = c
                out.append(item)
                continue
            if isinstance(d, ZSet) and not _zset_shape_ok(d):
                raise ForgedState(f"sorted set {store}/{key} has members outside its reset")
            for seq, h in atoms_of(store, key, d):
                c = self.find(seq, h, checked)
                if c is None:
                    raise ForgedState(f"{store}/{key} at seq {seq} is not signed by the origin")
                used[c.signature] = c
            out.append(item)
        self.add(c for c in checked if c.signature in used)
        return out

    # -- collection ----------------------------------------------------------------------------

    def sweep(self, seqs: Iterable[int]) -> int:
        """Drop certificates covering none of `seqs` (the live states' seqs) that were already
        here at the previous sweep.  Returns how many were dropped."""
        live: set[int] = set()
        los, certs = self._los, self._certs
        for seq in seqs:
            i = bisect.bisect_right(los, seq) - 1
            floor = seq - self._span
            while i >= 0 and los[i] >= floor:
                if certs[i].hi >= seq:
                    live.add(i)
                i -= 1
        gen = self.generation
        keep_los, keep = [], []
        dropped = 0
        for i, c in enumerate(certs):
            if i in live or c.born >= gen:
                keep_los.append(c.lo)
                keep.append(c)
            else:
                del self._by_sig[c.signature]
                self.dropped.append(c)
                dropped += 1
        self._los, self._certs = keep_los, keep
        self._span = max((c.hi - c.lo for c in keep), default=0)
        self._hot = [c for c in self._hot if c.signature in self._by_sig]
        self.generation += 1
        self._swept_size = len(keep)
        return dropped

    def drain_journal(self) -> tuple[list[Certificate], list[Certificate]]:
        added, dropped = self.added, self.dropped
        self.added, self.dropped = [], []
        gone = {c.signature for c in dropped}
        return [c for c in added if c.signature not in gone], dropped


def _seqs(d: Delta) -> list[int]:
    if isinstance(d, ZSet):
        return [d.seq, *{s for s, _ in d.members.values()}]
    return [d.seq]


def state_seqs(d: State) -> Iterator[int]:
    """Every seq a state's atoms carry (what its proof must cover)."""
    yield d.seq
    if isinstance(d, ZSet):
        for s, _ in d.members.values():
            yield s


def _zset_shape_ok(z: ZSet) -> bool:
    return all(z.reset <= s <= z.seq for s, _ in z.members.values()) and z.reset <= z.seq


def _bloom_delta_atom(
    store: str, key: str, d: BloomDelta, cur: State | None
) -> tuple[int, bytes] | None:
    """The atom of the filter `d` leads to on top of `cur`, or None if it cannot land here."""
    if isinstance(cur, Bloom) and cur.reset == d.reset:
        if cur.seq >= d.seq or cur.m != d.m or cur.k != d.k:
            return None
        nxt = cur.copy()
        nxt.merge_same_reset(d)
    elif cur is None or cur.reset < d.reset:
        nxt = d.to_state()
    else:
        return None
    return bloom_atom(store, key, nxt)
