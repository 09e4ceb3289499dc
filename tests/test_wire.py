"""Wire format and handshake: round trips, hostile input, authentication outcomes."""

from __future__ import annotations

import enum
import math
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekv.errors import LocalProtocolError, RemoteProtocolError, Unauthorized
from edgekv.gossip.wire import (
    MAX_DEPTH,
    PROTOCOL_VERSIONS,
    FrameDecoder,
    Handshake,
    Message,
    MsgType,
    encode_frame,
    type_name,
)


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_msgtype_values_are_fixed() -> None:
    assert {t.name: int(t) for t in MsgType} == {
        "HELLO": 1, "HELLO_ACK": 2, "AUTH": 3, "BYE": 4,
        "PUSH": 10, "IHAVE": 11, "GRAFT": 12, "PRUNE": 13,
        "SYNC_REQ": 20, "SYNC_DATA": 21, "SNAP_OFFER": 22, "SNAP_REQ": 23, "SNAP_DATA": 24,
        "AE_ROOT": 30, "AE_STORES": 31, "AE_NODES_REQ": 32, "AE_NODES": 33, "AE_LEAF_REQ": 34,
        "AE_LEAF": 35, "AE_STATES": 36, "AE_EQUAL": 37,
        "PING": 40, "ACK": 41, "PING_REQ": 42, "MEMBERS": 43,
        "REQUEST": 50, "RESPONSE": 51, "ERROR": 52,
    }  # fmt: skip
    assert len(MsgType) == 28
    assert type_name(10) == "PUSH" and type_name(999) == "999"


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
messages = st.builds(
    lambda t, body: {**body, "t": int(t)},
    st.sampled_from(list(MsgType)),
    st.dictionaries(st.text(max_size=8), plain, max_size=5),
)


@given(st.lists(messages, min_size=1, max_size=5), st.integers(min_value=1, max_value=50))
def test_round_trip_any_chunking(msgs: list[Message], chunk: int) -> None:
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(0, len(data), chunk):
        out.extend(decoder.feed(data[i : i + chunk]))
    assert out == msgs
    assert decoder.buffered == 0


def test_round_trip_values() -> None:
    msg: dict[str, Any] = {
        "t": 10,
        "b": b"\x00\xff",
        "s": "é",
        "n": None,
        "f": 1.5,
        "l": [1, [2, {"x": -3}]],
    }
    msg |= {"big": 2**64 - 1, "neg": -(2**64), "bk": {b"member": 1.0}, "nan": math.nan}
    (out,) = FrameDecoder().feed(encode_frame(msg))
    assert math.isnan(out.pop("nan")) and math.isnan(msg.pop("nan"))
    assert out == msg
    # tuples are sent as lists
    assert FrameDecoder().feed(encode_frame({"t": 10, "x": (1, 2)})) == [{"t": 10, "x": [1, 2]}]


