"""A real cluster on 127.0.0.1: the origin plus 5 edges over TCP, every kind of write, and every
edge converging to the origin's digest and serving the same reads."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio

import edgekv
from test_edge_harness import wait_until


async def test_origin_and_five_edges_converge_over_tcp(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            edgekv.Origin(data_dir=str(tmp_path / "origin"), listen="127.0.0.1:0") as origin,
            edgekv.OriginClient(origin.address) as client,
            AsyncExitStack() as stack,
        ):
            await client.create_store("flags")
            edges: list[edgekv.EdgeNode] = []
            for i in range(5):
                peers = [e.address for e in edges[-2:]]  # a chain of seeds, not a star
                edge = edgekv.EdgeNode(
                    origin=origin.address,
                    peers=peers,
                    data_dir=str(tmp_path / f"edge-{i}") if i % 2 else None,
                    node_id=f"edge-{i}",
                )
                edges.append(await stack.enter_async_context(edge))
            for i in range(100):
                await client.put("flags", f"key:{i:03}", b"v%d" % i)
            await client.delete("flags", "key:007")
            await client.zadd("flags", "rank", {b"alice": 3.0, b"bob": 1.0, b"carol": 2.0})
            await client.zrem("flags", "rank", [b"carol"])
            await client.bf_add("flags", "seen", [b"10.0.0.1", b"10.0.0.2"])
            # a write made at one edge reaches the others too
            await edges[3].open("flags").put("from-edge", b"3")

            def converged() -> bool:
                return all(e.replica.root == origin.replica.root for e in edges)

            await wait_until(converged, within=30)
            for edge in edges:
                store = edge.open("flags")
                assert edge.watermark == origin.watermark
                assert store.get("key:042") == b"v42"
                assert store.get("key:007") is None
                assert len(store.scan("key:*")) == 99
                assert store.zrange_by_score("rank", 0, 10) == [(b"bob", 1.0), (b"alice", 3.0)]
                assert store.bf_exists("seen", b"10.0.0.2")
                assert store.get("from-edge") == b"3"
