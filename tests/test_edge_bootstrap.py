"""Bootstrap over real sockets: a fresh EdgeNode takes a streamed snapshot from the origin.

Throwaway origin and edges on 127.0.0.1 in temp dirs.  The switch point and chunk size are
lowered so that a few thousand keys take the snapshot path in well under a second.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import edgekv
from edgekv.crdt import META, Put, Register, Replica, bulk_load
from edgekv.gossip import GossipConfig
from edgekv.node.persistence import ReplicaStore
from edgekv.node.watch import WatchReset
from edgekv.testnet.procs import free_port

KEYS = 4000


def small_snapshots(whole_from: float = 2.0) -> GossipConfig:
    """Small switch point and chunks; a restart takes its delta whatever its size unless
    `whole_from` says otherwise (snapshot.py rule 12)."""
    return GossipConfig(
        snapshot_from_keys=500, snapshot_chunk_bytes=8 << 10, snapshot_whole_from=whole_from
    )


async def fill(client: edgekv.OriginClient, keys: int = KEYS) -> None:
    await client.create_store("s")
    for lo in range(0, keys, 1000):
        await client.batch("s", [Put(f"k{i:05d}", b"v%d" % i) for i in range(lo, lo + 1000)])


@asynccontextmanager
async def origin_with_an_edge_file(
    tmp_path: Path,
) -> AsyncIterator[tuple[edgekv.Origin, edgekv.OriginClient]]:
    """An origin holding `fill`'s store and a client of it; an edge took it all into its
    file (tmp_path / "e") and stopped."""
    async with origin_with_store(tmp_path) as (origin, client):
        async with edgekv.EdgeNode(
            origin=origin.address, data_dir=str(tmp_path / "e"), config=small_snapshots()
        ) as edge:
            assert edge.is_ready()
        yield origin, client


@asynccontextmanager
async def origin_with_store(
    tmp_path: Path,
) -> AsyncIterator[tuple[edgekv.Origin, edgekv.OriginClient]]:
    """An origin (data in tmp_path / "o") holding `fill`'s store, and a client of it."""
    async with (
        edgekv.Origin(
            data_dir=str(tmp_path / "o"), listen="127.0.0.1:0", gossip_config=small_snapshots()
        ) as origin,
        edgekv.OriginClient(origin.address) as client,
    ):
        await fill(client)
        yield origin, client


async def test_fresh_node_opens_the_origins_stores_on_return_and_persists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases: list[Any] = []
    rewrite_all = ReplicaStore.rewrite_all

    def spy(self: ReplicaStore, base: Any = None) -> None:
        bases.append(base)
        rewrite_all(self, base)

    monkeypatch.setattr(ReplicaStore, "rewrite_all", spy)
    with trio.fail_after(60):
        async with (
            origin_with_store(tmp_path) as (origin, _),
            edgekv.EdgeNode(
                origin=origin.address, data_dir=str(tmp_path / "e"), config=small_snapshots()
            ) as edge,
        ):
            assert edge.is_ready()
            store = edge.open("s")  # no waiting loop
            assert store.get("k03999") == b"v3999"
            assert len(store.scan("k*")) == KEYS
            assert edge.gossip.counters["snapshots_installed"] == 1
            assert edge.replica.root == origin.replica.root
            status = edge.status()
            assert status["ready"] and not status["syncing"]
            assert status["snapshot"]["keys"] == KEYS + 1  # and the store's metadata
            assert status["snapshot"]["bytes"] > KEYS * 20
        # the snapshot was written to the edge's file (rewritten in the background), from
        # the copies its tree job holds, not from a copy taken on the loop (persistence.py
        # rule 4)
        assert len(bases) == 1 and bases[0] is not None and len(bases[0]["s"]) == KEYS
        persisted = ReplicaStore(tmp_path / "e")
        report = persisted.load()
        assert report.keys == KEYS
        assert persisted.replica.stores["s"].get("k00042", 0) == b"v42"


