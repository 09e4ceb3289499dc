"""Gossip messages: every builder round-trips through the wire and the strict parser; garbage and
malformed fields raise RemoteProtocolError only, and leave the node's state unchanged."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekv.crdt import META, Put, Register, Replica, ZSet, plan
from edgekv.errors import RemoteProtocolError
from edgekv.gossip import GossipNode
from edgekv.gossip import messages as m
from edgekv.gossip.wire import Message, MsgType, decode_body, encode_frame


def via_wire(msg: Message) -> Message:
    return decode_body(encode_frame(msg)[4:])


REG = Register(5, 1000, b"value", None)
ZS = ZSet(3, {b"a": (3, 1.5), b"b": (4, None)}, 4, 1000)

SAMPLES: list[Message] = [
    m.Push([("s", "k", REG), (META, "s", Register(1, 0, b"", None))], [(1, 5)], 2).to_wire(),
    m.Push(
        [("s", "k", REG), ("s", "j", REG)], [(6, 6)], 1, wm=5, again=[(1, 5)], again_n=1
    ).to_wire(),
    m.IHave(10, [(1, 10), (12, 15)]).to_wire(),
    m.Graft(3, 1).to_wire(),
    m.Prune().to_wire(),
    m.Bye().to_wire(),
    m.SyncReq(7, 3, 0).to_wire(),
    m.SyncData(7, [("s", "z", ZS)], [(4, 9)], 2, True).to_wire(),
    m.SyncData(7, [], [], 9, True, fallback=True).to_wire(),
    m.AeRoot(1, 12345, 10, 12, 0, False).to_wire(),
    m.AeRoot(1, 12345, 10, 12, 0, True).to_wire(),
    m.AeEqual(1, [(1, 10)]).to_wire(),
    m.AeStores(1, {"s": 99, META: 7}, [(1, 10)], 10, 10, 0).to_wire(),
    m.AeNodesReq(1, "s", 2, [0, 255]).to_wire(),
    m.AeNodes(1, "s", 1, [(3, list(range(16)))]).to_wire(),
    m.AeLeafReq(1, "s", [0, 65535]).to_wire(),
    m.AeLeaf(1, "s", [4], [("k", 42, 3, 5)]).to_wire(),
    m.AeStates(1, "s", [("k", REG)], ["w"], ["l"], True).to_wire(),
    m.Ping(1, 10, 0, 2, "edge", [("a:1", "origin", 0, "alive")]).to_wire(),
    m.Ack(1, 10, 0, 2, "origin", target="b:2", members=[]).to_wire(),
    m.Ping(1, 0, 0, 0, "edge", [], True).to_wire(),  # boot: it takes a snapshot
    m.Ack(1, 0, 0, 0, "edge", None, [], True).to_wire(),
    m.PingReq(4, "c:3").to_wire(),
    m.Members([("a:1", "edge", 3, "suspect"), ("b:2", "edge", 0, "dead")]).to_wire(),
    m.Members([], ask=["a:1", "b:2"]).to_wire(),
    m.Members([], want=True).to_wire(),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: MsgType(x["t"]).name)
def test_every_message_round_trips(msg: Message) -> None:
    parsed = m.parse(via_wire(msg))
    assert type(parsed).__name__.lower().replace("_", "") != ""
    assert m.parse(msg) == parsed  # the parser accepts exactly what the builder produced


def test_parsed_fields() -> None:
    p = m.parse(via_wire(SAMPLES[0]))
    assert isinstance(p, m.Push)
    assert p.covers == [(1, 5)] and p.hops == 2
    assert p.items[0][:2] == ("s", "k") and p.items[0][2] == REG
    n = m.parse(via_wire(m.AeNodes(1, "s", 1, [(3, list(range(16)))]).to_wire()))
    assert isinstance(n, m.AeNodes) and n.nodes == [(3, list(range(16)))]


OPTIONAL = {"members", "target", "force", "wm", "again", "ask", "want", "boot"}


def _mutations(msg: Message) -> list[tuple[str, Message]]:
    """Each field replaced by a wrong-typed or out-of-range value, or removed."""
    out = []
    for k in msg:
        if k == "t":
            continue
        for bad in (None, -1, "x", b"", [[1]], {"a": 1}, 1 << 63, 1.5, [None]):
            mm = copy.deepcopy(msg)
            mm[k] = bad
            out.append((k, mm))
        mm = copy.deepcopy(msg)
        del mm[k]
        out.append((k, mm))
    return out


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: MsgType(x["t"]).name)
def test_malformed_fields_raise_remote_protocol_error(msg: Message) -> None:
    for key, bad in _mutations(msg):
        if key in OPTIONAL and (key not in bad or bad[key] is None or bad[key] == []):
            continue  # absent or empty optional fields are valid
        if key in ("store", "target") and bad.get(key) == "x":
            continue  # "x" is a valid store name and address
        with pytest.raises(RemoteProtocolError):
            m.parse(bad)


@pytest.mark.parametrize(
    "bad",
    [
        m.IHave(10, [(5, 9), (3, 4)]).to_wire(),  # unsorted ranges
        m.IHave(10, [(0, 4)]).to_wire(),  # seq 0
        m.IHave(10, [(9, 4)]).to_wire(),  # lo > hi
        {**m.Push([], [], 0).to_wire(), "items": [["bad store!", "k", [0, 1, 0, b"v", None]]]},
        {**m.Push([], [], 0).to_wire(), "items": [["s", "", [0, 1, 0, b"v", None]]]},
        {**m.Push([], [], 0).to_wire(), "items": [["s", "k" * 600, [0, 1, 0, b"v", None]]]},
        {**m.Push([], [], 0).to_wire(), "items": [["s", "k", [0, 0, 0, b"v", None]]]},  # seq 0
        {
            **m.Push([], [], 0).to_wire(),
            "items": [["s", "k", [9, 1, 0, b"v", None]]],
        },  # unknown kind
        {**m.AeRoot(1, 1, 1, 1, 0, False).to_wire(), "root": b"short"},
        {**m.AeNodesReq(1, "s", 1, [0]).to_wire(), "indices": [16]},  # beyond level 1
        {**m.AeNodesReq(1, "s", 1, [0]).to_wire(), "level": 4},
        {**m.AeNodes(1, "s", 0, [(0, [0] * 16)]).to_wire(), "nodes": [[0, b"\0" * 255]]},
        {**m.AeLeafReq(1, "s", [0]).to_wire(), "leaves": [65536]},
        m.Push(
            [("s", "k", REG)], [(6, 6)], 0, wm=5, again=[(1, 5)], again_n=2
        ).to_wire(),  # n > items
        {**m.Push([], [], 0).to_wire(), "wm": -1},
        m.Members([("a", "king", 0, "alive")]).to_wire(),
        m.Members([("a", "edge", 0, "zombie")]).to_wire(),
        {**m.Members([]).to_wire(), "ask": ["a", 7]},
        {**m.Members([]).to_wire(), "ask": [""]},
        {**m.Members([]).to_wire(), "ask": ["a"] * (m.MAX_ASK + 1)},
        {**m.Ping(1, 0, 0, 0, "edge").to_wire(), "boot": "yes"},
        {**m.Ack(1, 0, 0, 0, "edge").to_wire(), "boot": 1},
        {"t": int(MsgType.REQUEST), "id": 1},  # not a gossip type
        {"t": 999},
        ["not", "a", "map"],
    ],
)
def test_specific_violations(bad: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        m.parse(bad)


def _node_with_data() -> GossipNode:
    r = Replica()
    r.apply(META, "s", Register(1, 0, b"", None))
    for i in range(20):
        d = plan(Put(f"k{i}", b"v"), None, i + 2, 0)
        assert d is not None
        r.apply("s", f"k{i}", d)
    r.covered.add(1, 21)
    node = GossipNode("me", r, seeds=["p"], rng=random.Random(1))
    node.start(0.0)
    return node


def _snapshot(node: GossipNode) -> tuple[Any, ...]:
    d = node.dissemination
    return (
        node.replica.root,
        list(node.replica.covered),
        sorted(node.members.peers),
        sorted(d.eager),
        sorted(d.lazy),
        len(node.drain_changes()),
        node.antientropy.session,
    )


@settings(max_examples=300)
@given(
    t=st.sampled_from([int(x) for x in MsgType]),
    body=st.dictionaries(
        st.sampled_from(
            [
                "items",
                "covers",
                "hops",
                "wm",
                "purged",
                "rid",
                "sid",
                "root",
                "store",
                "level",
                "indices",
                "nodes",
                "leaves",
                "entries",
                "states",
                "want",
                "lack",
                "reply",
                "more",
                "seq",
                "inc",
                "role",
                "members",
                "target",
                "last",
                "fallback",
                "roots",
                "high",
                "force",
            ]
        ),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-5, 70000)
            | st.text(max_size=5)
            | st.binary(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=10,
        ),
        max_size=8,
    ),
)
def test_garbage_raises_only_remote_protocol_error_and_changes_nothing(
    t: int, body: dict[str, Any]
) -> None:
    check_receive({**body, "t": t})


def check_receive(msg: Message) -> None:
    """The node raises only RemoteProtocolError; a message the parser refuses changes nothing
    (a well-formed one may still conflict with local state: a typed error too)."""
    node = _node_with_data()
    before = _snapshot(node)
    try:
        m.parse(msg)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            node.receive("p", msg, 1.0)
        assert _snapshot(node) == before
        return
    try:
        node.receive("p", msg, 1.0)
    except RemoteProtocolError:
        pass


def test_push_with_one_bad_item_applies_nothing() -> None:
    node = _node_with_data()
    good = ["s", "new", [0, 50, 0, b"x", None]]
    bad = ["s", "k", [0, 51, 0, "not bytes", None]]
    before = _snapshot(node)
    with pytest.raises(RemoteProtocolError):
        node.receive("p", {**m.Push([], [(50, 51)], 0).to_wire(), "items": [good, bad]}, 1.0)
    assert _snapshot(node) == before
    assert node.replica.state("s", "new") is None


@pytest.mark.parametrize("t", [[], {}, [1], b"\x01", 1.5, None, True, -1, 1 << 70])
def test_a_type_field_of_any_kind_is_a_protocol_error(t: object) -> None:
    """The type field itself may be anything a CBOR map holds (the long fuzz found a list
    there raising TypeError from the snapshot dispatch)."""
    check_receive({"t": t})
