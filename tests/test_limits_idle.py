"""Idle connections are closed on every port of a node (issue #12), over real sockets.

Issue #12: 1,000 connections that completed the handshake and then stayed idle were all still
open 30 s later.  The origin's client connections are checked in test_limits_process; here the
gossip port's authenticated peer connections and an edge's client-read connections
(node/clientreads.py) are closed after `NetLimits.idle_timeout`, and what a client-read
connection held of the node's budget is given back.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from edgekv.gossip.wire import PeerIdentity
from edgekv.node.clientreads import ReadNode, serve_reads
from edgekv.node.limits import NetLimits
from edgekv.node.tcp import FramedStream, LinkOptions, TcpTransport

pytestmark = pytest.mark.anyio
CLUSTER = "idle"
IDLE = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def closed_by_server(fs: FramedStream) -> bool:
    try:
        await fs.stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return True
    return False


async def test_idle_gossip_and_client_read_connections_are_closed() -> None:
    limits = NetLimits(idle_timeout=IDLE)
    nothing = cast(ReadNode, object())  # a silent client asks for nothing

    async def reads(peer: PeerIdentity, fs: FramedStream) -> None:
        await serve_reads(nothing, fs, IDLE, fs.max_frame_size, budget=server.client_budget)

    with anyio.fail_after(10):
        async with (
            TcpTransport.serve(
                cluster_id=CLUSTER, node_id="edge", limits=limits, on_client=reads
            ) as server,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="peer") as peer,
        ):
            # a peer that listens where it claims (confirmed), then never sends a frame
            gossip = await peer.dialer.connect(server.address)
            client = await FramedStream.connect(
                server.address, LinkOptions(cluster_id=CLUSTER, node_id="c", role="client")
            )
            await client.stream.send(b"\0\0")  # half a frame header: held, then dropped
            start = anyio.current_time()
            async with gossip, client:
                results: list[Any] = []

                async def wait_closed(fs: FramedStream) -> None:
                    results.append(await closed_by_server(fs))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_closed, gossip)
                    tg.start_soon(wait_closed, client)
            assert results == [True, True]
            assert anyio.current_time() - start >= IDLE * 0.9
            assert server.client_budget.used == 0  # the half header was given back
