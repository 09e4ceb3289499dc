"""Strict CBOR codec: round trips for every state and delta, and only CodecError on bad input."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import Bloom, BloomDelta, Delta, Register, ZSet
from edgekv.crdt.codec import (
    MAX_SEQ,
    decode_delta,
    dumps,
    dumps_delta,
    encode_delta,
    loads,
    loads_delta,
)
from edgekv.errors import CodecError
from strategies import blooms, canon, deltas, zsets

registers = st.builds(
    Register,
    st.integers(1, MAX_SEQ),
    st.integers(0, MAX_SEQ),
    st.one_of(st.none(), st.binary(max_size=64)),
    st.one_of(st.none(), st.integers(0, MAX_SEQ)),
)
any_delta = st.one_of(
    registers,
    deltas(st.integers(1, 1000)),
    st.integers(1, 50).flatmap(zsets),
    st.integers(1, 50).flatmap(blooms),
)


@given(d=any_delta)
def test_round_trip(d: Delta) -> None:
    back = loads_delta(dumps_delta(d))
    assert type(back) is type(d)
    assert canon(back) == canon(d)


def test_round_trip_extremes() -> None:
    z = ZSet(1, {b"": (1, -math.inf), b"x" * 1000: (2, math.inf), b"r": (3, None)}, 3, 0)
    extremes: list[Delta] = [
        Register(MAX_SEQ, MAX_SEQ, b"", MAX_SEQ),
        Register(1, 0, None, None),
        z,
        Bloom(1, 8, 1, bytearray(b"\xff"), 1, 0),
        BloomDelta(5, 1 << 26, 32, frozenset({0, (1 << 26) - 1}), 9, 0),
    ]
    for d in extremes:
        assert canon(loads_delta(dumps_delta(d))) == canon(d)


@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        d = loads_delta(data)
    except CodecError:
        return
    assert isinstance(d, Register | ZSet | Bloom | BloomDelta)


@given(d=any_delta, data=st.data())
def test_mutated_bytes_raise_only_codec_error(d: Delta, data: st.DataObject) -> None:
    raw = bytearray(dumps_delta(d))
    for _ in range(data.draw(st.integers(1, 4))):
        what = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if what == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        elif what == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=9))
        elif what == "delete" and raw:
            del raw[i]
        else:
            del raw[i:]
    try:
        back = loads_delta(bytes(raw))
    except CodecError:
        return
    # whatever decodes is a well-formed value that encodes again
    assert canon(loads_delta(dumps_delta(back))) == canon(back)


@given(
    obj=st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.binary(max_size=8),
            st.text(max_size=8),
        ),
        lambda inner: st.lists(inner, max_size=8),
        max_leaves=30,
    )
)
def test_random_structures_raise_only_codec_error(obj: object) -> None:
    for candidate in (obj, [0, obj], [1, 1, 1, 0, obj], [3, 1, 1, 0, 64, 3, obj]):
        try:
            decode_delta(candidate)
        except CodecError:
            pass


ZS = [1, 2, 3, 0]  # zset header: reset, seq, written_at
BL = [1, 2, 0, 64, 3]  # bloom header: reset, seq, written_at, m, k
HOSTILE_ARRAYS = {
    "empty": [],
    "not an array": {"a": 1},
    "unknown kind": [9, 1, 0, None, None],
    "kind as float": [0.0, 1, 0, b"v", None],
    "register arity": [0, 1, 0, b"v"],
    "register arity long": [0, 1, 0, b"v", None, None],
    "seq zero": [0, 0, 0, b"v", None],
    "negative seq": [0, -1, 0, b"v", None],
    "seq too big": [0, 1 << 64, 0, b"v", None],
    "seq as bool": [0, True, 0, b"v", None],
    "seq as float": [0, 1.0, 0, b"v", None],
    "value as str": [0, 1, 0, "v", None],
    "expiry negative": [0, 1, 0, b"v", -5],
    "zset arity": [1, 1, 2, 0],
    "zset members not array": [1, *ZS[:3], {b"a": 1}],
    "zset member arity": [1, *ZS[:3], [[b"a", 2]]],
    "zset member not bytes": [1, *ZS[:3], [["a", 2, 1.0]]],
    "zset NaN score": [1, *ZS[:3], [[b"a", 2, math.nan]]],
    "zset score as str": [1, *ZS[:3], [[b"a", 2, "1"]]],
    "zset member seq above seq": [1, *ZS[:3], [[b"a", 3, 1.0]]],
    "zset member seq below reset": [1, 5, 6, 0, [[b"a", 4, 1.0]]],
    "zset seq below reset": [1, 5, 4, 0, []],
    "zset duplicate member": [1, *ZS[:3], [[b"a", 2, 1.0], [b"a", 2, 1.0]]],
    "bloom arity": [2, *BL],
    "bloom m too small": [2, 1, 2, 0, 4, 3, b"\x00"],
    "bloom m too big": [2, 1, 2, 0, 1 << 40, 3, b""],
    "bloom k zero": [2, 1, 2, 0, 64, 0, bytes(8)],
    "bloom k too big": [2, 1, 2, 0, 64, 99, bytes(8)],
    "bloom bits short": [2, *BL, bytes(7)],
    "bloom bits long": [2, *BL, bytes(9)],
    "bloom bits as list": [2, *BL, [0] * 8],
    "bloom bits beyond m": [2, 1, 2, 0, 12, 3, b"\x00\x10"],
    "bloom position = m": [3, *BL, [64]],
    "bloom position negative": [3, *BL, [-1]],
    "bloom position float": [3, *BL, [1.0]],
    "bloom positions more than m": [3, 1, 2, 0, 8, 1, list(range(9))],
}


@pytest.mark.parametrize("name", HOSTILE_ARRAYS)
def test_hostile_arrays_raise_codec_error(name: str) -> None:
    with pytest.raises(CodecError):
        loads_delta(dumps(HOSTILE_ARRAYS[name]))


HOSTILE_BYTES = {
    "empty": b"",
    "deep nesting": b"\x81" * 100_000 + b"\x00",
    "nesting past the limit": b"\x81" * 200 + b"\x00",
    "deep maps": b"\xa1\x00" * 50_000 + b"\x00",
    "huge array length": b"\x9b" + b"\xff" * 8,
    "huge byte string length": b"\x5b\x00\x00\x00\x10\x00\x00\x00\x00" + b"\x00" * 4,
    "huge text length": b"\x7a\xff\xff\xff\xff" + b"a",
    "huge map length": b"\xbb" + b"\x7f" * 8,
    "indefinite never ends": b"\x9f" + b"\x00" * 10,
    "datetime tag": b"\xc1\x01",
    "bignum tag": b"\xc2\x41\x01",
    "self-describe tag": b"\xd9\xd9\xf7\x80",
    "tag inside delta": dumps([0, 1, 0, b"v", None])[:-1] + b"\xc1\x01",
    "unknown tag": b"\xd8\x99\x00",
    "trailing bytes": dumps([0, 1, 0, b"v", None]) + b"\x00",
    "break outside indefinite": b"\xff",
    "reserved additional info": b"\x1c",
    "truncated float": b"\xfb\x00",
    "invalid utf-8": b"\x62\xff\xfe",
    "unhashable map key": b"\xa1\x80\x00",
}


@pytest.mark.parametrize("name", HOSTILE_BYTES)
def test_hostile_bytes_raise_codec_error(name: str) -> None:
    with pytest.raises(CodecError):
        loads_delta(HOSTILE_BYTES[name])


def test_loads_bounds_input_size_and_type() -> None:
    with pytest.raises(CodecError):
        loads(b"\x00" * 11, max_size=10)
    with pytest.raises(CodecError):
        loads("not bytes")  # type: ignore[arg-type]
    assert loads(bytearray(b"\x01")) == 1
    assert loads(memoryview(b"\x01")) == 1


def test_tags_are_refused_even_when_cbor2_knows_them() -> None:
    for value in (cbor2.CBORTag(1, 0), cbor2.CBORTag(2, b"\x01"), cbor2.CBORTag(55799, [])):
        with pytest.raises(CodecError):
            loads(cbor2.dumps(value))


def test_encode_delta_shapes() -> None:
    assert encode_delta(Register(3, 7, b"v", 9)) == [0, 3, 7, b"v", 9]
    assert encode_delta(ZSet(2, {b"m": (3, 1.5)}, 3, 7)) == [1, 2, 3, 7, [[b"m", 3, 1.5]]]
    assert encode_delta(Bloom(2, 8, 1, bytearray(b"\x01"), 2, 7)) == [2, 2, 2, 7, 8, 1, b"\x01"]
    assert encode_delta(BloomDelta(2, 8, 1, frozenset({5, 1}), 4, 7)) == [3, 2, 4, 7, 8, 1, [1, 5]]


def test_dumps_of_unencodable_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        dumps(object())
