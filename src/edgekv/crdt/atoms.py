"""Atoms: the pieces of state the origin signs, and their BLAKE2b-128 hashes (crdt/proofs.py
rule 1 says what each atom is and why a Bloom filter is certified whole)."""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from hashlib import blake2b
from itertools import chain
from operator import itemgetter

from .bloom import Bloom, BloomDelta
from .register import Register, unpack_head
from .state import Delta, State
from .zset import ZSet

__all__ = ["Atom", "atoms_of", "bloom_atom", "register_atom", "state_seqs", "states_seqs"]

Atom = tuple[int, bytes]  # (seq, 16-byte hash)
_SEQ = struct.Struct(">q")
_THREE = struct.Struct(">qqq")
_MEMBER = struct.Struct(">qq?d")
_BLOOM = struct.Struct(">qqqqq")


LEN1 = [bytes([n]) for n in range(256)]
unpack_seq = _SEQ.unpack_from


def _name(store: str, key: str) -> bytes:
    s, k = store.encode(), key.encode()
    return LEN1[len(s)] + s + len(k).to_bytes(2, "big") + k


def _h(tag: bytes, name: bytes, body: bytes) -> bytes:
    return blake2b(tag + name + body, digest_size=16).digest()


def bloom_atom(store: str, key: str, bloom: Bloom) -> Atom:
    """The atom of a whole Bloom filter (its state after the bf_add at `bloom.seq`)."""
    head = _BLOOM.pack(bloom.reset, bloom.m, bloom.k, bloom.seq, bloom.written_at)
    return bloom.seq, _h(b"B", _name(store, key), head + bytes(bloom.bits))


def register_atom(store: str, key: str, reg: Register) -> Atom:
    """The atom of a register (the hot path: one BLAKE2b over name and register bytes)."""
    s, k = store.encode(), key.encode()
    body = b"R" + LEN1[len(s)] + s + len(k).to_bytes(2, "big") + k + reg
    return unpack_seq(reg, 1)[0], blake2b(body, digest_size=16).digest()


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


def delta_seqs(d: Delta) -> list[int]:
    if isinstance(d, ZSet):
        return [d.seq, *{s for s, _ in d.members.values()}]
    return [d.seq]


def state_seqs(d: State) -> Iterator[int]:
    """Every seq a state's atoms carry (what its proof must cover)."""
    yield d.seq
    if isinstance(d, ZSet):
        for s, _ in d.members.values():
            yield s


_SEQ_OF_HEAD = itemgetter(1)  # (flags, seq, written_at) -> seq


def states_seqs(states: Collection[State]) -> Iterator[int]:
    """Every seq the atoms of `states` carry (`state_seqs` of each).  A collection of
    registers only (the common store) is read column-wise, in C: one header unpack per
    state, no Python call (a proof store's sweep reads every live state's seqs)."""
    if set(map(type, states)) <= {Register}:
        return map(_SEQ_OF_HEAD, map(unpack_head, states))  # type: ignore[arg-type]
    return chain.from_iterable(map(state_seqs, states))


def zset_shape_ok(z: ZSet) -> bool:
    return all(z.reset <= s <= z.seq for s, _ in z.members.values()) and z.reset <= z.seq


def bloom_delta_atom(
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
