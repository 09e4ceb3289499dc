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
   pushes for a window under load, and flushes every peer's queue at one moment), a catch-up
   or anti-entropy answer is built, or `MAX_CERT_ATOMS` atoms wait.  The answer to a
   forwarded write gets a one-off certificate over its deferred group (`answer_material`),
   neither kept nor sealing them: sealing there gave every forwarded write its own
   certificate, which every node then verified (flood-1000: ~100 per node for 100 writes).
   Acks to clients never wait for a signature.  So one signature (33 us) covers a whole push
   batch at the origin, and a receiver pays one verification (55 us, libsodium) per batch, cached,
   plus one hash (~0.5 us) and a set lookup per atom.  One signature per delta would cap verification at ~9k deltas/s and
   cost the origin ~40% of its throughput; a Merkle root per batch would make every proof
   carry a path.  An XOR digest (the anti-entropy tree) is not collision-resistant, so
   nothing signed is one.  After a restart the origin certifies its live states again
   (`certify`), so its certificates always partition the seqs it has signed since; edges may
   also hold older ones: certificates may overlap, a seq is looked up among every one that
   covers it.
3. Proofs travel with states: a message carrying states carries the certificates covering
   them (`ProofStore.material_for`), taken from the sender's store, unchanged, whoever sent
   them; a certificate the message carries already is preferred to another that also holds
   the seq (an edge holding its own write's one-off certificate sends the batch one only).  A receiver checks them with `ProofStore.verify` before anything is applied: a state
   whose atoms are not all certified raises `ForgedState` (the message is rejected whole, the
   peer is counted and cut off by the driver).  Accepted certificates join the store.
4. The store is bounded by live data.  `sweep(seqs)` (run whenever the certificates or their
   entries have doubled since the last sweep, so its O(live + held) cost is amortised) keeps,
   for each live seq, the newest certificate holding it, plus those added since the previous
   sweep (a delta still queued for relay keeps its proof); the rest are dropped.  Under a
   rewrite workload most entries of an old certificate die while a few stay live, and a
   certificate cannot be cut (the signature covers all its entries), so the origin compacts:
   at its sweep, the live entries of each run of adjacent *sparse* certificates (at most half
   live) are signed again, unchanged, into compact certificates (no hashing: the entries are
   copied; one signature per 4,096 live atoms) that replace them.  Compact certificates are
   *fresh*: the first material of each of the next `ANNOUNCE_SENDS` messages a node sends
   (pushes, catch-up, anti-entropy, snapshot chunks) carries one, and a receiver keeps a
   verified certificate that proves nothing in its message and passes it on the same way; its
   next sweep prefers it (newer) and drops the sparse ones.  So the origin holds at most
   2 entries per live atom after a sweep (4 between sweeps, plus 2 x MAX_CERT_ATOMS) at
   24 bytes each plus ~100 bytes per certificate, and an edge as much once the compact
   certificates reached it (a peer that missed one keeps sparse ones until their atoms die or
   the next compaction reaches it).  Chosen over per-atom proofs (a Merkle path per atom:
   ~200 bytes per key and a hash per tree level on every receive) because it keeps the
   receive path at one hash and one lookup per atom and 24 bytes per live atom, and costs
   ~24 bytes per live atom per compaction in bandwidth.  Lookups go through certificates
   sorted by lo with the running maximum of hi, so a wide compact certificate costs nothing
   to the lookups of seqs above it.
5. The journal (`added`, `dropped`: what persistence must write and delete) is drained by
   persistence after each save.  Nobody drains the origin's (its certificates are rebuilt at
   start, sequencer rule 6) or that of an edge without persistence, so those stores are made
   with `journal=False` and keep none: an undrained journal holds every certificate ever
   made (the origin's RSS grew ~76 MiB/h under 50 writes/s that way).
6. Keys rotate without downtime: a verifier accepts any of a small set of public keys (by key
   id, the first 8 bytes of BLAKE2b of the raw key); the origin signs with the newest.

Public API for other paths (snapshots): `ProofStore.material_for(items) -> list[Certificate]`
is the proof material that must travel with those states; `ProofStore.verify(items, certs,
current)` verifies states with it (and keeps the certificates); `Certificate.to_wire()` /
`Certificate.from_wire(obj)` are the encoded form.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from hashlib import blake2b
from operator import itemgetter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from ..errors import RemoteProtocolError
from .atoms import (
    LEN1,
    Atom,
    atoms_of,
    bloom_atom,
    bloom_delta_atom,
    delta_seqs,
    register_atom,
    state_seqs,
    states_seqs,
    unpack_seq,
    zset_shape_ok,
)
from .bloom import BloomDelta
from .certificate import (
    ENTRY,
    MAX_CERT_ATOMS,
    SEQ,
    SEQ_ONLY,
    Certificate,
    key_id,
    public_key,
    raw_key,
)
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
    "register_atom",
    "state_seqs",
    "states_seqs",
]

