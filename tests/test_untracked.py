"""Registers carry no cyclic-collector header (crdt/untracked.py): same behaviour, 16 bytes less."""

from __future__ import annotations

import copy
import gc
import pickle
import platform
import sys

import pytest

from edgekv.crdt import Register
from edgekv.crdt.untracked import without_gc

cpython = pytest.mark.skipif(
    platform.python_implementation() != "CPython", reason="the untracked twin is CPython-only"
)


@cpython
def test_registers_are_untracked_and_as_small_as_bytes() -> None:
    r = Register(7, 1_700_000_000_000, b"v" * 100)
    assert not gc.is_tracked(r)
    assert sys.getsizeof(r) == sys.getsizeof(bytes(r))  # no collector header
    # made from raw bytes (the load path of persistence and snapshots) too
    raw = bytes.__new__(Register, bytes(r))
    assert type(raw) is Register and not gc.is_tracked(raw) and raw == r


def test_register_behaves_as_written() -> None:
    r = Register(7, 9, b"abc", 11)
    assert (r.seq, r.written_at, r.value, r.expiry, r.kind) == (7, 9, b"abc", 11, "bytes")
    assert repr(r) == "Register(seq=7, value=b'abc', expiry=11)"
    assert type(r).__module__ == "edgekv.crdt.register" and type(r).__qualname__ == "Register"
    assert isinstance(r, bytes) and hash(r) == hash(bytes(r))
    assert r == Register(7, 9, b"abc", 11) and r != Register(7, 9, b"abd", 11)
    assert r != bytes(r)  # a register equals only a register
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r
    with pytest.raises(AttributeError):
        r.extra = 1  # type: ignore[attr-defined]


def test_freed_registers_release_their_type() -> None:
    before = sys.getrefcount(Register)
    regs = [Register(i, 0, b"x") for i in range(1, 1001)]
    del regs
    assert sys.getrefcount(Register) == before


class _WithDict(bytes):
    pass


class _Plain(bytes):
    __slots__ = ()

    def first(self) -> int:
        return self[0]


def test_classes_that_may_hold_references_are_left_alone() -> None:
    assert without_gc(_WithDict, (b"a",)) is _WithDict  # has a __dict__: must stay tracked
    twin = without_gc(_Plain, (b"a",))
    if platform.python_implementation() == "CPython":
        assert twin is not _Plain and twin(b"z").first() == ord("z")
        assert not gc.is_tracked(twin(b"z"))
    else:
        assert twin is _Plain
