"""EdgeNode against the real `edgekv.Origin` over TCP (real sockets on 127.0.0.1, port 0)."""

from __future__ import annotations

from pathlib import Path

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
