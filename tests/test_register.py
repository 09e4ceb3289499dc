"""The flat register layout: every field reads back as written, and only equal writes are equal."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import Register
from edgekv.crdt.codec import decode_delta, encode_delta

MAX = (1 << 63) - 1
seqs = st.integers(1, MAX)
stamps = st.integers(0, MAX)
values = st.none() | st.binary(max_size=64)
expiries = st.none() | st.integers(0, MAX)


@given(seqs, stamps, values, expiries)
def test_fields_read_back(
    seq: int, written_at: int, value: bytes | None, expiry: int | None
) -> None:
    r = Register(seq, written_at, value, expiry)
    assert (r.seq, r.reset, r.written_at, r.value, r.expiry) == (
        seq,
        seq,
        written_at,
        value,
        expiry,
    )
    assert r.is_tombstone == (value is None)
    assert decode_delta(encode_delta(r)) == r
    assert pickle.loads(pickle.dumps(r)) == r


@given(seqs, stamps, values, expiries, st.integers(0, MAX))
def test_read_and_live_follow_expiry(
    seq: int, written_at: int, value: bytes | None, expiry: int | None, now: int
) -> None:
    r = Register(seq, written_at, value, expiry)
    live = value is not None and (expiry is None or expiry > now)
    assert r.live(now) == live
    assert r.read(now) == (value if live else None)


@given(seqs, stamps, values, expiries, seqs, stamps, values, expiries)
def test_equal_exactly_when_every_field_is(
    s1: int,
    w1: int,
    v1: bytes | None,
    e1: int | None,
    s2: int,
    w2: int,
    v2: bytes | None,
    e2: int | None,
) -> None:
    a, b = Register(s1, w1, v1, e1), Register(s2, w2, v2, e2)
    assert (a == b) == ((s1, w1, v1, e1) == (s2, w2, v2, e2))
    assert a.same(b) == (a == b)
    if a == b:
        assert hash(a) == hash(b)


def test_a_register_is_not_equal_to_its_bytes() -> None:
    r = Register(1, 2, b"x")
    assert r != bytes(r)
    assert bytes(r) != r  # the subclass decides, whichever side it is on
    assert r != Register(1, 2, b"x", 5)
    assert Register(1, 2, None) != Register(1, 2, b"")