def test_enums_are_sent_as_plain_values() -> None:
    class Kind(enum.StrEnum):
        BYTES = "bytes"

    msg = {"t": MsgType.PUSH, "kind": Kind.BYTES, "types": {Kind.BYTES: MsgType.PING}}
    (out,) = FrameDecoder().feed(encode_frame(msg))
    assert out == {"t": 10, "kind": "bytes", "types": {"bytes": 40}}
    assert type(out["t"]) is int and type(out["kind"]) is str


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        {"x": 1},
        {"t": "10"},
        {"t": 999},
        {"t": True},
        {"t": 10, 3: 4},
        {"t": 10, "v": {1: 2}},
        {"t": 10, "v": {1.5}},
        {"t": 10, "v": 2**64},
        {"t": 10, "v": object()},
        {"t": 10, "v": bytearray(b"x")},
    ],
)
def test_encode_rejects_invalid(bad: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(bad)


def test_encode_rejects_too_deep_and_too_big() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": 10, "v": deep})
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": 10, "v": b"x" * 100}, max_frame_size=50)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"t": 99}),
        cbor2.dumps({"x": 1}),
        cbor2.dumps({"t": 10}) + b"\x00",  # trailing bytes inside the frame
        cbor2.dumps({"t": 10, "v": cbor2.CBORTag(1, 0)}),  # datetime tag
        cbor2.dumps({"t": 10, "v": cbor2.CBORTag(2, b"\x01" * 9)}),  # bignum tag
        cbor2.dumps({"t": 10, "v": cbor2.CBORTag(258, [1])}),  # set tag
        cbor2.dumps({"t": 10, "v": cbor2.CBORTag(9999, 1)}),  # unknown tag
        bytes.fromhex("d81c81d81d00"),  # shared reference cycle
        b"\xa2at\x0aat\x0a",  # duplicate key
        b"\xa1\x01\x0a",  # int key at top level
        cbor2.dumps({"t": 10, "v": cbor2.undefined}),
        b"\xa2at\x0aav\xf0",  # simple value
        b"\x81" * 10_000 + b"\x00",  # deep nesting
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # byte string claiming 2**64 bytes
        b"\xa2at\x0aav\x62\xff\xfe",  # invalid UTF-8
    ],
)
def test_decode_rejects(body: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(frame_of(body))
    with pytest.raises(RemoteProtocolError):  # a failed decoder stays failed
        decoder.feed(encode_frame({"t": 40}))


def test_oversize_prefix_rejected_before_body() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 1001))
    assert decoder.buffered == 0
    ok = FrameDecoder(max_frame_size=1000)
    assert ok.feed(struct.pack(">I", 1000) + b"\x00" * 10) == []  # legal length: buffered


def test_next_frame_limit_can_change_between_frames() -> None:
    small, big = encode_frame({"t": 3, "mac": b""}), encode_frame({"t": 10, "v": b"x" * 5000})
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(small + big)
    assert decoder.next_frame() == ({"t": 3, "mac": b""}, len(small))
    decoder.max_frame_size = 10_000
    frame = decoder.next_frame()
    assert frame is not None and frame[1] == len(big)
    assert decoder.next_frame() is None


def _valid_stream() -> bytes:
    return b"".join(
        encode_frame(m)
        for m in ({"t": 10, "k": "a", "v": b"x"}, {"t": 40}, {"t": 36, "s": [[1, {"m": 2.0}]]})
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes_only_remote_error(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
    except RemoteProtocolError:
        pass


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(min_value=1, max_value=64))
def test_fuzz_mutated_frames_only_remote_error(data: st.DataObject, chunk: int) -> None:
    stream = bytearray(_valid_stream())
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(min_value=0, max_value=max(len(stream) - 1, 0)))
        if op == "flip" and stream:
            stream[pos] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "insert":
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del stream[pos : pos + data.draw(st.integers(min_value=1, max_value=8))]
        else:
            del stream[pos:]
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for i in range(0, len(stream), chunk):
            for msg in decoder.feed(bytes(stream[i : i + chunk])):
                assert type(msg) is dict and msg["t"] in set(MsgType)
    except RemoteProtocolError:
        pass


# --- handshake --------------------------------------------------------------------------------


def run_handshake(
    a_key: bytes | None,
    b_key: bytes | None,
    *,
    a_cluster: str = "c1",
    b_cluster: str = "c1",
) -> tuple[Handshake, Handshake]:
    a = Handshake(a_cluster, "node-a", "edge", "10.0.0.1:7000", a_key, True, b"A" * 16)
    b = Handshake(b_cluster, "node-b", "origin", "10.0.0.2:7000", b_key, False, b"B" * 16)
    (hello,) = a.start()
    (ack,) = b.receive(hello)
    (auth,) = a.receive(ack)
    assert b.receive(auth) == []
    return a, b