async def test_origin_keeps_acknowledging_writes_during_a_transfer_and_none_is_lost(
    tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        async with (
            edgekv.Origin(
                data_dir=str(tmp_path / "o"), listen="127.0.0.1:0", gossip_config=small_snapshots()
            ) as origin,
            edgekv.OriginClient(origin.address) as client,
        ):
            await fill(client, 3 * KEYS)
            acked: list[tuple[float, str]] = []
            done = trio.Event()

            async def writer() -> None:
                i = 0
                while not done.is_set() and i < 5000:
                    key = f"w{i:05d}" if i % 2 else f"k{(i * 7) % (3 * KEYS):05d}"
                    await client.put("s", key, b"during%d" % i)
                    acked.append((trio.current_time(), key))
                    i += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                async with edgekv.EdgeNode(origin=origin.address, config=small_snapshots()) as edge:
                    done.set()
                    boot = edge.gossip.bootstrap
                    assert edge.gossip.counters["snapshots_installed"] == 1
                    start, end = boot.progress.started, boot.finished_at
                    assert end is not None
                    during = [k for t, k in acked if start <= t <= end]
                    assert len(during) >= 5, (len(acked), end - start)
                    with edge.runtime.subscribe() as changes, trio.fail_after(20):
                        while edge.replica.root != origin.replica.root:  # push, catch-up
                            await changes.receive()
                    store = edge.open("s")
                    for key in {k for _, k in acked}:
                        assert store.get(key) == origin.replica.stores["s"].get(key, 0)


async def test_a_whole_snapshot_ends_open_watchers_with_a_reset(tmp_path: Path) -> None:
    # an edge file holding store "s" but no covered seq: the node serves it at once, and once
    # the origin is up takes a whole snapshot (watermark 0), which replaces every store
    # without per-key changes
    old = ReplicaStore(tmp_path / "e")
    old.load()
    bulk_load(
        old.replica,
        [(META, "s", Register(1, 0, b"", None)), ("s", "k00000", Register(2, 0, b"old", None))],
    )
    old.rewrite_all()
    await old.close()
    address = f"127.0.0.1:{free_port()}"
    with trio.fail_after(60):
        async with edgekv.EdgeNode(
            origin=address, data_dir=str(tmp_path / "e"), config=small_snapshots()
        ) as edge:
            watcher = edge.open("s").watch("k")  # before the origin exists
            async with (
                edgekv.Origin(
                    data_dir=str(tmp_path / "o"), listen=address, gossip_config=small_snapshots()
                ) as origin,
                edgekv.OriginClient(origin.address) as client,
            ):
                await fill(client)
                with pytest.raises(WatchReset):
                    async for _ in watcher:
                        pass
                assert edge.gossip.counters["snapshots_installed"] == 1
                assert edge.open("s").get("k03999") == b"v3999"


async def test_a_restarted_edge_takes_its_delta_while_its_trees_are_still_being_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge back after many changes asks for its delta snapshot as soon as its file is
    loaded: its Merkle trees are built off the loop meanwhile (held back here until the delta
    is in), not before gossip starts.  Real sockets and clock (the build is a worker thread)."""
    import threading

    from edgekv.crdt import treebuild
    from edgekv.gossip import snapshot_build
    from edgekv.node import edge as edge_mod
    from edgekv.node import runtime as runtime_mod

    release = threading.Event()
    real, real_pending = treebuild.build_tree, Replica.build_pending_trees  # the edge's Replica

    def held_build(states):  # type: ignore[no-untyped-def]
        release.wait(30)
        return real(states)

    def held_pending(self):  # type: ignore[no-untyped-def]
        release.wait(30)
        return real_pending(self)

    with trio.fail_after(90):
        async with origin_with_an_edge_file(tmp_path) as (origin, client):
            for lo in range(0, KEYS, 1000):  # away: every key changes (a delta past 500)
                await client.batch("s", [Put(f"k{i:05d}", b"c") for i in range(lo, lo + 1000)])
            monkeypatch.setattr(edge_mod, "BACKGROUND_TREES_FROM", 0)
            monkeypatch.setattr(runtime_mod, "OFFLOAD_FROM_KEYS", 0)  # the trees in a thread
            monkeypatch.setattr(snapshot_build, "build_tree", held_build)
            monkeypatch.setattr(Replica, "build_pending_trees", held_pending)
            try:
                async with edgekv.EdgeNode(
                    origin=origin.address, data_dir=str(tmp_path / "e"), config=small_snapshots()
                ) as edge:
                    with trio.fail_after(15):
                        while edge.replica.watermark < origin.replica.watermark:  # noqa: ASYNC110 (a poll)
                            await trio.sleep(0.01)
                    assert edge.replica.trees_pending  # the delta came before the trees
                    assert edge.gossip.counters["snapshot_deltas"] == 1
                    assert edge.status()["trees_pending"] and edge.status()["root"] is None
                    release.set()
                    while edge.status()["trees_pending"]:  # noqa: ASYNC110 (a poll, as a user would)
                        await trio.sleep(0.01)
                    assert not edge.replica.trees_pending
                    # the change logs got their entries in the same job (crdt/changelog.py
                    # rule 5), so a catch-up answered from here costs no rebuild on the loop
                    assert not any(sr.changes.pending for sr in edge.replica.stores.values())
                    assert edge.replica.root == origin.replica.root
                    assert edge.open("s").get("k00042") == b"c"
            finally:
                release.set()


class HeldFileReads:
    """From its making on, `ReplicaStore.read_rows` waits for `release` (a restart's file
    still loading); `dropped` records for each read whether its loader was told to stop
    (no rows, and not wanted: snapshot.py rule 12)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.dropped: list[bool] = []
        real = ReplicaStore.read_rows

        def held(store: ReplicaStore, wanted: Callable[[], bool] = lambda: True) -> Any:
            self.release.wait(30)
            rows = real(store, wanted)
            self.dropped.append(rows is None and not wanted())
            return rows

        monkeypatch.setattr(ReplicaStore, "read_rows", held)


def enter_soon(nursery: trio.Nursery, edge: edgekv.EdgeNode) -> trio.Event:
    """Enter `edge` in a task of `nursery` (until it is cancelled); set once entered."""
    entered = trio.Event()

    async def enter() -> None:
        async with edge:
            entered.set()
            await trio.sleep_forever()

    nursery.start_soon(enter)
    return entered


async def test_a_restarted_edge_asks_for_its_delta_while_its_file_loads_and_loses_no_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge back after many changes starts gossip on its file's metadata: its delta is
    asked for (and streams) while the rows still load in a worker thread (held here); writes
    made meanwhile reach it by push and are joined with the file, none lost; `async with`
    returns once the file is joined, serving its stored data.  Real sockets and clock."""
    with trio.fail_after(90):
        async with origin_with_an_edge_file(tmp_path) as (origin, client):
            for lo in range(0, KEYS // 2, 1000):  # away: half the keys change
                await client.batch("s", [Put(f"k{i:05d}", b"c") for i in range(lo, lo + 1000)])
            reads = HeldFileReads(monkeypatch)
            edge = edgekv.EdgeNode(
                origin=origin.address, data_dir=str(tmp_path / "e"), config=small_snapshots()
            )
            try:
                async with trio.open_nursery() as nursery:
                    entered = enter_soon(nursery, edge)
                    with trio.fail_after(15):  # the delta streams, the file still loading
                        while edge._runtime is None or edge.gossip.bootstrap.progress.keys == 0:  # noqa: ASYNC110 (a poll)
                            await trio.sleep(0.01)
                    boot = edge.gossip.bootstrap
                    assert boot.base_wm is not None and not edge.is_ready()
                    assert boot.progress.total and boot.progress.keys <= KEYS // 2 + 10
                    await client.put("s", "k03999", b"during")  # pushed while the file loads
                    await client.put("s", "brand-new", b"key")
                    await trio.sleep(0.3)
                    assert not entered.is_set()  # a restarted edge returns with its data
                    reads.release.set()
                    with trio.fail_after(15):
                        await entered.wait()
                    assert edge.open("s").get("k03998") == b"v3998"  # its stored data
                    with trio.fail_after(15):
                        while edge.replica.watermark < origin.replica.watermark:  # noqa: ASYNC110 (a poll)
                            await trio.sleep(0.01)
                    store = edge.open("s")
                    assert store.get("k03999") == b"during" and store.get("brand-new") == b"key"
                    assert store.get("k00042") == b"c"
                    assert edge.gossip.counters["snapshots_installed"] == 0  # a delta only
                    with trio.fail_after(15):
                        await edge.wait_ready()
                        while edge.status()["trees_pending"]:  # noqa: ASYNC110 (a poll)
                            await trio.sleep(0.01)
                    assert edge.replica.root == origin.replica.root
                    nursery.cancel_scope.cancel()
            finally:
                reads.release.set()
        # the joined replica (file, delta and the writes meanwhile) was persisted
        persisted = ReplicaStore(tmp_path / "e")
        persisted.load()
        assert persisted.replica.state("s", "k03999") == origin.replica.state("s", "k03999")
        assert persisted.replica.state("s", "k03998") == origin.replica.state("s", "k03998")


async def test_a_restarted_edge_whose_delta_is_most_of_the_store_takes_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """snapshot.py rule 12: an edge back after most keys changed, with a caught-up edge to
    take the store from, stops loading its file (the loader gets no rows, nothing is moved
    aside), takes the whole store from that edge, serves the origin's data and
    rewrites its file with it.  Real sockets and clock."""
    with trio.fail_after(90):
        async with (
            origin_with_an_edge_file(tmp_path) as (origin, client),
            edgekv.EdgeNode(origin=origin.address, config=small_snapshots()) as source,
        ):
            for lo in range(0, KEYS, 1000):  # away: every key changes
                await client.batch("s", [Put(f"k{i:05d}", b"c") for i in range(lo, lo + 1000)])
            reads = HeldFileReads(monkeypatch)
            edge = edgekv.EdgeNode(
                origin=origin.address, data_dir=str(tmp_path / "e"), config=small_snapshots(0.3)
            )
            try:
                async with trio.open_nursery() as nursery:
                    entered = enter_soon(nursery, edge)
                    with trio.fail_after(15):  # the offer is taken: the file is not wanted
                        while not (edge._runtime and edge.gossip.counters["snapshot_file_dropped"]):  # noqa: ASYNC110 (a poll)
                            await trio.sleep(0.01)
                    reads.release.set()
                    with trio.fail_after(15):
                        await entered.wait()
                        await edge.wait_ready()
                    assert reads.dropped == [True] and edge.load_report is not None
                    assert edge.load_report.corrupt_moved_to is None
                    assert edge.gossip.counters["snapshots_installed"] == 1
                    assert source.gossip.counters["snapshot_keys_served"] >= KEYS
                    assert edge.open("s").get("k00042") == b"c"
                    assert edge.replica.watermark >= origin.replica.watermark
                    nursery.cancel_scope.cancel()
            finally:
                reads.release.set()
    again = ReplicaStore(tmp_path / "e")  # the file was rewritten with the whole store
    try:
        again.load()
        assert again.replica.store("s").get("k00042", 0) == b"c"
        assert len(again.replica.store("s").states) == KEYS
    finally:
        await again.close()


async def test_a_fresh_edge_writes_nothing_to_its_file_while_its_whole_snapshot_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes during a fresh edge's whole snapshot reach it by push, but its file is written
    only once the snapshot is installed (rewritten whole then): each flush meanwhile was
    wasted work, a quarter of the CPU of ten edges joining on one core at full write load.
    The file then holds everything, the writes made during the transfer included."""
    flushed_while_whole: list[int] = []
    held_in_status: list[bool] = []
    nodes: list[edgekv.EdgeNode] = []
    flush = ReplicaStore.flush

    async def watched(self: ReplicaStore) -> int:
        rows = await flush(self)
        gossip = getattr(nodes[0], "gossip", None) if nodes else None
        if gossip is not None and gossip.bootstrap.whole:
            held_in_status.append(nodes[0].status()["persistence"]["flush_held"])
            if rows:
                flushed_while_whole.append(rows)
        return rows

    monkeypatch.setattr(ReplicaStore, "flush", watched)
    with trio.fail_after(90):
        async with origin_with_store(tmp_path) as (origin, client):
            done, stopped = trio.Event(), trio.Event()
            written: list[str] = []

            async def writer() -> None:
                for i in range(3000):
                    if done.is_set():
                        break
                    await client.put("s", f"w{i:05d}", b"during")
                    written.append(f"w{i:05d}")
                stopped.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                edge = edgekv.EdgeNode(
                    origin=origin.address,
                    data_dir=str(tmp_path / "e"),
                    config=small_snapshots(),
                    flush_interval=0.005,
                )
                nodes.append(edge)
                async with edge:
                    done.set()
                    await stopped.wait()  # (a put in flight is acknowledged first)
                    assert edge.gossip.counters["snapshots_installed"] == 1
                    with edge.runtime.subscribe() as changes, trio.fail_after(20):
                        while edge.replica.root != origin.replica.root:
                            await changes.receive()
    assert flushed_while_whole == []
    assert held_in_status and all(held_in_status)  # /status says why the file waits
    assert written, "no write was made during the transfer"
    persisted = ReplicaStore(tmp_path / "e")
    report = persisted.load()
    assert report.keys == KEYS + len(written)
    assert persisted.replica.stores["s"].get(written[-1], 0) == b"during"
