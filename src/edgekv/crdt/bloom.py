"""Bloom filter as a CRDT: `(reset, m, k, bits)`; same reset joins by bitwise OR.

A filter is created by a whole-key write at seq `reset` with m bits and k hashes.  `bf_add`
ships a `BloomDelta` carrying only the set bit positions, never the whole filter.  A higher
reset (the filter was recreated) replaces the filter whole (see `state.join`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConflictingVersion, InvalidInput
from .hashing import bloom_positions, entry_hash

MAX_BLOOM_BITS = 1 << 26  # 8 MiB of bits per filter: a whole filter fits in one 16 MiB frame
MAX_BLOOM_HASHES = 32


def bloom_params(capacity: int, error_rate: float) -> tuple[int, int]:
    """(m, k) for `capacity` items at false-positive rate `error_rate`."""
    if not isinstance(capacity, int) or capacity < 1:
        raise InvalidInput("bloom capacity must be a positive integer")
    if not (0.0 < error_rate < 1.0):
        raise InvalidInput("bloom error_rate must be in (0, 1)")
    m = max(8, math.ceil(-capacity * math.log(error_rate) / (math.log(2) ** 2)))
    k = max(1, round(m / capacity * math.log(2)))
    check_params(m, k)
    return m, k


def check_params(m: int, k: int) -> None:
    if not isinstance(m, int) or not 8 <= m <= MAX_BLOOM_BITS:
        raise InvalidInput(f"bloom m must be an integer in [8, {MAX_BLOOM_BITS}]")
    if not isinstance(k, int) or not 1 <= k <= MAX_BLOOM_HASHES:
        raise InvalidInput(f"bloom k must be an integer in [1, {MAX_BLOOM_HASHES}]")


class Bloom:
    """A whole Bloom filter: m bits in a bytearray, k hash functions."""

    __slots__ = ("bits", "k", "m", "reset", "seq", "written_at")

    kind = "bloom"

    def __init__(
        self,
        reset: int,
        m: int,
        k: int,
        bits: bytearray | None = None,
        seq: int | None = None,
        written_at: int = 0,
    ) -> None:
        self.reset = reset
        self.m = m
        self.k = k
        self.bits = bits if bits is not None else bytearray((m + 7) // 8)
        self.seq = reset if seq is None else seq
        self.written_at = written_at

    def contains(self, item: bytes) -> bool:
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in bloom_positions(item, self.m, self.k))

    def _check_shape(self, m: int, k: int) -> None:
        if m != self.m or k != self.k:
            raise ConflictingVersion(f"bloom filters with reset {self.reset} differ in m or k")

    def _bump(self, seq: int, written_at: int) -> bool:
        if seq > self.seq:
            self.seq, self.written_at = seq, written_at
            return True
        if seq == self.seq and written_at != self.written_at:
            raise ConflictingVersion(f"bloom filter has two write times at seq {seq}")
        return False

    def merge_same_reset(self, other: Bloom | BloomDelta) -> bool:
        """Join `other` (same reset) into self in place; return True when anything changed."""
        self._check_shape(other.m, other.k)
        if other.seq == self.seq and other.written_at != self.written_at:
            raise ConflictingVersion(f"bloom filter has two write times at seq {self.seq}")
        changed = False
        bits = self.bits
        if isinstance(other, Bloom):
            if other.bits != bits:
                merged = int.from_bytes(bits, "little") | int.from_bytes(other.bits, "little")
                new = merged.to_bytes(len(bits), "little")
                if new != bits:
                    bits[:] = new
                    changed = True
        else:
            for p in other.positions:
                byte, mask = p >> 3, 1 << (p & 7)
                if not bits[byte] & mask:
                    bits[byte] |= mask
                    changed = True
        return self._bump(other.seq, other.written_at) or changed

    def digest(self, key: str) -> int:
        return entry_hash(b"b", key, self.seq, self.reset.to_bytes(8, "big") + bytes(self.bits))

    def copy(self) -> Bloom:
        return Bloom(self.reset, self.m, self.k, bytearray(self.bits), self.seq, self.written_at)

    def same(self, other: Bloom) -> bool:
        return (
            self.reset == other.reset
            and self.m == other.m
            and self.k == other.k
            and self.seq == other.seq
            and self.written_at == other.written_at
            and self.bits == other.bits
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bloom) and self.same(other)

    # (defining __eq__ leaves __hash__ None: mutable values are not hashable)

    def __repr__(self) -> str:
        return f"Bloom(reset={self.reset}, seq={self.seq}, m={self.m}, k={self.k})"


@dataclass(slots=True)
class BloomDelta:
    """The bits one or more `bf_add`s set: what travels instead of the whole filter.

    Equal when every field is (not hashable, like the other values); immutable by convention."""

    reset: int
    m: int
    k: int
    positions: frozenset[int]
    seq: int
    written_at: int

    kind: ClassVar[str] = "bloom"

    @classmethod
    def for_items(
        cls, reset: int, m: int, k: int, items: list[bytes], seq: int, written_at: int
    ) -> BloomDelta:
        positions = frozenset(p for item in items for p in bloom_positions(item, m, k))
        return cls(reset, m, k, positions, seq, written_at)

    def to_state(self) -> Bloom:
        bloom = Bloom(self.reset, self.m, self.k, seq=self.seq, written_at=self.written_at)
        bloom.merge_same_reset(self)
        return bloom

    def join_same_reset(self, other: BloomDelta) -> BloomDelta:
        if other.m != self.m or other.k != self.k:
            raise ConflictingVersion(f"bloom deltas with reset {self.reset} differ in m or k")
        top = self if self.seq >= other.seq else other
        if self.seq == other.seq and self.written_at != other.written_at:
            raise ConflictingVersion(f"bloom deltas have two write times at seq {self.seq}")
        return BloomDelta(
            self.reset, self.m, self.k, self.positions | other.positions, top.seq, top.written_at
        )

    def copy(self) -> BloomDelta:
        return self  # immutable

    def __repr__(self) -> str:
        return f"BloomDelta(reset={self.reset}, seq={self.seq}, n={len(self.positions)})"
