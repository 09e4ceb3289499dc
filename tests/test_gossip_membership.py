"""SWIM membership on the simulator and by hand: join through a seed, suspect then dead on
silence, refutation by incarnation, revival on direct contact, no pushes to dead peers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edgekv.crdt import Put, Replica
from edgekv.gossip import GossipConfig, GossipNode
from edgekv.gossip import messages as m
from edgekv.gossip.membership import CONFIGURED_PING_SECONDS
from edgekv.gossip.wire import MsgType
from gossip_sim import Sim


def test_everyone_learns_everyone_through_one_seed() -> None:
    sim = Sim(20, seed=21)
    sim.start()
    sim.run_until(GossipConfig().members_interval + 1.0)
    for addr, node in sim.nodes.items():
        assert len(node.peers()) == 20, addr
        assert all(p.state == "alive" for p in node.peers().values())
    assert sim.nodes["edge-3"].peers()["origin"].role == "origin"


def test_crashed_node_is_suspected_then_declared_dead_then_revived() -> None:
    cfg = GossipConfig()
    sim = Sim(10, seed=22, config=cfg)
    sim.start()
    sim.run_until(3.0)
    sim.crash("edge-6")
    sim.run_until(3.0 + 10 * cfg.ping_interval)
    states = {a: n.peers()["edge-6"].state for a, n in sim.nodes.items() if a != "edge-6"}
    assert set(states.values()) == {"dead"}, states
    assert sum(n.counters["suspicions"] for n in sim.nodes.values()) >= 1
    sim.restart("edge-6")
    sim.run_until(3.0 + 10 * cfg.ping_interval + 3.0)
    states = {a: n.peers()["edge-6"].state for a, n in sim.nodes.items() if a != "edge-6"}
    assert set(states.values()) == {"alive"}, states


def test_healed_partition_rejoins() -> None:
    sim = Sim(8, seed=23)
    sim.start()
    sim.run_until(2.0)
    left = ["origin", "edge-0", "edge-1", "edge-2"]
    sim.partition(left, [e for e in sim.edges if e not in left])
    sim.run_until(14.0)
    assert sim.nodes["edge-0"].peers()["edge-5"].state == "dead"
    sim.heal()
    sim.run_until(24.0)
    for node in sim.nodes.values():
        assert all(p.state == "alive" for p in node.peers().values())


def test_edges_find_their_origin_within_seconds_of_a_heal_after_hours_apart() -> None:
    # a dead peer is re-pinged ever more rarely (chance 30 s / time dead); the origin may not
    # be, or an edge cut off for hours would wait hours more after the heal; nor forgotten
    sim = Sim(4, seed=24)
    sim.start()
    sim.run_until(2.0)
    sim.partition(["origin"], list(sim.edges))
    apart = GossipConfig().dead_forget + 100.0
    sim.run_until(apart)
    assert {n.peers()["origin"].state for a, n in sim.nodes.items() if a != "origin"} == {"dead"}
    sim.heal()
    sim.run_until(apart + CONFIGURED_PING_SECONDS + 3.0)
    for addr, node in sim.nodes.items():
        assert len(node.peers()) == 4, addr
        assert all(p.state == "alive" for p in node.peers().values()), addr


def test_suspicion_about_self_is_refuted_with_a_higher_incarnation() -> None:
    node = GossipNode("me", Replica(), seeds=["p"], rng=random.Random(1))
    node.start(0.0)
    assert node.members.incarnation == 0
    node.receive("p", m.Members([("me", "edge", 0, "suspect")]).to_wire(), 1.0)
    assert node.members.incarnation == 1
    node.receive("p", m.Members([("me", "edge", 0, "dead")]).to_wire(), 1.1)  # stale: no new bump
    assert node.members.incarnation == 1
    out = node.tick(node.next_deadline)
    pings = [s for s in out if s.message["t"] == 40]
    rows = [r for s in pings for r in s.message.get("members", [])]
    assert ["me", "edge", 1, "alive"] in rows or not pings


def test_precedence_of_member_rows() -> None:
    node = GossipNode("me", Replica(), seeds=["a"], rng=random.Random(1))  # "a" vouches
    node.start(0.0)
    node.receive("a", m.Members([("x", "edge", 2, "alive")]).to_wire(), 0.0)
    node.receive(
        "a", m.Members([("x", "edge", 1, "dead")]).to_wire(), 0.0
    )  # older incarnation: ignored
    assert node.peers()["x"].state == "alive"
    node.receive(
        "a", m.Members([("x", "edge", 2, "suspect")]).to_wire(), 0.0
    )  # same inc: suspect wins
    assert node.peers()["x"].state == "suspect"
    node.receive("a", m.Members([("x", "edge", 3, "alive")]).to_wire(), 0.0)  # refuted
    assert node.peers()["x"].state == "alive"


def test_dead_peers_get_no_pushes_and_a_message_revives_them() -> None:
    sim = Sim(6, seed=24)
    sim.start()
    sim.run_until(2.0)
    sim.create_store("s")
    sim.run_until(3.0)
    origin = sim.origin
    victim = sorted(origin.dissemination.eager)[0]
    origin.members.peers[victim].state = "dead"
    pushed: list[str] = []
    send = sim._send

    def spy(src: str, sends: list) -> None:  # type: ignore[type-arg]
        pushed.extend(s.peer for s in sends if s.message["t"] == 10)
        send(src, sends)

    sim._send = spy  # type: ignore[method-assign]
    sim.write("s", Put("k", b"v"))  # pushed at once, to the live peers
    spy("origin", origin.tick(sim.now + 1.0))
    assert len(pushed) == len(origin.dissemination.eager) - 1 and victim not in pushed
    origin.receive(victim, m.Ping(99, 0, 0, 0, "edge", []).to_wire(), sim.now + 1.0)
    assert origin.peers()[victim].state == "alive"
    assert origin.counters["peers_revived"] == 1


def test_indirect_probe_saves_a_peer_behind_a_lossy_direct_link() -> None:
    node = GossipNode("me", Replica(), seeds=["t", "h1", "h2"], rng=random.Random(3))
    node.start(0.0)
    now = 0.0
    target = None
    while target is None:
        now = node.next_deadline
        for s in node.tick(now):
            if s.message["t"] == 40 and s.message["seq"] > 0:
                target, seq = s.peer, s.message["seq"]
    now += node.config.ping_timeout
    reqs = [s for s in node.tick(now) if s.message["t"] == 42]
    assert reqs and all(s.message["target"] == target for s in reqs)
    helper = reqs[0].peer
    node.receive(
        helper, m.Ack(seq, 0, 0, 0, "edge", target=target, members=[]).to_wire(), now + 0.1
    )
    node.tick(now + 5.0)
    assert node.peers()[target].state == "alive"
    assert node.counters["suspicions"] == 0


def test_graceful_leave_marks_the_node_dead_at_once() -> None:
    sim = Sim(4, seed=25)
    sim.start()
    sim.run_until(2.0)
    leaver = sim.nodes["edge-1"]
    byes = leaver.leave(sim.now)
    assert {s.peer for s in byes} == set(leaver.members.live()) and byes
    for s in byes:
        assert sim.nodes[s.peer].receive("edge-1", s.message, sim.now) == []
        assert sim.nodes[s.peer].peers()["edge-1"].state == "dead"


def test_full_tables_thin_out_with_cluster_size() -> None:
    from edgekv.gossip.peer import members_scale

    assert [members_scale(n) for n in (1, 32, 33, 64, 65, 1000)] == [1, 1, 2, 2, 3, 6]
    node = GossipNode("me", Replica(), seeds=[f"p{i}" for i in range(99)], rng=random.Random(4))
    node.start(0.0)
    times: list[float] = []
    now = 0.0
    while len(times) < 3:
        now = node.next_deadline
        if any(s.message["t"] == MsgType.MEMBERS for s in node.tick(now)):
            times.append(now)
    # 100 members: 3 intervals between full tables (not 1)
    assert times[2] - times[1] == pytest.approx(3 * node.config.members_interval)


def test_peer_copies_carry_the_measured_round_trips() -> None:
    """`GossipNode.peers()` (what /status shows) reports each peer's measured round trips."""
    sim = Sim(3, seed=2, latency=0.02)
    sim.start()
    sim.run_until(6.0)  # every peer probed at least once by the origin
    measured = [p for p in sim.origin.peers().values() if p.rtt_min > 0]
    assert measured and all(0.03 < p.rtt_min <= p.rtt + 1e-9 for p in measured)


