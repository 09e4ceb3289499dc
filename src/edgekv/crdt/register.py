"""Last-writer-wins register for plain values (and tombstones).

State `(seq, written_at, value | None, expiry)`; `value is None` is a tombstone.  Join keeps the
higher seq; an equal seq with different contents is a `ConflictingVersion`.
"""

from __future__ import annotations

from ..errors import ConflictingVersion
from .hashing import entry_hash


class Register:
    """A plain value (or a tombstone) written at `seq`.  Immutable by convention."""

    __slots__ = ("expiry", "seq", "value", "written_at")

    kind = "bytes"

    def __init__(
        self, seq: int, written_at: int, value: bytes | None, expiry: int | None = None
    ) -> None:
        self.seq = seq
        self.written_at = written_at
        self.value = value
        self.expiry = expiry

    @property
    def reset(self) -> int:
        return self.seq

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def live(self, now_ms: int) -> bool:
        """True when the register holds a value that has not expired at `now_ms`."""
        return self.value is not None and (self.expiry is None or self.expiry > now_ms)

    def same(self, other: Register) -> bool:
        return (
            self.seq == other.seq
            and self.value == other.value
            and self.expiry == other.expiry
            and self.written_at == other.written_at
        )

    def check_same(self, other: Register) -> None:
        if not self.same(other):
            raise ConflictingVersion(f"two different registers share seq {self.seq}")

    def digest(self, key: str) -> int:
        return entry_hash(b"r", key, self.seq)

    def copy(self) -> Register:
        return self  # immutable

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Register) and self.same(other)

    def __hash__(self) -> int:
        return hash((self.seq, self.value))

    def __repr__(self) -> str:
        return f"Register(seq={self.seq}, value={self.value!r}, expiry={self.expiry})"
