"""Last-writer-wins register for plain values (and tombstones).

State `(seq, written_at, value | None, expiry)`; `value is None` is a tombstone.  Join keeps the
higher seq; an equal seq with different contents is a `ConflictingVersion`.

Layout.  A replica holds millions of registers, so a register is one flat `bytes` object rather
than an object pointing at a value and two int objects (which took 264 bytes per 100-byte value
against 160 now, and cost `get()` an extra cache miss):

    flags (1 byte) | seq (8) | written_at (8) | [expiry (8), when flags & HAS_EXPIRY] | value

All integers are big-endian signed 64-bit (the codec bounds them to [0, 2**63 - 1]).  `flags`
has TOMBSTONE (no value) and HAS_EXPIRY.  A plain value without expiry has flags 0, so the hot
read is one byte test and one slice.  Equal registers are equal byte strings, so `same()` is a
single memcmp.  The fields are read through properties; hot paths unpack the header once with
`unpack_head`.  On CPython the class is replaced by an identical one whose instances the cyclic
collector does not track (crdt/untracked.py): no 16-byte collector header per register.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import compress, repeat
from operator import and_, itemgetter
from struct import Struct
from typing import TYPE_CHECKING

from ..errors import ConflictingVersion
from .hashing import entry_hash
from .untracked import without_gc

TOMBSTONE = 1
HAS_EXPIRY = 2
_HEAD = Struct(">Bqq")  # flags, seq, written_at
_HEAD_EXP = Struct(">Bqqq")  # flags, seq, written_at, expiry
_EXPIRY = Struct(">q")
SEQ_AT = 1  # field offsets: after the flags byte, 8 bytes each
WRITTEN_AT_AT = SEQ_AT + 8
EXPIRY_AT = VALUE_AT = _HEAD.size  # the expiry when flags has HAS_EXPIRY, else the value
VALUE_AT_EXPIRY = _HEAD_EXP.size

_pack = _HEAD.pack
_pack_exp = _HEAD_EXP.pack
# Struct.unpack_from is typed as returning tuple[Any, ...]: these names say what the formats hold
_unpack_head: Callable[[bytes], tuple[int, int, int]] = _HEAD.unpack_from
unpack_head = _unpack_head
"""(flags, seq, written_at) of a register, in one C-level unpack."""


def register_digest(key: str, seq: int) -> int:
    """The Merkle entry hash of a register written at `seq` under `key` (`Register.digest`),
    for callers that already hold the seq."""
    return entry_hash(b"r", key, seq)


_unpack_expiry: Callable[[bytes, int], tuple[int]] = _EXPIRY.unpack_from
_FLAGS = itemgetter(0)
_SEQ_TOP = itemgetter(SEQ_AT)  # the sign byte of seq
SEQ_BYTES = itemgetter(slice(SEQ_AT, SEQ_AT + 8))
"""A register's seq field: 8 big-endian bytes, so comparing two compares their seqs."""
_SEQ_ZERO = bytes(8)
_WRITTEN_AT_TOP = itemgetter(WRITTEN_AT_AT)  # the sign byte of written_at
_EXPIRY_TOP = itemgetter(EXPIRY_AT)  # the sign byte of expiry, when flags has HAS_EXPIRY
_VALID_FLAGS = frozenset({0, TOMBSTONE, HAS_EXPIRY, TOMBSTONE | HAS_EXPIRY})


def registers_valid(regs: list[bytes], *, seq_from_one: bool = False) -> bool:
    """True when every item of `regs` is the bytes of a well-formed register: known flags,
    a whole header, non-negative seq, written_at and expiry, and with `seq_from_one` a seq of
    at least 1.  Column-wise (each check is one C-level pass), for loaders that get many
    registers as raw bytes (persistence, snapshots)."""
    if not regs:
        return True
    if not set(map(type, regs)) <= {bytes} or min(map(len, regs)) < VALUE_AT:
        return False
    flags = list(map(_FLAGS, regs))
    if not set(flags) <= _VALID_FLAGS:
        return False
    if max(map(_WRITTEN_AT_TOP, regs)) >= 0x80 or max(map(_SEQ_TOP, regs)) >= 0x80:
        return False
    if seq_from_one and min(map(SEQ_BYTES, regs)) == _SEQ_ZERO:
        return False
    expiring = list(compress(regs, map(and_, flags, repeat(HAS_EXPIRY))))
    return not expiring or (
        min(map(len, expiring)) >= VALUE_AT_EXPIRY and max(map(_EXPIRY_TOP, expiring)) < 0x80
    )


_new_bytes = bytes.__new__


class Register(bytes):
    """A plain value (or a tombstone) written at `seq`.  Immutable."""

    __slots__ = ()

    kind = "bytes"

    def __new__(
        cls, seq: int, written_at: int, value: bytes | None, expiry: int | None = None
    ) -> Register:
        flags = 0
        if value is None:
            flags, value = TOMBSTONE, b""
        if expiry is None:
            return _new_bytes(cls, _pack(flags, seq, written_at) + value)
        return _new_bytes(cls, _pack_exp(flags | HAS_EXPIRY, seq, written_at, expiry) + value)

    @property
    def seq(self) -> int:
        return _unpack_head(self)[1]

    reset = seq  # a register is written whole: its reset is its seq

    @property
    def written_at(self) -> int:
        return _unpack_head(self)[2]

    @property
    def value(self) -> bytes | None:
        flags = self[0]
        if flags & TOMBSTONE:
            return None
        return self[VALUE_AT_EXPIRY if flags & HAS_EXPIRY else VALUE_AT :]

    @property
    def expiry(self) -> int | None:
        if self[0] & HAS_EXPIRY:
            return _unpack_expiry(self, EXPIRY_AT)[0]
        return None

    @property
    def is_tombstone(self) -> bool:
        return bool(self[0] & TOMBSTONE)

    def live(self, now_ms: int) -> bool:
        """True when the register holds a value that has not expired at `now_ms`."""
        flags = self[0]
        if flags & TOMBSTONE:
            return False
        return not flags & HAS_EXPIRY or _unpack_expiry(self, EXPIRY_AT)[0] > now_ms

    def read(self, now_ms: int) -> bytes | None:
        """The value if live at `now_ms`, else None."""
        flags = self[0]
        if not flags:
            return self[VALUE_AT:]
        if flags & TOMBSTONE or _unpack_expiry(self, EXPIRY_AT)[0] <= now_ms:
            return None
        return self[VALUE_AT_EXPIRY:]

    def same(self, other: Register) -> bool:
        return bytes.__eq__(self, other)

    def check_same(self, other: Register) -> None:
        if not bytes.__eq__(self, other):
            raise ConflictingVersion(f"two different registers share seq {self.seq}")

    def digest(self, key: str) -> int:
        return register_digest(key, _unpack_head(self)[1])

    def copy(self) -> Register:
        return self  # immutable

    def __eq__(self, other: object) -> bool:
        return type(other) is Register and bytes.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = bytes.__hash__

    def __repr__(self) -> str:
        return f"Register(seq={self.seq}, value={self.value!r}, expiry={self.expiry})"

    def __reduce__(self) -> tuple[type[Register], tuple[int, int, bytes | None, int | None]]:
        return (Register, (self.seq, self.written_at, self.value, self.expiry))


if not TYPE_CHECKING:  # the same class to the type checker; at run time its untracked twin
    Register = without_gc(Register, (1, 0, b"v"))
