"""The origin as a gossip peer over real TCP: edges write through it and receive its commits."""

from __future__ import annotations

from pathlib import Path

import trio

from edgekv.errors import StoreNotFound, WrongKind
from edgekv.node.edge import EdgeNode
from edgekv.origin.client import OriginClient
from edgekv.origin.server import Origin


async def caught_up(edge: EdgeNode, seq: int) -> None:
    """Wait (no wall-clock polling) until the edge has applied every seq up to `seq`."""
    changes = edge.runtime.subscribe()
    with changes, trio.fail_after(10):
        while edge.watermark < seq:
            await changes.receive()


async def test_edges_write_through_the_origin_and_receive_its_commits(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with Origin(data_dir=tmp_path, listen="127.0.0.1:0", cluster_key=b"k") as origin:
            assert origin.runtime is not None and origin.runtime.running
            async with (
                OriginClient(origin.address, cluster_key=b"k") as client,
                EdgeNode(origin=origin.address, cluster_key=b"k") as edge,
            ):
                await client.create_store("flags")
                await client.put("flags", "greeting", b"hello")
                await caught_up(edge, 2)
                store = edge.open("flags")
                assert store.get("greeting") == b"hello"
                # a write through the edge is durable at the origin and readable on the edge at once
                await store.put("local", b"mine")
                assert store.get("local") == b"mine"
                assert await client.get("flags", "local") == b"mine"
                # typed errors come back through the edge
                await client.zadd("flags", "rank", {b"a": 1.0})
                await caught_up(edge, origin.watermark)
                try:
                    await store.put("rank", b"x")
                except WrongKind:
                    pass
                else:
                    raise AssertionError("expected WrongKind")
                await client.drop_store("flags")
                await caught_up(edge, origin.watermark)
                try:
                    edge.open("flags")
                except StoreNotFound:
                    pass
                else:
                    raise AssertionError("expected StoreNotFound after drop")
