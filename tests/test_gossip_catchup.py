"""Catch-up on the simulator: late joiners and restarted nodes sync by watermark; a node behind
the others' purge horizon gets a fallback and is repaired by anti-entropy without resurrecting
deleted keys; SYNC_DATA is chunked with covers on the last chunk only."""

from __future__ import annotations

import random

from edgekv.crdt import META, Delete, Put, Register, Replica
from edgekv.gossip import GossipConfig, GossipNode
from edgekv.gossip import messages as m
from edgekv.gossip.wire import MsgType
from gossip_sim import Sim


def writes(sim: Sim, start: float, n: int, every: float, prefix: str = "k") -> float:
    t = start
    for i in range(n):
        sim.run_until(t)
        sim.write("s", Put(f"{prefix}{i}", b"v%d" % i))
        t += every
    return t


def test_late_joiners_sync_from_peers_not_only_the_origin() -> None:
    sim = Sim(12, seed=11, seeds_per_edge=3)
    for addr in list(sim.nodes)[:6]:
        sim.start_one(addr, 0.0)
    sim.run_until(2.0)
    sim.create_store("s")
    t = writes(sim, 2.5, 300, 0.01)
    for addr in list(sim.nodes)[6:]:
        sim.start_one(addr, t)
    sim.run_until(t + 3.0)
    assert not sim.missing() and sim.converged(), f"seed {sim.seed}"
    served_by_edges = sum(sim.nodes[e].counters["syncs_served"] for e in sim.edges)
    assert served_by_edges > 0


def test_restarted_node_catches_up() -> None:
    sim = Sim(10, seed=12)
    sim.start()
    sim.run_until(2.0)
    sim.create_store("s")
    sim.run_until(3.0)
    sim.crash("edge-4")
    t = writes(sim, 3.0, 300, 0.01)
    assert sim.nodes["edge-4"].replica.watermark < sim.seq
    sim.restart("edge-4")
    sim.run_until(t + 2.0)
    node = sim.nodes["edge-4"]
    assert node.replica.watermark == sim.seq, f"seed {sim.seed}"
    assert node.replica.root == sim.origin.replica.root
    assert not sim.check.violations


def test_node_behind_purge_horizon_falls_back_to_ae_and_deleted_keys_stay_deleted() -> None:
    cfg = GossipConfig(purge_interval=1.0, suspect_timeout=2.0)
    sim = Sim(8, seed=13, config=cfg)
    sim.start()
    sim.run_until(2.0)
    sim.create_store("s")
    t = writes(sim, 2.5, 50, 0.01)
    sim.run_until(t + 1.0)
    victim = "edge-5"
    assert sim.nodes[victim].replica.state("s", "k7") is not None
    sim.crash(victim)
    sim.run_until(t + 2.0)
    for i in range(0, 50, 2):  # delete half the keys while the victim is down
        sim.write("s", Delete(f"k{i}"))
    deleted_at = sim.seq
    sim.run_until(t + 12.0)  # victim declared dead, horizon passes the deletes, purged
    assert sim.origin.replica.purged >= deleted_at, "tombstones were not purged"
    assert all(sim.nodes[e].peers()[victim].state == "dead" for e in sim.edges if e != victim)
    sim.restart(victim)
    sim.run_until(t + 16.0)
    node = sim.nodes[victim]
    assert node.counters["sync_fallbacks"] >= 1
    assert node.counters["ae_removed"] >= 25
    for i in range(0, 50, 2):
        for addr, n in sim.nodes.items():
            st = n.replica.state("s", f"k{i}")
            assert st is None or (isinstance(st, Register) and st.value is None), (addr, i)
    assert sim.converged() and not sim.missing(), f"seed {sim.seed}"
    assert not sim.check.violations


def test_sync_data_is_chunked_with_covers_on_the_last_chunk_only() -> None:
    r = Replica()
    r.apply(META, "s", Register(1, 0, b"", None))
    for i in range(300):
        r.apply("s", f"key-{i}", Register(i + 2, 0, b"x" * 100, None))
    r.covered.add(1, 301)
    cfg = GossipConfig(max_message_bytes=4096)
    node = GossipNode("a", r, config=cfg, rng=random.Random(1))
    out = node.receive("b", m.SyncReq(5, 100, 0).to_wire(), 0.0)
    data = [s.message for s in out if s.message["t"] == MsgType.SYNC_DATA]
    assert len(data) > 3
    assert all(msg["covers"] == [] and not msg["last"] for msg in data[:-1])
    assert data[-1]["last"] and data[-1]["covers"] == [[101, 301]]
    keys = [it[1] for msg in data for it in msg["items"]]
    assert sorted(keys) == sorted(f"key-{i}" for i in range(99, 300))  # seqs 101..301

    # the requester applies the chunks and claims the covers only with the last one
    b = Replica()
    nb = GossipNode("b", b, config=cfg, rng=random.Random(2))
    nb.receive("a", data[0], 0.0)
    assert b.watermark == 0
    for msg in data[1:]:
        nb.receive("a", msg, 0.0)
    assert list(b.covered) == [(101, 301)]


def test_sync_request_below_purge_mark_gets_a_fallback() -> None:
    r = Replica()
    r.covered.add(1, 50)
    r.purged = 40
    node = GossipNode("a", r, rng=random.Random(1))
    sync = [
        s for s in node.receive("b", m.SyncReq(1, 10, 0).to_wire(), 0.0) if s.message["t"] == 21
    ]
    assert len(sync) == 1
    assert sync[0].message["fallback"] is True and sync[0].message["items"] == []
    (reply,) = node.receive("b", m.SyncReq(2, 45, 0).to_wire(), 0.0)
    assert reply.message["fallback"] is False
