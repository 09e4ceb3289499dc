"""gossip/authority.py, message by message (no network, no clock): each hint a peer can give is
bounded and none can delete, outrank or redirect; the origin applies nothing a peer sends."""

from __future__ import annotations

import random

from edgekv.crdt import META, Register, Replica
from edgekv.gossip import GossipNode
from edgekv.gossip import messages as m

MAX = (1 << 63) - 1
ORIGIN, LIAR = "origin:1", "liar:1"


def edge_with(keys: int = 5) -> GossipNode:
    r = Replica()
    r.apply(META, "s", Register(1, 0, b"", None))
    for i in range(keys):
        r.apply("s", f"k{i}", Register(i + 2, 0, b"v", None))
    r.covered.add(1, keys + 1)
    node = GossipNode("e:1", r, seeds=[ORIGIN], rng=random.Random(1), origins=[ORIGIN])
    node.start(0.0)
    return node


def test_a_ping_claiming_origin_role_and_a_huge_watermark_moves_nothing() -> None:
    node = edge_with()
    rows = [(LIAR, "origin", 0, "alive"), (ORIGIN, "edge", 10**9, "dead")]
    node.receive(LIAR, m.Ping(1, 10**15, MAX, 0, "origin", rows).to_wire(), 1.0)
    node.receive(
        LIAR, m.Ack(2, 10**15, MAX, 10**9, "origin", target=ORIGIN, members=[]).to_wire(), 1.1
    )
    peers = node.peers()
    assert node.origin_watermark == 0 and not node.authority.heard_origin  # lag: unchanged
    assert peers[LIAR].role == "edge" and peers[LIAR].watermark <= 6
    assert peers[ORIGIN].state == "alive" and peers[ORIGIN].incarnation == 0
    assert node.purge_horizon() == 0 and node.replica.purged == 0
    assert node.rejections()[LIAR] == {"origin_row": 1, "impossible_watermark": 1}
    node.receive(ORIGIN, m.Ping(3, 40, 3, 0, "origin", []).to_wire(), 1.2)  # the origin's own word
    assert node.origin_watermark == 40 and node.authority.origin_purged == 3


def test_a_purge_mark_and_lack_list_from_a_peer_delete_nothing() -> None:
    node = edge_with()
    node.receive(LIAR, m.AeRoot(7, 12345, 0, 0, MAX, True).to_wire(), 1.0)
    node.receive(LIAR, m.AeStates(7, "s", [], [], ["k3"], True).to_wire(), 1.1)
    node.tick(node.next_deadline)
    assert node.replica.state("s", "k3") is not None and node.replica.purged == 0
    # the same from the origin removes what its purge mark covers (and only that)
    node.receive(ORIGIN, m.AeRoot(8, 12345, 6, 6, 4, True).to_wire(), 1.2)
    node.receive(ORIGIN, m.AeStates(8, "s", [], [], ["k1", "k3"], True).to_wire(), 1.3)
    assert node.replica.state("s", "k1") is None  # reset 3 <= 4: deleted and purged there
    assert node.replica.state("s", "k3") is not None  # reset 5 > 4: not the origin's delete


def test_the_origin_applies_no_state_from_any_path() -> None:
    r = Replica()
    r.apply(META, "flags", Register(1, 0, b"", None))
    r.apply("flags", "k", Register(2, 0, b"v", None))
    r.covered.add(1, 2)
    origin = GossipNode(ORIGIN, r, role="origin", rng=random.Random(2))
    origin.start(0.0)
    root = r.root
    forged: list[m.Item] = [("flags", "k", Register(10**12, 0, b"evil", None))]
    drop: list[m.Item] = [(META, "flags", Register(10**12 + 1, 0, None, None))]
    origin.receive(LIAR, m.Push(forged + drop, [(3, 10**12)], 0).to_wire(), 1.0)
    origin.receive(LIAR, m.SyncData(0, forged, [(3, 9)], 0, True).to_wire(), 1.1)
    origin.receive(LIAR, m.AeRoot(5, 1, 0, 0, MAX, True).to_wire(), 1.2)
    origin.receive(
        LIAR, m.AeStates(5, "flags", [("x", forged[0][2])], [], ["k"], True).to_wire(), 1.3
    )
    assert r.root == root and r.watermark == 2 and r.has_store("flags")
    assert r.state("flags", "k") == Register(2, 0, b"v", None)
    assert origin.drain_changes() == []
    assert origin.rejections()[LIAR]["states_ignored"] == 4  # push (2), sync, AE
