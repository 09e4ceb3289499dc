"""Client reads at an edge share the node's byte budget (issue #12), against real processes.

An edge answers client-protocol reads on its gossip port (node/clientreads.py).  Clients that
pipeline gets of a large value and never read the answers each leave one answer blocked in
the edge's send; without a node-wide bound N such clients hold N answers.  Here they draw on
the clients' half of `--node-bytes`: the edge's RSS stays within 64 MiB of where it started,
small reads by other clients are still served, and everything is served again once they go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from edgekv.gossip.wire import MsgType, encode_frame
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.origin.client import OriginClient
from edgekv.testnet.procs import ProcessCluster
from test_limits_process import serves, wait_for

pytestmark = pytest.mark.anyio

VALUE = 1 << 20
HOGS = 100  # by one blocked answer each, 100 MiB


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def status_of(cluster: ProcessCluster, name: str) -> dict[str, Any]:
    status = cluster.node_status(name)
    assert status is not None
    return status


async def test_unread_client_reads_at_an_edge_share_the_node_budget(tmp_path: Path) -> None:
    args = ["--node-bytes", str(16 << 20)]  # 8 MiB for client connections
    async with (
        ProcessCluster(1, tmp_path, node_args=args) as cluster,
        OriginClient(cluster.origin_address, timeout=10) as client,
    ):
        await client.create_store("s")
        await client.put("s", "big", b"x" * VALUE)
        await serves(cluster, client, "before")
        edge = cluster.address_of("edge-0")

        def rss() -> int:
            return int(status_of(cluster, "edge-0")["process"]["rss_bytes"])

        before = rss()
        get = {"t": int(MsgType.REQUEST), "op": "get", "store": "s", "key": "big"}
        burst = b"".join(encode_frame({**get, "id": i}) for i in range(8))
        hogs: list[FramedStream] = []
        try:
            async with OriginClient(edge, timeout=10) as reader:
                for i in range(HOGS):
                    hog = await FramedStream.connect(
                        edge, LinkOptions(cluster_id="edgekv", node_id=f"hog{i}", role="client")
                    )
                    hogs.append(hog)
                    await hog.stream.send(burst)
                await wait_for(
                    lambda: (
                        status_of(cluster, "edge-0")["counters"]["node"].get("client_read_waits", 0)
                        >= HOGS // 2
                    )
                )
                await anyio.sleep(1.0)  # let them do their worst
                grown = rss() - before
                assert grown < 64 << 20, f"edge RSS grew by {grown / 2**20:.0f} MiB"
                with anyio.fail_after(10):  # a small read is still served meanwhile
                    assert await reader.get("s", "before") == b"before"
                await serves(cluster, client, "during")  # and gossip goes on
        finally:
            for hog in hogs:
                await anyio.aclose_forcefully(hog.stream)
        async with OriginClient(edge, timeout=10) as fresh:  # the budget is given back
            with anyio.fail_after(10):
                assert await fresh.get("s", "big") == b"x" * VALUE