def test_whole_tables_go_to_those_who_take_them() -> None:
    """Rule 1: an origin sends its table to a peer it sees for the first time; an edge does not
    (there its rows would only be candidates), but a node asks each configured edge for its
    table when it first hears from it, and such an ask is answered once per members_interval."""
    origin = GossipNode("o", Replica(), role="origin", rng=random.Random(1), origins=["o"])
    origin.start(0.0)
    sends = origin.receive("new", m.Ping(1, 0, 0, 0, "edge", []).to_wire(), 0.1)
    assert [s.peer for s in sends if s.message["t"] == MsgType.MEMBERS] == ["new"]

    edge = GossipNode("e", Replica(), seeds=["o", "s1"], rng=random.Random(2), origins=["o"])
    edge.start(0.0)
    sends = edge.receive("stranger", m.Ping(1, 0, 0, 0, "edge", []).to_wire(), 0.1)
    assert not [s for s in sends if s.message["t"] == MsgType.MEMBERS]
    assert not [
        s
        for s in edge.receive("o", m.Ack(0, 0, 0, 0, "origin").to_wire(), 0.2)
        if s.message["t"] == MsgType.MEMBERS
    ]  # an origin sends it unasked
    for now in (0.3, 0.4):  # asked once, at the next probe, not on every message
        edge.receive("s1", m.Ack(0, 0, 0, 0, "edge").to_wire(), now)
    wants = [s for s in edge.tick(edge.members.next_ping) if s.message["t"] == MsgType.MEMBERS]
    assert [(s.peer, s.message.get("want")) for s in wants] == [("s1", True)]
    assert not [s for s in edge.tick(edge.members.next_ping) if s.message.get("want")]

    want = m.Members([], want=True).to_wire()
    (table,) = edge.receive("s1", want, 1.0)
    assert {r[0] for r in table.message["members"]} == {"e", "o", "s1", "stranger"}
    assert edge.receive("s1", want, 2.0) == []  # not again within members_interval
    assert len(edge.receive("s1", want, 1.0 + edge.config.members_interval)) == 1

    # a node that got an origin's whole table first does not ask its seeds for theirs
    late = GossipNode("f", Replica(), seeds=["o", "s1"], rng=random.Random(3), origins=["o"])
    late.start(0.0)
    whole = m.Members([("o", "origin", 0, "alive"), ("s1", "edge", 0, "alive")]).to_wire()
    late.receive("o", whole, 0.1)
    late.receive("s1", m.Ack(0, 0, 0, 0, "edge").to_wire(), 0.2)
    assert not [s for s in late.tick(late.members.next_ping) if s.message.get("want")]


