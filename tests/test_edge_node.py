"""EdgeNode in trio virtual time over the simulated network, with a real origin write path."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from edgekv.crdt.version import Version
from edgekv.errors import InvalidInput, OriginUnavailable, StoreNotFound, WrongKind
from edgekv.node.edge import EdgeNode
from edgekv.node.kvstore import KvStore
from edgekv.node.watch import WatchEvent
from edgekv.testnet.simnet import SimNetwork
from test_edge_harness import FAST, origin_node, wait_until

SEED = int(os.environ.get("EDGEKV_TEST_SEED", "1"))


@pytest.fixture
async def net() -> AsyncIterator[SimNetwork]:
    network = SimNetwork()
    network.faults.set_default(latency=0.02)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.run)
        yield network
        nursery.cancel_scope.cancel()


def _edge(net: SimNetwork, name: str, peers: list[str] = [], **options: Any) -> EdgeNode:  # noqa: B006
    return EdgeNode(
        origin="origin:1",
        peers=peers,
        transport=net.transport(name),
        node_id=name,
        config=FAST,
        write_timeout=2.0,
        rng=random.Random(f"{SEED}-{name}"),
        **options,
    )


async def test_read_your_writes_while_another_edge_is_partitioned(
    net: SimNetwork, autojump_clock: Any
) -> None:
    async with (
        origin_node(net.transport("origin:1"), seed=SEED) as origin,
        _edge(net, "e1:1", ["e2:1"]) as e1,
        _edge(net, "e2:1", ["e1:1"]) as e2,
    ):
        await origin.write({"op": "create_store", "store": "flags"})
        await wait_until(lambda: e1.replica.has_store("flags") and e2.replica.has_store("flags"))
        net.faults.isolate("e2:1")
        store = e1.open("flags")
        version = await store.put("greeting", b"hi")
        assert isinstance(version, Version) and version.seq == 2
        # visible on the writing edge the moment put() returns
        assert store.get("greeting") == b"hi"
        entry = store.get_entry("greeting")
        assert entry is not None and entry.version == version
        await store.zadd("rank", {b"alice": 3.0, b"bob": 1.0})
        assert store.zrange_by_score("rank", 0, 10) == [(b"bob", 1.0), (b"alice", 3.0)]
        await store.bf_add("seen", [b"10.0.0.1"])
        assert store.bf_exists("seen", b"10.0.0.1")
        await store.delete("greeting")
        assert store.get("greeting") is None
        await store.zrem("rank", [b"bob"])
        assert store.zrange_by_score("rank", 0, 10) == [(b"alice", 3.0)]
        with pytest.raises(WrongKind):
            await store.put("rank", b"x")
        # the partitioned edge has seen none of it; after the heal it converges
        await trio.sleep(2)
        assert e2.open("flags").get_entry("rank") is None
        assert e2.open("flags").zrange_by_score("rank", 0, 10) == []
        net.faults.heal()
        await wait_until(lambda: e2.replica.root == origin.replica.root, within=30)
        assert e2.open("flags").zrange_by_score("rank", 0, 10) == [(b"alice", 3.0)]
        assert e1.watermark == e2.watermark == origin.watermark


async def test_open_and_kvstore_open_in_context(net: SimNetwork, autojump_clock: Any) -> None:
    async with origin_node(net.transport("origin:1"), seed=SEED) as origin:
        await origin.write({"op": "create_store", "store": "flags"})
        with pytest.raises(Exception, match="running node"):
            KvStore.open("flags")
        async with _edge(net, "e1:1") as e1:
            await wait_until(lambda: e1.replica.has_store("flags"))
            assert KvStore.open("flags").name == "flags"
            with pytest.raises(StoreNotFound):
                e1.open("nope")
            with pytest.raises(StoreNotFound):
                KvStore.open("nope")
            status = e1.status()
            assert status["node_id"] == "e1:1" and status["watermark"] == 1
            assert status["peers"]["origin:1"]["role"] == "origin"
            assert status["lag_seqs"] == 0
        with pytest.raises(Exception, match="running node"):
            KvStore.open("flags")


async def test_origin_unreachable_writes_fail_reads_work(
    net: SimNetwork, autojump_clock: Any
) -> None:
    async with (
        origin_node(net.transport("origin:1"), seed=SEED) as origin,
        _edge(net, "e1:1") as e1,
    ):
        await origin.write({"op": "create_store", "store": "flags"})
        await origin.write({"op": "put", "store": "flags", "key": "k", "value": b"v"})
        await wait_until(lambda: e1.watermark == 2)
        net.faults.isolate("origin:1")
        store = e1.open("flags")
        start = trio.current_time()
        with pytest.raises(OriginUnavailable):
            await store.put("k", b"w")
        assert trio.current_time() - start == pytest.approx(2.0)
        assert store.get("k") == b"v"
        net.faults.heal()
        await store.put("k", b"w")
        assert store.get("k") == b"w"


async def test_watch_through_the_edge(net: SimNetwork, autojump_clock: Any) -> None:
    async with (
        origin_node(net.transport("origin:1"), seed=SEED) as origin,
        _edge(net, "e1:1") as e1,
    ):
        await origin.write({"op": "create_store", "store": "s"})
        await wait_until(lambda: e1.replica.has_store("s"))
        store = e1.open("s")
        events: list[WatchEvent] = []
        async with store.watch("user:") as watcher:

            async def consume() -> None:
                async for ev in watcher:
                    events.append(ev)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                expected = []
                for i in range(30):
                    key = f"user:{i % 4}"
                    r = await origin.write(
                        {"op": "put", "store": "s", "key": key, "value": b"%d" % i}
                    )
                    expected.append(WatchEvent(key, Version(r["seq"], r["written_at"]), False))
                    await origin.write({"op": "put", "store": "s", "key": "other", "value": b""})
                    if i % 3 == 0:
                        await trio.sleep(0.3)
                own = await store.delete("user:1")
                expected.append(WatchEvent("user:1", own, True))
                await wait_until(lambda: len(events) >= len(expected) - 10)
                await trio.sleep(3)
                nursery.cancel_scope.cancel()
        # pushes are batched: a key written twice within one window may show only its newest
        # version, but every event is a real version, once, in order per key, ending at the last
        for key in {e.key for e in expected}:
            got = [e.version.seq for e in events if e.key == key and e.version]
            want = [e.version.seq for e in expected if e.key == key and e.version]
            assert got == sorted(set(got)) and set(got) <= set(want) and got[-1] == want[-1]
        assert [e for e in events if e.key == "user:1"][-1].deleted


async def test_restart_serves_persisted_state_then_catches_up(
    net: SimNetwork, autojump_clock: Any, tmp_path: Any
) -> None:
    async with origin_node(net.transport("origin:1"), seed=SEED) as origin:
        await origin.write({"op": "create_store", "store": "s"})
        for i in range(20):
            await origin.write({"op": "put", "store": "s", "key": f"k{i}", "value": b"1"})
        async with _edge(net, "e1:1", data_dir=str(tmp_path), flush_interval=0.2) as e1:
            await wait_until(lambda: e1.watermark == 21)
            await trio.sleep(0.5)
        for i in range(20, 40):
            await origin.write({"op": "put", "store": "s", "key": f"k{i}", "value": b"2"})
        net.faults.isolate("origin:1")
        async with _edge(net, "e1:1", data_dir=str(tmp_path)) as e1:
            assert e1.load_report is not None and e1.load_report.keys == 20
            assert e1.watermark == 21
            assert e1.open("s").get("k5") == b"1"
            assert e1.open("s").get("k25") is None
            assert not e1.replica.trees_pending  # a small replica builds its trees on enter
            net.faults.heal()
            await wait_until(lambda: e1.watermark == 41)
            assert e1.open("s").get("k25") == b"2"
            assert e1.replica.root == origin.replica.root


@pytest.mark.parametrize(
    "options",
    [
        {"origin": ""},
        {"origin": "nohost"},
        {"origin": "a:1", "peers": "b:2"},
        {"origin": "a:1", "peers": ["b:x"]},
        {"origin": "a:1", "listen": "127.0.0.1"},
        {"origin": "a:1", "write_timeout": 0},
        {"origin": "a:1", "http": "127.0.0.1:notaport"},
    ],
)
def test_bad_constructor_arguments_are_invalid_input(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        EdgeNode(**options)


async def test_garbage_from_a_peer_and_a_bad_write_reply(
    net: SimNetwork, autojump_clock: Any
) -> None:
    from edgekv.errors import RemoteProtocolError
    from edgekv.gossip.wire import MsgType
    from edgekv.node.runtime import NodeRuntime

    async with (
        origin_node(net.transport("origin:1"), seed=SEED) as origin,
        _edge(net, "e1:1") as e1,
    ):
        await origin.write({"op": "create_store", "store": "s"})
        await wait_until(lambda: e1.replica.has_store("s"))
        root = e1.replica.root
        attacker = net.transport("evil:1")
        for junk in (
            {"t": int(MsgType.PUSH), "items": "nope"},
            {"t": int(MsgType.PUSH), "items": [["s", "k", [0, -1, 0, b"x", None]]], "covers": []},
            {"t": int(MsgType.AE_ROOT), "root": "x"},
            {"t": int(MsgType.SYNC_DATA), "items": [[1, 2, 3]]},
            {"t": int(MsgType.PING)},
        ):
            await attacker.send("e1:1", junk)
        await net.settle()
        await trio.sleep(0.1)
        assert e1.runtime.metrics.events["protocol_errors"] >= 4
        assert e1.replica.root == root and e1.runtime.running

    # an "origin" whose write replies are malformed: the write fails with a typed error
    async def bad_origin(peer: str, msg: dict[str, Any]) -> dict[str, Any]:
        return {"seq": 5, "written_at": 1, "items": [["s", "k", [9, 9]]], "covers": []}

    from edgekv.crdt import META, Register
    from edgekv.gossip.core import GossipNode

    fake = GossipNode("origin:2", e1.replica.__class__(), role="origin", config=FAST)
    fake.replica.apply(META, "s", Register(1, 1, b"", None))
    fake.replica.covered.add(1, 1)
    runtime = NodeRuntime(net.transport("origin:2"), fake, on_request=bad_origin)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        async with EdgeNode(origin="origin:2", transport=net.transport("e2:1"), config=FAST) as e2:
            await wait_until(lambda: e2.replica.has_store("s"))
            with pytest.raises(RemoteProtocolError, match="bad delta"):
                await e2.open("s").put("k", b"v")
            assert e2.open("s").get("k") is None
        nursery.cancel_scope.cancel()


async def test_ttl_expiry_uses_the_node_wall_clock(net: SimNetwork, autojump_clock: Any) -> None:
    def virtual_ms() -> int:
        return 1_700_000_000_000 + int(trio.current_time() * 1000)

    async with (
        origin_node(net.transport("origin:1"), seed=SEED, wall_ms=virtual_ms) as origin,
        _edge(net, "e1:1", wall_ms=virtual_ms) as e1,
    ):
        await origin.write({"op": "create_store", "store": "s"})
        await wait_until(lambda: e1.replica.has_store("s"))
        store = e1.open("s")
        await store.put("session", b"token", ttl=1.5)
        assert store.get("session") == b"token"
        entry = store.get_entry("session")
        assert entry is not None and entry.expires_at == entry.version.written_at + 1500
        await trio.sleep(1.6)
        assert store.get("session") is None and store.get_entry("session") is None
        assert store.scan("*") == []


async def test_clean_exit_says_goodbye(net: SimNetwork, autojump_clock: Any) -> None:
    async with origin_node(net.transport("origin:1"), seed=SEED) as origin:
        assert origin.runtime is not None
        peers = origin.runtime.gossip.peers
        async with _edge(net, "e1:1"):
            await wait_until(lambda: peers().get("e1:1") is not None)
            await trio.sleep(2)
            assert peers()["e1:1"].state == "alive"
        await trio.sleep(0.1)  # one link latency, far below the suspicion timeout
        assert peers()["e1:1"].state == "dead"


def test_a_large_restart_reads_first_and_builds_its_trees_in_a_thread(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many keys (here: any number, the threshold lowered), reads work before the Merkle
    trees exist; a worker thread builds them while gossip runs (syncing until they are in).  Real clock: the thread's
    work takes real time, which a virtual clock would skip past."""
    import anyio

    from edgekv.crdt import META, Register
    from edgekv.node import edge as edge_mod
    from edgekv.node import runtime as runtime_mod
    from edgekv.node.persistence import ReplicaStore

    saved = ReplicaStore(tmp_path)
    saved.load()
    items = [(META, "s", Register(1, 1, b""))]
    items += [("s", f"k{i}", Register(i + 2, 1, b"v%d" % i)) for i in range(2000)]
    saved.on_changes(saved.replica.apply_batch(items, [(1, 2001)]))
    roots = saved.replica.roots()
    anyio.run(saved.close)
    monkeypatch.setattr(edge_mod, "BACKGROUND_TREES_FROM", 0)
    monkeypatch.setattr(runtime_mod, "OFFLOAD_FROM_KEYS", 0)  # the tree job in a thread

    async def main() -> None:
        with trio.fail_after(20):
            async with EdgeNode(
                origin="127.0.0.1:9", data_dir=str(tmp_path), listen="127.0.0.1:0"
            ) as node:
                assert node.open("s").get("k7") == b"v7"
                status = node.status()
                assert status["trees_pending"] and status["root"] is None
                while node.status()["trees_pending"]:  # noqa: ASYNC110 (a poll, as a user would)
                    await trio.sleep(0.01)
                assert not node.replica.trees_pending
                assert not any(sr.changes.pending for sr in node.replica.stores.values())
                assert node.replica.roots() == roots

    trio.run(main)


