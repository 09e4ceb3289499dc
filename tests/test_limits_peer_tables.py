"""Tables a peer can grow by naming addresses stay bounded (issue #12), virtual clock.

A hostile peer that sends unsigned data under many addresses is cut off under each of them
(node/runtime.py rule 6): the runtime's cut-off table holds at most `MAX_BACKOFFS` peers (as
the TCP transport's does; past it the oldest back-off ends early), and the per-peer count of
rejections names at most `MAX_NAMED` peers, the rest adding up under `OTHER` (so /status and
/metrics stay bounded too).  The node keeps serving honest writes throughout.  The push
tables (eager and lazy links, queues) hold members only: a GRAFT from beyond a full member
table is ignored, and a forgotten member leaves them (sans-IO).
"""

from __future__ import annotations

import random
from typing import Any

import trio

from edgekv.crdt import META, Register, Replica
from edgekv.gossip import GossipNode
from edgekv.gossip import messages as m
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.transport import MAX_NAMED, OTHER
from edgekv.node.backoff import MAX_BACKOFFS
from edgekv.testnet import Testnet as Net


async def test_unsigned_data_under_many_addresses_keeps_the_cut_off_tables_bounded(
    autojump_clock: Any,
) -> None:
    async with Net(edges=2, network="sim", latency=0.01, seed=3) as net:
        await net.client.create_store("flags")
        await net.client.put("flags", "k", b"genuine")
        assert await net.converged(timeout=10)
        victim = net.edges[0]
        runtime = victim.runtime
        forged = m.Push([("flags", "k", Register(10**12, 1, b"forged"))], [], 1).to_wire()
        n = max(MAX_BACKOFFS, MAX_NAMED) + 100
        names = [await net.attach(f"mallory-{i}") for i in range(n)]
        for name in names:
            await name.send(victim.address, forged)
        await trio.sleep(1)
        assert runtime.metrics.events["rejected_unsigned"] == n
        assert len(runtime._banned) == MAX_BACKOFFS  # was one entry per address named
        rejected = runtime.metrics.rejected
        assert len(rejected) == MAX_NAMED + 1
        assert rejected[OTHER] == n - MAX_NAMED and sum(rejected.values()) == n
        assert len(victim.status()["rejected_unsigned"]) == MAX_NAMED + 1
        assert victim.metrics_text().count("edgekv_rejected_unsigned_total{") == MAX_NAMED + 1

        # the newest are still cut off: even their messages are dropped unread ...
        await names[-1].send(victim.address, forged)
        await trio.sleep(1)
        assert runtime.metrics.events["dropped_from_rejected_peer"] == 1
        # ... and the oldest back-off ended early: its next forgery is verified (and refused)
        await names[0].send(victim.address, forged)
        await trio.sleep(1)
        assert runtime.metrics.events["rejected_unsigned"] == n + 1
        assert len(runtime._banned) == MAX_BACKOFFS
        assert victim.open("flags").get("k") == b"genuine"

        await net.client.put("flags", "k", b"later")
        assert await net.converged(timeout=10)
        assert all(e.open("flags").get("k") == b"later" for e in net.edges)


def test_grafts_and_churn_keep_the_push_tables_within_the_member_table() -> None:
    """GRAFTs from 2,000 addresses with a full member table (64) do not make them push targets,
    and once dead members are forgotten they leave the push tables too (they used to stay, and
    be pushed to again, since only a member can be known dead)."""
    replica = Replica()
    replica.apply(META, "s", Register(1, 0, b"", None))
    replica.covered.add(1, 1)
    config = GossipConfig(max_members=64, dead_forget=30.0)
    node = GossipNode("me:1", replica, seeds=["seed:1"], rng=random.Random(1), config=config)
    node.start(0.0)
    for i in range(2000):
        node.receive(f"10.9.{i // 250}.{i % 250}:7", m.Graft(0, 0).to_wire(), 1.0)
    assert node.counters["grafts_from_non_members"] == 2000 - 63
    d = node.dissemination
    assert len(node.members.peers) == 64
    assert len(d.eager | d.lazy) <= 64 and (d.eager | d.lazy) <= set(node.members.peers)

    now = 1.0
    while len(node.members.peers) > 1 and now < 3600:  # nobody answers: all die, and all
        now += 1.0  # but the seed (kept, and re-pinged, to rejoin through) are forgotten
        node.tick(now)
    assert set(node.members.peers) == {"seed:1"}, now
    assert (d.eager | d.lazy) <= {"seed:1"} and set(d.outbox) <= {"seed:1"}