CERT_OVERHEAD = 100  # key id, range, signature and framing of one certificate (bytes)
ANNOUNCE_SENDS = 6  # messages that pass a fresh certificate on (rule 4)
MAX_FRESH = 64  # fresh certificates waiting to be passed on
PASS_ON_BYTES = 64 << 10  # fresh certificates in one message (at least one)
_FIRST = itemgetter(0)

Item = tuple[str, str, Delta]


class ForgedState(RemoteProtocolError):
    """A peer sent a state (or certificate) the origin never signed."""


class Signer:
    """The origin's signing side: turns committed atoms into certificates."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def certify(self, atoms: Iterable[Atom], lo: int = 0, hi: int = 0) -> list[Certificate]:
        """Certificates over `atoms`, each at most MAX_CERT_ATOMS atoms (a seq is never split).

        `lo..hi` is the seq range claimed (widened to the atoms' own range)."""
        return self.certify_records(sorted(SEQ.pack(s) + h for s, h in atoms), lo, hi)

    def certify_records(self, recs: Sequence[bytes], lo: int = 0, hi: int = 0) -> list[Certificate]:
        """`certify` of sorted 24-byte (seq, atom) records."""
        out: list[Certificate] = []
        start = 0
        while start < len(recs):
            end = min(start + MAX_CERT_ATOMS, len(recs))
            while end < len(recs) and recs[end][:8] == recs[end - 1][:8]:
                end += 1
            first = SEQ.unpack_from(recs[start])[0]
            last = SEQ.unpack_from(recs[end - 1])[0]
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

    `public_keys`: the origin keys accepted (raw 32-byte Ed25519 keys or key objects);
    `journal`: record added and dropped certificates for persistence (rule 5); False
    where nothing drains them."""

    def __init__(
        self, public_keys: Sequence[Ed25519PublicKey | bytes] = (), *, journal: bool = True
    ) -> None:
        keys = [public_key(k) if isinstance(k, bytes) else k for k in public_keys]
        self.keys: dict[bytes, Ed25519PublicKey] = {key_id(k): k for k in keys}
        # verified by libsodium (PyNaCl): 54 us against OpenSSL's 104 us through cryptography
        # here, and an edge verifies one signature per push (bench_verify.py, "verify")
        self._raw = {i: raw_key(k) for i, k in self.keys.items()}
        self._los: list[int] = []  # certificates sorted by lo ...
        self._certs: list[Certificate] = []
        self._reach: list[int] = []  # ... and the highest hi among each one and those before it
        self._by_sig: dict[bytes, Certificate] = {}
        self._order = 0
        self.held = 0  # entries (atoms) in the certificates kept
        self._swept = (0, 0)  # certificates and entries kept after the last sweep
        self._sweeping = False
        self._due = False  # fresh certificates arrived since the last sweep
        self._fresh: dict[bytes, int] = {}  # certificates to pass on (rule 4): sends left
        self.live_seqs: Callable[[], Iterable[int]] | None = None  # set by the owner (Replica)
        self.signer: Signer | None = None  # at the origin: seals deferred atoms (rule 2)
        self._pending: list[Atom] = []
        self._pending_range = (0, 0)
        self._groups: list[tuple[int, int, int]] = []  # deferred groups: (lo, hi, end index)
        self.journal = journal  # keep `added` and `dropped` (rule 5): persistence drains them
        self.added: list[Certificate] = []
        self.dropped: list[Certificate] = []

    def __len__(self) -> int:
        return len(self._certs)

    def __iter__(self) -> Iterator[Certificate]:
        return iter(list(self._certs))

    @property
    def atoms(self) -> int:
        return self.held

    @property
    def nbytes(self) -> int:
        """Bytes of certificate entries and signatures kept (what bounds its memory)."""
        return self.held * ENTRY + CERT_OVERHEAD * len(self._certs)

    # -- adding --------------------------------------------------------------------------------

    def defer(self, atoms: Iterable[Atom], lo: int, hi: int) -> None:
        """At the origin: atoms of seqs lo..hi, committed, to be signed when proofs are next
        needed (`seal`), so one signature covers every group since (rule 2)."""
        self._pending.extend(atoms)
        self._groups.append((lo, hi, len(self._pending)))
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
        self._pending, self._pending_range, self._groups = [], (0, 0), []
        self.add(certs)

    def add(self, certs: Iterable[Certificate], fresh: bool = False) -> None:
        """Keep already-trusted certificates (the origin's own, or verified ones); `fresh` ones
        are also passed on to peers (rule 4)."""
        n, held = self._swept
        if (
            (
                len(self._certs) > 2 * n + 256
                or self.held > 2 * held + 2 * MAX_CERT_ATOMS
                or (self._due and self.held > held + held // 4 + 256)
            )
            and self.live_seqs is not None
            and not self._sweeping
        ):  # before adding: what these prove may not be applied yet
            self.sweep(self.live_seqs())
        for c in certs:
            if c.signature not in self._by_sig:
                self._insert(c)
                if fresh:
                    self._fresh_add(c)
                    self._due = True  # it may replace sparse ones: sweep sooner

    def settle(self) -> None:
        """Take what is held now as swept: a caller that has just certified exactly the live
        states (the origin's recovery) spares the first `add` a sweep that would drop nothing
        but walk every live state (seconds at a million keys, on the origin's event loop,
        when its first edge joins)."""
        self._swept = (len(self._certs), self.held)

    def _fresh_add(self, c: Certificate) -> None:
        fresh = self._fresh
        fresh[c.signature] = ANNOUNCE_SENDS
        if len(fresh) > MAX_FRESH:  # bounded: a peer may send many valid old certificates
            del fresh[next(iter(fresh))]

    def _insert(self, c: Certificate) -> None:
        self._order += 1
        c.order = self._order
        self._by_sig[c.signature] = c
        los, certs, reach = self._los, self._certs, self._reach
        i = bisect.bisect_right(los, c.lo)
        los.insert(i, c.lo)
        certs.insert(i, c)
        reach.insert(i, max(reach[i - 1], c.hi) if i else c.hi)
        for j in range(i + 1, len(reach)):  # only when inserted before others (rare)
            r = max(reach[j - 1], certs[j].hi)
            if reach[j] == r:
                break
            reach[j] = r
        self.held += len(c)
        if self.journal:
            self.added.append(c)

    def check_signature(self, cert: Certificate) -> Certificate:
        """The stored twin of `cert`, or `cert` after its signature verified; ForgedState if not."""
        known = self._by_sig.get(cert.signature)
        if known is not None:
            if known.body() != cert.body():
                raise ForgedState("a certificate reuses another one's signature")
            return known
        public = self._raw.get(cert.key_id)
        if public is None:
            raise ForgedState("certificate signed by an unknown key")
        try:
            crypto_sign_open(cert.signature + cert.body(), public)
        except CryptoError:
            raise ForgedState("bad certificate signature") from None
        return cert

    # -- lookup --------------------------------------------------------------------------------

    def _covering(self, seq: int, extra: Sequence[Certificate] = ()) -> Iterator[Certificate]:
        """The certificates whose range holds `seq`: `extra` first, then the newest ranges."""
        for c in extra:
            if c.lo <= seq <= c.hi:
                yield c
        los, certs, reach = self._los, self._certs, self._reach
        i = bisect.bisect_right(los, seq) - 1
        while i >= 0 and reach[i] >= seq:
            c = certs[i]
            if c.hi >= seq:
                yield c
            i -= 1

    def find(self, seq: int, h: bytes, extra: Sequence[Certificate] = ()) -> Certificate | None:
        for c in self._covering(seq, extra):
            if c.contains(seq, h):
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

    def answer_material(self, items: Iterable[Item]) -> list[Certificate]:
        """Proofs for the answer to a forwarded write: the deferred groups holding its seqs
        are signed into a one-off certificate that is neither kept nor clears them, so the
        next push still signs its whole batch as one certificate (one verification per batch
        at every node, not one per forwarded write)."""
        if not self._pending or self.signer is None:
            return self.material_for(items)
        items = list(items)
        seqs = {seq for _s, _k, d in items for seq in delta_seqs(d)}
        # the deferred groups holding these seqs only, newest first (groups defer in seq
        # order and the answered write is mostly the last): not every deferred atom per answer
        atoms: list[Atom] = []
        lo, hi, least = 0, 0, min(seqs, default=0)
        groups = self._groups
        for i in range(len(groups) - 1, -1, -1):
            g_lo, g_hi, end = groups[i]
            if g_hi < least:
                break
            if any(g_lo <= seq <= g_hi for seq in seqs):
                atoms.extend(self._pending[groups[i - 1][2] if i else 0 : end])
                lo, hi = (g_lo if not lo else min(lo, g_lo)), max(hi, g_hi)
        if not atoms:
            return self.material_for(items)
        oneoff = self.signer.certify(atoms, lo, hi)
        out: dict[bytes, Certificate] = {c.signature: c for c in oneoff}
        for _store, _key, d in items:
            for seq in delta_seqs(d):
                if any(c.has_seq(seq) for c in oneoff):
                    continue
                for c in self._covering(seq):
                    if c.has_seq(seq):
                        out.setdefault(c.signature, c)
                        break
        return list(out.values())

    def add_material(self, out: dict[bytes, Certificate], d: Delta) -> int:
        """Add the certificates proving `d` to `out`; returns the bytes they add (for chunking),
        or -1 when this store holds no certificate for one of its seqs: the caller must not
        send `d` (an honest peer would count it as forged).  The first material of a message
        also carries a fresh certificate to pass on (rule 4)."""
        if self._pending:
            self.seal()
        first = not out
        added = 0
        for seq in delta_seqs(d):
            # the certificates of this store holding `seq` (one or two): one this message
            # carries already is preferred, else the first.  Looked up through the store's
            # index, not by scanning `out`: a snapshot session's `out` holds every
            # certificate it sent (thousands under a rewrite load), and a scan per seq made
            # serving a snapshot quadratic (94% of the origin's time while ten edges joined).
            pick = None
            for c in self._covering(seq):
                if c.has_seq(seq):
                    if c.signature in out:
                        break
                    if pick is None:
                        pick = c
            else:
                if pick is None:
                    return -1
                out[pick.signature] = pick
                added += len(pick.entries) + CERT_OVERHEAD
        if first and self._fresh:
            added += self._pass_on(out)
        return added

    def sent_prover(
        self, seq: int, head: bytes, sent: dict[bytes, Certificate]
    ) -> Certificate | None:
        """A sender's shortcut before `add_material`: the certificate of the newest range
        starting at or before `seq`, if `sent` holds it and it holds `seq` at its dense
        position (`head`: the seq's 8 big-endian bytes); else None (`add_material` decides).
        In a snapshot of a store written in random key order each key's seq is in another
        certificate, mostly one the session sent already: one bisect finds it (serving 1M
        such keys: 6.4 s of CPU through `add_material`, see benchmarks/bench_serve.py)."""
        i = bisect.bisect_right(self._los, seq) - 1
        if i < 0:
            return None
        c = self._certs[i]
        at = (seq - c.lo) * ENTRY
        return c if c.signature in sent and c.entries[at : at + 8] == head else None

    def prover(self, seq: int) -> Certificate | None:
        """The certificate `add_material` picks for `seq` (the first covering one holding it),
        or None: a sender may reuse it for the next seqs it holds (snapshot chunks)."""
        return next((c for c in self._covering(seq) if c.has_seq(seq)), None)

    def _pass_on(self, out: dict[bytes, Certificate]) -> int:
        """Put fresh certificates in `out`, oldest first, up to PASS_ON_BYTES; each goes to the
        back of the line until it has been sent ANNOUNCE_SENDS times."""
        fresh = self._fresh
        added = 0
        for sig in list(fresh)[:MAX_FRESH]:
            c = self._by_sig.get(sig)
            left = fresh.pop(sig) - 1
            if c is None:
                continue
            if left > 0:
                fresh[sig] = left
            if sig not in out:
                out[sig] = c
                added += len(c.entries) + CERT_OVERHEAD
                if added >= PASS_ON_BYTES:
                    break
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
        that prove something join the store; new ones that prove nothing in this message were
        passed on by the sender (rule 4): they join too, and are passed on in turn."""
        checked = [self.check_signature(c) for c in certs]
        used: dict[bytes, Certificate] = {}
        out: list[Item] = []
        last: Certificate | None = None  # consecutive items mostly share a certificate
        prefixes: dict[str, bytes] = {}
        for item in items:
            store, key, d = item
            if d.__class__ is Register:  # the hot path: register_atom inlined
                pre = prefixes.get(store)
                if pre is None:
                    s = store.encode()
                    pre = prefixes[store] = b"R" + LEN1[len(s)] + s
                k = key.encode()
                seq = unpack_seq(d, 1)[0]
                h = blake2b(pre + len(k).to_bytes(2, "big") + k + d, digest_size=16).digest()
                if last is None or not (last.lo <= seq <= last.hi and last.contains(seq, h)):
                    last = self.find(seq, h, checked)
                    if last is None:
                        raise ForgedState(f"{store}/{key} at seq {seq} is not signed by the origin")
                    used[last.signature] = last
                out.append(item)
                continue
            if isinstance(d, BloomDelta):
                atom = bloom_delta_atom(store, key, d, current(store, key))
                c = None if atom is None else self.find(*atom, checked)
                if c is None:
                    continue
                used[c.signature] = c
                out.append(item)
                continue
            if isinstance(d, ZSet) and not zset_shape_ok(d):
                raise ForgedState(f"sorted set {store}/{key} has members outside its reset")
            for seq, h in atoms_of(store, key, d):
                c = self.find(seq, h, checked)
                if c is None:
                    raise ForgedState(f"{store}/{key} at seq {seq} is not signed by the origin")
                used[c.signature] = c
            out.append(item)
        if len(used) == len(checked):
            self.add(checked)
        else:
            self.add(c for c in checked if c.signature in used)
            by_sig = self._by_sig
            self.add((c for c in checked if c.signature not in by_sig), fresh=True)
        return out

    # -- collection ----------------------------------------------------------------------------

    def sweep(self, seqs: Iterable[int]) -> int:
        """Keep, for each of `seqs` (the live states' seqs), the newest certificate holding it,
        and the fresh ones still to be passed on; drop the others.  With a signer (the origin), the live entries of sparse certificates
        are signed again into compact ones, passed on to peers (rule 4).  Returns how many
        certificates were dropped."""
        self._sweeping, self._due = True, False
        try:
            return self._sweep(set(seqs))
        finally:
            self._sweeping = False

    def _sweep(self, live: set[int]) -> int:
        certs = self._certs
        keep = [False] * len(certs)
        sparse: dict[int, list[bytes]] = {}  # index -> live entries (at the origin only)
        compact = self.signer is not None
        for i in sorted(range(len(certs)), key=lambda j: certs[j].order, reverse=True):
            c = certs[i]
            if not live:
                break
            e = c.entries
            seqs = list(map(_FIRST, SEQ_ONLY.iter_unpack(e)))  # column-wise, in C
            hit = live.intersection(seqs)
            if not hit:
                continue
            keep[i] = True
            live.difference_update(hit)
            # sparse: at most half its entries live (entries >= seqs: a seq may repeat)
            if compact and 2 * len(hit) <= len(c):
                idx = [j for j, s in enumerate(seqs) if s in hit]
                if 2 * len(idx) <= len(c):
                    sparse[i] = [e[j * ENTRY : (j + 1) * ENTRY] for j in idx]
        runs: list[tuple[int, int, list[bytes]]] = []  # consecutive sparse ones sign as one
        prev = -2
        for i in sorted(sparse):
            c = certs[i]
            if i == prev + 1:
                lo, _, recs = runs[-1]
                recs.extend(sparse[i])
                runs[-1] = (lo, c.hi, recs)
            else:
                runs.append((c.lo, c.hi, list(sparse[i])))
            keep[i] = False
            prev = i
        dropped = 0
        kept: list[Certificate] = []
        for i, c in enumerate(certs):
            if keep[i]:
                kept.append(c)
            else:
                del self._by_sig[c.signature]
                self._fresh.pop(c.signature, None)
                if self.journal:
                    self.dropped.append(c)
                dropped += 1
        self._certs, self._los, self._reach = kept, [c.lo for c in kept], []
        r = -1
        for c in kept:
            r = max(r, c.hi)
            self._reach.append(r)
        self.held = sum(len(c) for c in kept)
        if runs:
            assert self.signer is not None
            for lo, hi, recs in runs:
                recs.sort()
                for c in self.signer.certify_records(recs, lo, hi):
                    self._insert(c)
                    self._fresh_add(c)
        self._swept = (len(self._certs), self.held)
        return dropped

    def drain_journal(self) -> tuple[list[Certificate], list[Certificate]]:
        added, dropped = self.added, self.dropped
        self.added, self.dropped = [], []
        gone = {c.signature for c in dropped}
        return [c for c in added if c.signature not in gone], dropped