def test_the_first_member_is_probed_as_soon_as_it_joins() -> None:
    """Its round trip sizes the origin's push windows (dissemination rule 1): a node that
    waited for its ping round would batch the first writes for the whole `push_window`."""
    node = GossipNode("o", Replica(), role="origin", rng=random.Random(5))
    node.start(0.0)
    assert node.members.next_ping > 0.5  # this seed's first round would come late
    hello = m.Members([], want=True).to_wire()
    node.receive("e1", hello, 0.1)
    assert node.next_deadline <= 0.1
    pings = [s for s in node.tick(0.1) if s.message["t"] == MsgType.PING]
    assert [s.peer for s in pings] == ["e1"]
    ack = m.Ack(pings[0].message["seq"], 0, 0, 0, "edge").to_wire()
    node.receive("e1", ack, 0.103)
    assert node.members.link_rtt("e2") == pytest.approx(0.003)  # every peer's first guess
    node.receive("e2", hello, 0.2)  # later members wait for their round
    assert node.next_deadline > 0.5


def test_a_claimed_purge_mark_makes_an_edge_ask_the_origin_not_purge() -> None:
    # an edge that missed the origin's purge notice hears a peer claim a higher mark: it asks
    # the origin itself (one PING per ping interval, whatever a liar repeats) and purges only
    # up to what the origin answers
    cfg = GossipConfig()
    node = GossipNode("me", Replica(), seeds=["origin", "p"], rng=random.Random(1), config=cfg)
    node.authority.origins = frozenset({"origin"})
    node.start(0.0)
    node.receive("origin", m.Ping(1, 0, 0, 0, "origin").to_wire(), 0.1)
    for i in range(5):  # a peer (lying or better informed) claims the origin purged up to 100
        node.receive("p", m.Ping(10 + i, 0, 100, 0, "edge").to_wire(), 0.2 + i * 0.01)
    asks = [s for s in node.tick(0.5) if s.peer == "origin" and s.message["t"] == MsgType.PING]
    assert len(asks) >= 1 and node.counters["purge_asks"] == 1
    node.receive("p", m.Ping(20, 0, 100, 0, "edge").to_wire(), 0.6)
    node.tick(0.7)  # within the same ping interval: not asked again
    assert node.counters["purge_asks"] == 1
    assert node.replica.purged == 0 and node.authority.origin_purged == 0  # a claim purges nothing
    node.tick(0.5 + cfg.ping_interval)
    assert node.counters["purge_asks"] == 2  # the claim was repeated: asked again, at the pace


