"""Sizes a peer can name are bounded before allocation (issue #12), sans-IO.

A Bloom delta names its filter's size: the deltas of one message may name at most
`MAX_MESSAGE_ALLOC` bytes of filters and at most `MAX_MESSAGE_STORES` stores, and senders cut
their PUSH chunks so that what they send is always accepted.  The member table never passes
`max_members`, whichever way rows arrive.  `NetLimits` reject nonsense and map to CLI flags.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from typing import Any

import pytest

from edgekv.crdt import META, BloomDelta, Register, Replica
from edgekv.crdt.bloom import MAX_BLOOM_BITS, MAX_BLOOM_HASHES
from edgekv.errors import InvalidInput, RemoteProtocolError
from edgekv.gossip import GossipNode
from edgekv.gossip import messages as m
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.wire import MsgType, decode_body, encode_frame
from edgekv.node.limits import DEFAULT_NET_LIMITS, NetLimits
from test_gossip_messages import _node_with_data, _snapshot


def big_bloom(seq: int) -> BloomDelta:
    return BloomDelta(seq, MAX_BLOOM_BITS, 3, frozenset({1, 2, 3}), seq, 0)


def test_a_small_push_naming_huge_blooms_is_rejected_before_anything_is_allocated() -> None:
    items: list[m.Item] = [("s", f"b{i}", big_bloom(100 + i)) for i in range(5)]  # 5 x 8 MiB named
    frame = encode_frame(m.Push(items, [(100, 104)], 0).to_wire())
    assert len(frame) < 1024
    msg = decode_body(frame[4:])
    node = _node_with_data()
    before = _snapshot(node)
    with pytest.raises(RemoteProtocolError, match="Bloom filters"):
        node.receive("p", msg, 1.0)
    assert _snapshot(node) == before
    assert node.replica.state("s", "b0") is None


def test_bloom_m_beyond_the_filter_limit_is_rejected() -> None:
    delta = BloomDelta(100, MAX_BLOOM_BITS * 2, 3, frozenset({1}), 100, 0)
    with pytest.raises(RemoteProtocolError, match="bloom m"):
        m.parse(
            decode_body(encode_frame(m.Push([("s", "b", delta)], [(100, 100)], 0).to_wire())[4:])
        )


def test_every_count_and_size_a_message_names_is_bounded() -> None:
    """Bloom k, items per message, member rows per MEMBERS, key and address lengths: one past
    each limit is a typed error from the node and changes nothing; at the limit it parses."""

    def push(item: tuple[str, str, Any]) -> dict[str, Any]:
        return m.Push([item], [(100, 100)], 0).to_wire()

    bloom = push(("s", "b", BloomDelta(100, 64, 3, frozenset({1}), 100, 0)))
    bloom["items"][0][2][5] = MAX_BLOOM_HASHES + 1
    many = push(("s", "k", Register(100, 0, b"v", None)))
    many["items"] = many["items"] * (m.MAX_ITEMS + 1)
    n = m.MAX_MEMBER_ROWS + 1
    rows = [(f"10.0.{i // 250}.{i % 250}:1", "edge", 0, "alive") for i in range(n)]
    cases = {
        "bloom k": bloom,
        f"more than {m.MAX_ITEMS}": many,
        f"more than {m.MAX_MEMBER_ROWS}": m.Members(rows).to_wire(),
        "exceeds": push(("s", "k" * (m.MAX_KEY_BYTES + 1), Register(100, 0, b"", None))),
        "address": m.Members([("a" * (m.MAX_ADDRESS + 1), "edge", 0, "alive")]).to_wire(),
    }
    node = _node_with_data()
    before = _snapshot(node)
    for what, msg in cases.items():
        with pytest.raises(RemoteProtocolError, match=what):
            node.receive("p", msg, 1.0)
        assert _snapshot(node) == before, what
    m.parse(m.Members(rows[:-1]).to_wire())
    m.parse(push(("s", "k" * m.MAX_KEY_BYTES, Register(100, 0, b"", None))))


def test_too_many_stores_in_one_message_are_rejected() -> None:
    n = m.MAX_MESSAGE_STORES + 1
    items: list[m.Item] = [(f"s{i}", "k", Register(10 + i, 0, b"", None)) for i in range(n)]
    with pytest.raises(RemoteProtocolError, match="stores in one message"):
        m.parse(m.Push(items, [(10, 10 + n - 1)], 0).to_wire())
    m.parse(m.Push(items[:-1], [(10, 10 + n - 2)], 0).to_wire())


def _pushes_for(items: Sequence[m.Item]) -> list[m.Push]:
    """Publish `items` at an origin and return the PUSHes it sends, parsed as a receiver would."""
    replica = Replica()
    replica.apply(META, "s", Register(1, 0, b"", None))
    node = GossipNode("o", replica, role="origin", seeds=["e"], rng=random.Random(1))
    node.start(0.0)
    node.receive("e", m.Ping(1, 0, 0, 0, "edge", []).to_wire(), 0.0)
    for store, key, delta in items:
        replica.apply(store, key, delta)
    seqs = [d.seq for _, _, d in items]
    sends = [*node.publish(list(items), [(min(seqs), max(seqs))], 0.1), *node.tick(10.0)]
    frames = [s.message for s in sends if s.message["t"] == MsgType.PUSH]
    pushes: list[m.Push] = []
    for f in frames:
        parsed = m.parse(decode_body(encode_frame(f)[4:]))
        assert isinstance(parsed, m.Push)
        pushes.append(parsed)
    return pushes


def test_senders_cut_pushes_so_that_receivers_accept_them() -> None:
    blooms = [("s", f"b{i}", big_bloom(10 + i)) for i in range(6)]
    pushes = _pushes_for(blooms)
    assert len(pushes) >= 2
    assert sorted(k for p in pushes for _, k, _ in p.items) == sorted(k for _, k, _ in blooms)

    n = m.MAX_MESSAGE_STORES + 10
    many = [(f"s{i}", "k", Register(10 + i, 0, b"", None)) for i in range(n)]
    pushes = _pushes_for(many)
    assert len(pushes) == 2 and sum(len(p.items) for p in pushes) == n


def test_member_table_never_passes_max_members() -> None:
    config = GossipConfig(max_members=50)
    node = GossipNode("me", Replica(), seeds=["p"], config=config, rng=random.Random(1))
    node.start(0.0)
    fakes = [(f"10.0.{i // 250}.{i % 250}:1", "edge", 0, "alive") for i in range(10_000)]
    node.receive("p", m.Members(fakes).to_wire(), 1.0)
    assert len(node.members.peers) <= 50
    assert node.counters["members_refused"] > 0
    # a connection claiming yet another address gets no member table sent to it
    sends = node.receive("new-claimed:1", m.Ping(1, 0, 0, 0, "edge", fakes[:10]).to_wire(), 2.0)
    assert len(node.members.peers) <= 50
    assert not any(s.peer == "new-claimed:1" and s.message["t"] == MsgType.MEMBERS for s in sends)


def test_rows_from_a_peer_that_does_not_vouch_make_nobody_dial_the_fakes() -> None:
    """Membership rule 8: a MEMBERS flood from a non-configured peer adds no member and no
    message ever goes to a fake address; a candidate a configured peer knows joins through
    that peer's answer to a batched ask."""
    node = GossipNode("me", Replica(), seeds=["seed"], rng=random.Random(2))
    sends = node.start(0.0)
    node.receive("seed", m.Members([("seed", "edge", 0, "alive")]).to_wire(), 0.1)
    node.receive("evil", m.Ping(1, 0, 0, 0, "edge", []).to_wire(), 0.2)  # a direct peer: it joins
    fakes = [(f"10.9.{i // 250}.{i % 250}:1", "edge", 0, "alive") for i in range(9_999)]
    node.receive(
        "evil", m.Members([*fakes[:500], ("real", "edge", 0, "alive"), *fakes[500:]]).to_wire(), 0.3
    )
    assert set(node.peers()) == {"seed", "evil"}
    fake_set = {row[0] for row in fakes}
    now, asks = 0.3, []
    for _ in range(60):
        now += 0.5
        joined = "real" in node.peers()
        sends = node.tick(now)
        assert not [s for s in sends if s.peer in fake_set or (s.peer == "real" and not joined)]
        for s in sends:  # the seed answers pings, and asks with its rows: only "real" is its member
            if s.message["t"] == MsgType.PING and s.peer == "seed":
                node.receive("seed", m.Ack(s.message["seq"], 0, 0, 0, "edge").to_wire(), now)
            if s.message["t"] == MsgType.MEMBERS and s.message.get("ask"):
                asks.append(s)
                if "real" in s.message["ask"]:
                    reply = m.Members([("real", "edge", 0, "alive")]).to_wire()
                    node.receive("seed", reply, now)
        assert len(node.peers()) <= 3
    assert "real" in node.peers() and node.counters["members_vouched"] == 1
    assert {s.peer for s in asks} == {"seed"}  # only a configured peer is asked
    assert all(len(s.message["ask"]) <= m.MAX_ASK for s in asks)
    assert node.counters["members_unvouched"] > 0
    # a relay asked about an address outside its table never pings it, and an ask about it
    # is answered with nothing; an ask about a member gets that member's row
    assert node.receive("seed", m.PingReq(7, "10.9.0.1:1").to_wire(), now) == []
    assert node.receive("seed", m.Members([], ask=["10.9.0.1:1"]).to_wire(), now) == []
    (answer,) = node.receive("seed", m.Members([], ask=["10.9.0.1:1", "real"]).to_wire(), now)
    assert answer.peer == "seed" and [r[0] for r in answer.message["members"]] == ["real"]
    assert node.may_dial("real") and node.may_dial("seed") and not node.may_dial("10.9.0.1:1")


def test_net_limits_validate_and_come_from_flags() -> None:
    with pytest.raises(InvalidInput):
        NetLimits(max_connections=0)
    with pytest.raises(InvalidInput):
        NetLimits(idle_timeout=float("inf"))
    parser = argparse.ArgumentParser()
    NetLimits.add_arguments(parser)
    args = parser.parse_args(["--max-per-address", "7", "--idle-timeout", "2.5"])
    limits = NetLimits.from_args(args)
    assert limits.max_per_address == 7 and limits.idle_timeout == 2.5
    assert limits.max_connections == DEFAULT_NET_LIMITS.max_connections
    assert 1 <= NetLimits(max_connections=10**9).connection_cap() < 10**9