@pytest.mark.parametrize("key", [None, b"secret"])
def test_handshake_success(key: bytes | None) -> None:
    a, b = run_handshake(key, key)
    assert a.done and b.done
    assert (a.peer.node_id, a.peer.role, a.peer.address) == ("node-b", "origin", "10.0.0.2:7000")
    assert (b.peer.node_id, b.peer.role, b.peer.address) == ("node-a", "edge", "10.0.0.1:7000")
    assert a.peer.version == b.peer.version == PROTOCOL_VERSIONS[1]


@pytest.mark.parametrize(
    ("a_key", "b_key"),
    [(b"k1", b"k2"), (b"k1", None), (None, b"k1")],
)
def test_handshake_key_mismatch(a_key: bytes | None, b_key: bytes | None) -> None:
    with pytest.raises(Unauthorized):
        run_handshake(a_key, b_key)


def test_keyless_client_cannot_skip_auth_against_keyed_server() -> None:
    # a hostile keyless client ignores the server's MAC and sends an empty AUTH anyway
    b = Handshake("c1", "b", "edge", "x:1", b"key", False, b"B" * 16)
    b.receive(dict(HELLO))
    with pytest.raises(Unauthorized):
        b.receive({"t": 3, "mac": b""})
    with pytest.raises(LocalProtocolError):  # dead after a failure
        b.receive({"t": 3, "mac": b""})


def test_a_claim_is_confirmed_only_by_the_process_that_made_the_connection() -> None:
    """Rule 6: the origin opened connection 1 (transcript t); an edge dials the origin's own
    address asking about t: yes.  About a transcript it never made (a member claiming to be
    it on another connection): no."""
    origin_out, _ = run_handshake(b"k", b"k")
    made = {origin_out.transcript}
    assert origin_out.transcript == b"A" * 16 + b"B" * 16
    for asked, expected in ((origin_out.transcript, True), (b"X" * 32, False)):
        edge = Handshake("c1", "e", "edge", "x:1", b"k", True, b"E" * 16, confirm=asked)
        origin = Handshake(
            "c1", "o", "origin", "o:1", b"k", False, b"O" * 16, confirmer=made.__contains__
        )
        (hello,) = edge.start()
        (ack,) = origin.receive(hello)
        (auth,) = edge.receive(ack)
        origin.receive(auth)
        assert edge.confirmed is expected and origin.asked_to_confirm
    plain, _ = run_handshake(b"k", b"k")
    assert plain.confirmed is None  # nothing asked, nothing answered
    bad = Handshake("c1", "o", "origin", "o:1", None, False, b"O" * 16, confirmer=made.__contains__)
    with pytest.raises(RemoteProtocolError, match="confirm"):
        bad.receive({**HELLO, "confirm": "not bytes"})


def test_handshake_wrong_cluster() -> None:
    with pytest.raises(Unauthorized):
        run_handshake(b"k", b"k", a_cluster="c1", b_cluster="c2")


def test_handshake_no_common_version() -> None:
    b = Handshake("c1", "b", "edge", "x:1", None, False, b"B" * 16)
    hello = {
        "t": 1,
        "cluster": "c1",
        "node": "a",
        "role": "edge",
        "addr": "y:1",
        "nonce": b"A" * 16,
    }
    with pytest.raises(RemoteProtocolError, match="version"):
        b.receive({**hello, "vmin": 7, "vmax": 9})


def test_initiator_rejects_version_it_does_not_speak() -> None:
    a = Handshake("c1", "a", "edge", "x:1", None, True, b"A" * 16)
    a.start()
    ack = {"t": 2, "cluster": "c1", "node": "b", "role": "edge", "addr": "y:1", "nonce": b"B" * 16}
    with pytest.raises(RemoteProtocolError):
        a.receive({**ack, "version": 99, "mac": b""})


HELLO = {"t": 1, "cluster": "c1", "node": "a", "role": "edge", "addr": "y", "vmin": 1, "vmax": 1}
HELLO["nonce"] = b"A" * 16


