"""Fuzzing the protocol with *mutated valid* messages (issue #12).

Each example takes a valid frame or message (every gossip type, the handshake) and changes one
or more places deep inside it: a value replaced by another wire value or a boundary number, a
map key dropped or added, a list cut, grown or emptied.  Whatever comes out, the decoder, the
handshake and `GossipNode.receive` raise only typed errors (`RemoteProtocolError`, and
`Unauthorized` in the handshake), and a message the parser rejects changes nothing in the node.
The default suite runs a few hundred examples; `-m slow` runs many more.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekv.errors import RemoteProtocolError, Unauthorized
from edgekv.gossip import messages as m
from edgekv.gossip.wire import FrameDecoder, Handshake, Message, MsgType, encode_frame
from test_gossip_messages import SAMPLES, check_receive

BOUNDARY_INTS = [0, 1, -1, 7, 8, 255, 256, 65535, 65536, 1 << 26, 1 << 27, 1 << 31, 1 << 63]
BOUNDARY_INTS += [(1 << 63) - 1, (1 << 64) - 1, -(1 << 63)]

wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from(BOUNDARY_INTS)
    | st.integers(-(1 << 64), (1 << 64) - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=32),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a message tree (maps by key, lists by index), the root excluded."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: Message) -> Message:
    """`base` with one to three places changed (the type "t" kept, so handlers are reached)."""
    msg = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(msg) if p != ("t",)]
        if not paths:
            msg[draw(st.text(max_size=6))] = draw(wire_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = msg
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "boundary", "drop", "grow", "cut", "add"]))
        target = parent[last]
        if action == "replace":
            parent[last] = draw(wire_values)
        elif action == "boundary":
            parent[last] = draw(st.sampled_from(BOUNDARY_INTS))
        elif action == "drop":
            del parent[last]
        elif action == "grow" and isinstance(target, list) and target:
            parent[last] = target + [copy.deepcopy(target[-1])] * draw(st.integers(1, 3))
        elif action == "cut" and isinstance(target, list | bytes | str):
            parent[last] = target[: draw(st.integers(0, max(0, len(target) - 1)))]
        elif action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=4))] = draw(wire_values)
        else:
            parent[last] = draw(wire_values)
    return msg


def _examples(default: int) -> int:
    return int(os.environ.get("EDGEKV_FUZZ_EXAMPLES", default))


def fuzz_gossip(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(SAMPLES))
    check_receive(data.draw(mutated(base)))


def fuzz_frames(data: st.DataObject) -> None:
    """Byte-level mutations of valid frames: flips, cuts, insertions; any chunking."""
    frames = bytearray(b"".join(encode_frame(s) for s in data.draw(st.permutations(SAMPLES))[:3]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frames) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "byte"]))
        if how == "flip":
            frames[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del frames[pos : pos + data.draw(st.integers(1, 16))]
        elif how == "insert":
            frames[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            frames[pos] = data.draw(st.sampled_from([0x00, 0x1B, 0x5F, 0x9F, 0xBF, 0xC0, 0xFF]))
        if not frames:
            return
    decoder = FrameDecoder(1 << 20)
    chunk = data.draw(st.integers(1, 64))
    try:
        for i in range(0, len(frames), chunk):
            for msg in decoder.feed(bytes(frames[i : i + chunk])):
                if msg["t"] in m.GOSSIP_TYPES:
                    check_receive(msg)
    except RemoteProtocolError:
        pass


def _hello() -> Message:
    return Handshake("c", "init", "edge", "a:1", b"key", True, b"n" * 16).start()[0]


def fuzz_handshake(data: st.DataObject) -> None:
    """A responder fed a mutated HELLO, then a mutated AUTH, fails only with typed errors."""
    key = data.draw(st.sampled_from([None, b"key"]))
    responder = Handshake("c", "resp", "origin", "b:2", key, False, b"r" * 16)
    initiator = Handshake("c", "init", "edge", "a:1", key, True, b"n" * 16)
    hello = initiator.start()[0]
    try:
        replies = responder.receive(data.draw(mutated(hello)))
        auth = initiator.receive(replies[0])[0]
        responder.receive(data.draw(st.sampled_from([auth, data.draw(mutated(auth))])))
    except (RemoteProtocolError, Unauthorized):
        return


@settings(max_examples=_examples(400))
@given(st.data())
def test_mutated_gossip_messages(data: st.DataObject) -> None:
    fuzz_gossip(data)


@settings(max_examples=_examples(150))
@given(st.data())
def test_mutated_frames_decode_or_raise_remote_error(data: st.DataObject) -> None:
    fuzz_frames(data)


@settings(max_examples=_examples(300))
@given(st.data())
def test_mutated_handshake(data: st.DataObject) -> None:
    fuzz_handshake(data)


def test_mutation_reaches_handlers() -> None:
    """Every gossip type is among the bases, so every handler is fuzzed."""
    assert {int(MsgType(s["t"])) for s in SAMPLES} >= set(m.GOSSIP_TYPES)
    assert _paths(_hello())


@pytest.mark.slow
@settings(max_examples=10_000)
@given(st.data())
def test_long_fuzz_gossip(data: st.DataObject) -> None:
    fuzz_gossip(data)


@pytest.mark.slow
@settings(max_examples=5_000)
@given(st.data())
def test_long_fuzz_frames_and_handshake(data: st.DataObject) -> None:
    fuzz_frames(data)
    fuzz_handshake(data)