def test_only_a_peer_itself_says_it_takes_a_snapshot() -> None:
    """snapshot.py rule 3: `boot` in a peer's own PING or ACK batches the pushes to it; a
    relayed ACK (a third party's word about another node) does not, and the peer's next
    PING or ACK without it clears it."""
    node = GossipNode("o", Replica(), role="origin", rng=random.Random(6))
    node.start(0.0)
    hello = m.Members([], want=True).to_wire()
    for peer in ("e1", "e2", "e3"):
        node.receive(peer, hello, 0.1)
    members = node.members
    node.receive("e1", m.Ping(0, 0, 0, 0, "edge", [], True).to_wire(), 0.2)
    assert members.booting("e1") and not members.booting("e2")
    relayed = m.Ack(99, 0, 0, 0, "edge", "e2", [], True).to_wire()  # e3 vouching for e2
    node.receive("e3", relayed, 0.3)
    assert not members.booting("e2") and not members.booting("e3")
    node.receive("e1", m.Ack(0, 5, 0, 0, "edge").to_wire(), 0.4)  # installed: says no more
    assert not members.booting("e1")
    assert not members.booting("nobody")


def test_candidates_queue_is_bounded_and_drops_the_unvouched() -> None:
    """Rule 8's queue (candidates.py): bounded, each address asked about CANDIDATE_ASKS times
    at most, oldest first, and one that became known is dropped without an ask."""
    from edgekv.gossip.candidates import (
        CANDIDATE_ASKS,
        CANDIDATES_PER_ROUND,
        MAX_CANDIDATES,
        Candidates,
    )

    counters: Counter[str] = Counter()
    c = Candidates(counters)
    for i in range(MAX_CANDIDATES + 5):
        c.add(f"10.0.0.{i}:1")
    c.add("10.0.0.0:1")  # already queued: not twice
    assert len(c) == MAX_CANDIDATES
    assert counters["members_unvouched"] == 5
    first = c.batch(lambda a: a == "10.0.0.1:1")
    assert len(first) == CANDIDATES_PER_ROUND - 1 and "10.0.0.1:1" not in first
    assert first[0] == "10.0.0.0:1"  # oldest first; now at the back of the queue
    assert c.discard("10.0.0.2:1") and not c.discard("10.0.0.2:1")
    small = Candidates(counters)
    small.add("a:1")
    asked = [small.batch(lambda a: False) for _ in range(CANDIDATE_ASKS + 1)]
    assert asked == [["a:1"]] * CANDIDATE_ASKS + [[]]
    assert not small and counters["members_unvouched"] == 6