@pytest.mark.parametrize(
    "msg",
    [
        {"t": 10},
        {"t": 1, "cluster": "c1"},
        {**HELLO, "node": 5},
        {**HELLO, "nonce": b"short"},
        {**HELLO, "vmin": "1"},
    ],
)
def test_handshake_malformed(msg: Message) -> None:
    b = Handshake("c1", "b", "edge", "x:1", None, False, b"B" * 16)
    with pytest.raises(RemoteProtocolError):
        b.receive(msg)


def test_handshake_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake("c", "n", "edge", "a:1", None, True, b"short")
    a, _ = run_handshake(None, None)
    with pytest.raises(LocalProtocolError):
        a.receive({"t": 3, "mac": b""})
    with pytest.raises(LocalProtocolError):
        Handshake("c", "n", "edge", "a:1", None, False, b"N" * 16).start()
    with pytest.raises(LocalProtocolError):
        _ = Handshake("c", "n", "edge", "a:1", None, True, b"N" * 16).peer


def test_handshake_frames_are_wire_valid() -> None:
    a = Handshake("c1", "a", "edge", "x:1", b"k", True, b"A" * 16)
    b = Handshake("c1", "b", "edge", "y:1", b"k", False, b"B" * 16)
    decoder = FrameDecoder()
    (hello,) = decoder.feed(encode_frame(a.start()[0]))
    (ack,) = decoder.feed(encode_frame(b.receive(hello)[0]))
    (auth,) = decoder.feed(encode_frame(a.receive(ack)[0]))
    assert b.receive(auth) == [] and b.done


@settings(max_examples=300)
@given(st.booleans(), st.lists(messages, min_size=1, max_size=3))
def test_fuzz_handshake_raises_only_protocol_errors(initiator: bool, msgs: list[Message]) -> None:
    hs = Handshake("c1", "n", "edge", "x:1", b"k", initiator, b"N" * 16)
    if initiator:
        hs.start()
    try:
        for msg in msgs:
            hs.receive(msg)
    except (RemoteProtocolError, Unauthorized):
        return
    except LocalProtocolError:
        assert hs.done  # only "receive after done" is the caller's error
        return
    assert not hs.done  # random messages never authenticate


@pytest.mark.parametrize("inner", [[1, "x"], {"k": 1}])
def test_depth_limit_is_exact_on_both_sides(inner: Any) -> None:
    # The top-level map is depth 0; a container at depth MAX_DEPTH is refused, even one of
    # plain scalars only (the decoder's all-C fast path must not skip the depth check).
    def nested(levels: int) -> Message:
        value: Any = inner
        for _ in range(levels - 1):
            value = [value]
        return {"t": 10, "v": value}

    ok = nested(MAX_DEPTH - 1)
    (out,) = FrameDecoder().feed(encode_frame(ok))
    assert out == ok
    # one connection's decoder is reused frame after frame: depth never accumulates
    assert FrameDecoder().feed(encode_frame(ok) * 50) == [ok] * 50
    deep = nested(MAX_DEPTH)
    with pytest.raises(LocalProtocolError):
        encode_frame(deep)
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(frame_of(cbor2.dumps(deep)))


@pytest.mark.parametrize(
    "value", [[1, 2.5, None, True, b"x"], {"a": 1, b"b": "s"}, [[0, "x"]] * 3, {"m": {"n": []}}]
)
def test_scalar_containers_decode_and_bad_members_are_found(value: Any) -> None:
    (out,) = FrameDecoder().feed(encode_frame({"t": 10, "v": value}))
    assert out == {"t": 10, "v": value}
    for bad in ([value, cbor2.undefined], {"x": value, "y": cbor2.CBORSimpleValue(99)}):
        with pytest.raises(RemoteProtocolError):
            FrameDecoder().feed(frame_of(cbor2.dumps({"t": 10, "v": bad})))
