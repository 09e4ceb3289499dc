"""EdgeNode against the real `edgekv.Origin` over TCP (real sockets on 127.0.0.1, port 0)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import trio

import edgekv
from edgekv.errors import OriginUnavailable
from test_edge_harness import wait_until

KEY = b"cluster-secret"


async def test_edges_with_the_real_origin(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(
                data_dir=str(tmp_path / "origin"), listen="127.0.0.1:0", cluster_key=KEY
            ) as origin,
            edgekv.OriginClient(origin.address, cluster_key=KEY) as client,
        ):
            await client.create_store("flags")
            v1 = await client.put("flags", "greeting", b"hello")
            async with (
                edgekv.EdgeNode(origin=origin.address, cluster_key=KEY, node_id="e1") as e1,
                edgekv.EdgeNode(
                    origin=origin.address,
                    peers=[e1.address],
                    cluster_key=KEY,
                    data_dir=str(tmp_path / "e2"),
                    node_id="e2",
                ) as e2,
            ):
                await wait_until(lambda: e1.watermark >= v1.seq and e2.watermark >= v1.seq)
                assert e2.open("flags").get("greeting") == b"hello"
                store = e1.open("flags")
                v2 = await store.put("greeting", b"from the edge")
                assert v2.seq > v1.seq
                assert store.get("greeting") == b"from the edge"  # read-your-writes
                assert await client.get("flags", "greeting") == b"from the edge"
                await wait_until(lambda: e2.open("flags").get("greeting") == b"from the edge")
                await wait_until(lambda: e1.replica.root == e2.replica.root == origin.replica.root)

            # an edge with the wrong cluster key is refused by the origin: writes fail
            async with edgekv.EdgeNode(
                origin=origin.address, cluster_key=b"wrong", write_timeout=1.0
            ) as intruder:
                # its handshakes fail: everything it sends is dropped, nothing comes back
                await wait_until(lambda: intruder.runtime.transport.stats.dropped >= 2)
                assert not intruder.replica.has_store("flags")
                with pytest.raises(OriginUnavailable):
                    await intruder._write(
                        "flags", {"op": "put", "store": "flags", "key": "x", "value": b"y"}
                    )
            assert await client.get("flags", "x") is None


async def test_client_reads_at_an_edge(tmp_path: Path) -> None:
    """`OriginClient(edge)` reads the edge's replica (node/clientreads.py); writes are refused,
    tokens are checked, and a frame that is not a REQUEST closes only that connection."""
    tokens = {"reader": "read:flags", "other": "read:x"}
    with trio.fail_after(30):
        async with (
            edgekv.Origin(data_dir=str(tmp_path / "o"), listen="127.0.0.1:0") as origin,
            edgekv.OriginClient(origin.address) as client,
        ):
            await client.create_store("flags")
            v = await client.put("flags", "greeting", b"hello")
            await client.zadd("flags", "rank", {b"alice": 2.0})
            await client.bf_add("flags", "seen", [b"a"])
            async with edgekv.EdgeNode(origin=origin.address, tokens=tokens) as edge:
                await wait_until(lambda: edge.watermark >= v.seq + 2)
                async with (
                    edgekv.OriginClient(edge.address, token="reader") as reader,
                    edgekv.OriginClient(edge.address, token="other") as other,
                ):
                    assert await reader.get("flags", "greeting") == b"hello"
                    assert await reader.get("flags", "missing") is None
                    entry = await reader.get_entry("flags", "greeting")
                    assert entry is not None and entry.version.seq == v.seq
                    assert await reader.scan("flags", "g*") == ["greeting"]
                    assert await reader.zrange_by_score("flags", "rank", 0, 5) == [(b"alice", 2.0)]
                    assert await reader.zscan("flags", "rank", "a*") == [(b"alice", 2.0)]
                    assert await reader.bf_exists("flags", "seen", b"a")
                    assert await reader.stores() == ["flags"]
                    with pytest.raises(edgekv.errors.InvalidInput, match="reads only"):
                        await reader.put("flags", "greeting", b"no")
                    with pytest.raises(edgekv.errors.Unauthorized):
                        await other.get("flags", "greeting")
                    with pytest.raises(edgekv.errors.StoreNotFound):
                        await other.get("x", "k")  # allowed, but this edge has no store x
                    assert await reader.get("flags", "greeting") == b"hello"  # still served
                    # garbage after the handshake: that connection is closed, the edge serves on
                    from edgekv.node.tcp import FramedStream, LinkOptions

                    fs = await FramedStream.connect(
                        edge.address,
                        LinkOptions(cluster_id="edgekv", node_id="junk", role="client"),
                    )
                    await fs.send({"t": 1})
                    with pytest.raises(anyio.EndOfStream):  # closed by the edge
                        await fs.receive()
                    await fs.aclose()
                    assert await reader.get("flags", "greeting") == b"hello"