async def test_a_ready_edge_stays_ready_while_a_later_delta_catches_it_up(
    net: SimNetwork, autojump_clock: Any
) -> None:
    # readiness means "holds everything up to the origin's watermark as of joining": a later
    # delta snapshot brings newer writes and takes nothing away, so a readiness probe must
    # not flap while it runs (`syncing` says it)
    config = dataclasses.replace(FAST, snapshot_from_keys=50, snapshot_chunk_bytes=1024)
    async with origin_node(net.transport("origin:1"), config=config, seed=SEED) as origin:
        await origin.write({"op": "create_store", "store": "s"})
        edge = EdgeNode(
            origin="origin:1",
            transport=net.transport("e1:1"),
            node_id="e1:1",
            config=config,
            rng=random.Random(f"{SEED}-e1"),
        )
        async with edge:
            assert edge.is_ready()
            net.faults.isolate("e1:1")
            for i in range(200):  # in many pushes: more than a push's repeats can carry
                await origin.write({"op": "put", "store": "s", "key": f"k{i:03}", "value": b"v"})
                await trio.sleep(0.05)
            seen: set[tuple[bool, bool]] = set()  # (syncing, ready) at each millisecond

            async def probe() -> None:
                while True:
                    seen.add((edge.gossip.bootstrap.active, edge.is_ready()))
                    await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe)
                net.faults.heal()
                await wait_until(lambda: edge.watermark == origin.replica.watermark)
                nursery.cancel_scope.cancel()
            assert edge.gossip.counters["snapshot_deltas"] == 1
            assert (True, True) in seen and (True, False) not in seen, seen
            assert edge.status()["ready"] and not edge.status()["syncing"]
            assert edge.is_ready() and edge.open("s").get("k199") == b"v"
