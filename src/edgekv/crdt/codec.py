"""Strict CBOR codec for states and deltas.

A delta or state travels as a CBOR array whose first item is a kind tag:

    [0, seq, written_at, value | null, expiry | null]               Register (null value: tombstone)
    [1, reset, seq, written_at, [[member, seq, score | null], ...]] ZSet
    [2, reset, seq, written_at, m, k, bits]                         Bloom (whole filter)
    [3, reset, seq, written_at, m, k, [position, ...]]              BloomDelta

`decode_delta` checks every field's type and range and raises `CodecError` for anything else,
whatever the input; `loads` also bounds the input size and turns any cbor2 failure into a
`CodecError`, so hostile bytes cannot crash a node or make it allocate without bound.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import cbor2

from ..errors import CodecError
from .bloom import MAX_BLOOM_BITS, MAX_BLOOM_HASHES, Bloom, BloomDelta
from .register import Register
from .state import Delta
from .zset import ZSet

MAX_SEQ = (1 << 63) - 1
MAX_ENCODED = 64 << 20
MAX_MEMBERS = 1 << 20

REGISTER, ZSET, BLOOM, BLOOM_DELTA = 0, 1, 2, 3


def encode_delta(d: Delta) -> list[Any]:
    """The CBOR-ready array for a state or delta."""
    if isinstance(d, Register):
        return [REGISTER, d.seq, d.written_at, d.value, d.expiry]
    if isinstance(d, ZSet):
        return [
            ZSET,
            d.reset,
            d.seq,
            d.written_at,
            [[m, s, sc] for m, (s, sc) in d.members.items()],
        ]
    if isinstance(d, Bloom):
        return [BLOOM, d.reset, d.seq, d.written_at, d.m, d.k, bytes(d.bits)]
    return [BLOOM_DELTA, d.reset, d.seq, d.written_at, d.m, d.k, sorted(d.positions)]


def _int(x: object, what: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise CodecError(f"{what} must be an integer in [{lo}, {hi}]")
    return x


def _opt_int(x: object, what: str) -> int | None:
    return None if x is None else _int(x, what)


def _score(x: object) -> float | None:
    if x is None:
        return None
    if type(x) is int:
        x = float(x)
    if type(x) is not float or math.isnan(x):
        raise CodecError("a score must be a number (not NaN) or null")
    return x


def decode_delta(obj: object) -> Delta:
    """Rebuild a state or delta from its array, or raise CodecError."""
    if type(obj) is not list or not obj:
        raise CodecError("a delta must be a non-empty array")
    tag = obj[0]
    if type(tag) is not int:
        raise CodecError("a delta's kind must be an integer")
    try:
        if tag == REGISTER and len(obj) == 5:
            _, seq, wat, value, expiry = obj
            if value is not None and type(value) is not bytes:
                raise CodecError("a register value must be bytes or null")
            return Register(
                _int(seq, "seq", 1), _int(wat, "written_at"), value, _opt_int(expiry, "expiry")
            )
        if tag == ZSET and len(obj) == 5:
            _, reset, seq, wat, members = obj
            if type(members) is not list or len(members) > MAX_MEMBERS:
                raise CodecError("zset members must be an array")
            reset = _int(reset, "reset", 1)
            seq = _int(seq, "seq", reset)
            out: dict[bytes, tuple[int, float | None]] = {}
            for item in members:
                if type(item) is not list or len(item) != 3 or type(item[0]) is not bytes:
                    raise CodecError("a zset member must be [bytes, seq, score]")
                mseq = _int(item[1], "member seq", reset, seq)
                if item[0] in out:
                    raise CodecError("duplicate zset member")
                out[item[0]] = (mseq, _score(item[2]))
            return ZSet(reset, out, seq, _int(wat, "written_at"))
        if tag in (BLOOM, BLOOM_DELTA) and len(obj) == 7:
            _, reset, seq, wat, m, k, payload = obj
            reset = _int(reset, "reset", 1)
            seq = _int(seq, "seq", reset)
            m = _int(m, "bloom m", 8, MAX_BLOOM_BITS)
            k = _int(k, "bloom k", 1, MAX_BLOOM_HASHES)
            wat = _int(wat, "written_at")
            if tag == BLOOM:
                if type(payload) is not bytes or len(payload) != (m + 7) // 8:
                    raise CodecError("bloom bits must be bytes of length ceil(m/8)")
                if m % 8 and payload[-1] >> (m % 8):
                    raise CodecError("bloom bits beyond m must be zero")
                return Bloom(reset, m, k, bytearray(payload), seq, wat)
            if type(payload) is not list or len(payload) > m:
                raise CodecError("bloom positions must be an array of at most m integers")
            positions = frozenset(_int(p, "bloom position", 0, m - 1) for p in payload)
            return BloomDelta(reset, m, k, positions, seq, wat)
    except CodecError:
        raise
    except Exception as exc:  # unpacking errors and the like
        raise CodecError(f"malformed delta: {exc}") from None
    raise CodecError(f"unknown delta kind or arity: {tag!r}")


def refuse_tag(*_args: object) -> NoReturn:
    """A cbor2 tag hook refusing every tag (edgekv's values and wire messages use none)."""
    raise CodecError("CBOR tags are not allowed")


class _AllTags(Mapping[int, Any]):
    """A semantic-decoder table claiming every tag, so cbor2's built-in tags are refused too."""

    def __getitem__(self, key: int) -> Any:
        return refuse_tag

    def __contains__(self, key: object) -> bool:
        return True

    def get(self, key: int, default: Any = None) -> Any:
        return refuse_tag

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


NO_TAGS = _AllTags()  # cbor2 `semantic_decoders`: every tag refused, built-in ones too
MAX_DEPTH = 64


def dumps(obj: Any) -> bytes:
    try:
        return cbor2.dumps(obj)
    except Exception as exc:
        raise CodecError(f"cannot encode: {exc}") from None


def loads(data: bytes | bytearray | memoryview, max_size: int = MAX_ENCODED) -> Any:
    """Decode CBOR bytes strictly: size-bounded, no tags, trailing bytes rejected."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("CBOR input must be bytes")
    if len(data) > max_size:
        raise CodecError(f"CBOR input of {len(data)} bytes exceeds {max_size}")
    try:
        fp = io.BytesIO(data)
        obj = cbor2.CBORDecoder(
            fp, tag_hook=refuse_tag, semantic_decoders=NO_TAGS, max_depth=MAX_DEPTH
        ).decode()
        if fp.tell() != len(data):
            raise CodecError("trailing bytes after CBOR item")
        return obj
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("CBOR nesting too deep") from None
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise CodecError(f"malformed CBOR: {type(exc).__name__}: {str(exc)[:200]}") from None


def dumps_delta(d: Delta) -> bytes:
    return dumps(encode_delta(d))


def loads_delta(data: bytes) -> Delta:
    return decode_delta(loads(data))
