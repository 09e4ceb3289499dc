"""The gossip port's connection caps, over real sockets (issue #12).

The process tests (test_limits_process) flood a node past its fd limit, where the cap that
refuses is the one derived from that limit.  Here each of the other caps of `NetLimits` is
hit on its own: connections from one source address (`max_per_address`), in total
(`max_connections`) and still in their handshake (`max_handshaking`).  What is over a cap is
closed at once and counted; the counts go back to zero when the connections close, and the
port takes new ones again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from edgekv.node.limits import NetLimits
from edgekv.node.tcp import TcpTransport, parse_address
from test_limits_budget import until

pytestmark = pytest.mark.anyio
CLUSTER = "caps"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def closed_by_server(stream: anyio.abc.SocketStream, wait: float = 5.0) -> bool:
    """Whether the server closes `stream` within `wait` s (it never sends first)."""
    with anyio.move_on_after(wait):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
    return False


OPENED: list[anyio.abc.SocketStream] = []


@asynccontextmanager
async def closing_all() -> AsyncIterator[None]:
    """Whatever a test leaves open (a failed assertion) is closed."""
    try:
        yield
    finally:
        for s in OPENED:
            await anyio.aclose_forcefully(s)
        OPENED.clear()


async def silent(address: str, source: str = "127.0.0.1") -> anyio.abc.SocketStream:
    """A connection from `source` that never sends a byte (so it stays in its handshake)."""
    host, port = parse_address(address)
    stream = await anyio.connect_tcp(host, port, local_host=source)
    OPENED.append(stream)
    return stream


async def test_per_address_and_total_caps_refuse_the_excess_and_recover() -> None:
    limits = NetLimits(max_per_address=3, max_connections=4, handshake_timeout=60)
    with anyio.fail_after(30):
        async with (
            closing_all(),
            TcpTransport.serve(cluster_id=CLUSTER, node_id="n", limits=limits) as node,
        ):
            assert node.caps.cap() == 4  # (the fd limit is far above)
            one = [await silent(node.address) for _ in range(5)]
            await until(lambda: node.stats.refused_connections == 2)
            assert node.caps.per_address == {"127.0.0.1": 3}
            assert [await closed_by_server(s, 0.3) for s in one[:3]] == [False] * 3
            assert [await closed_by_server(s) for s in one[3:]] == [True] * 2
            two = [await silent(node.address, "127.0.0.2") for _ in range(2)]
            await until(lambda: node.stats.refused_connections == 3)  # 4 in total
            assert not await closed_by_server(two[0], 0.3) and await closed_by_server(two[1])
            assert node.caps.connections == 4
            for s in one + two[1:]:
                await s.aclose()
            await until(lambda: node.caps.connections == 1)
            assert node.caps.per_address == {"127.0.0.2": 1}
            again = [await silent(node.address) for _ in range(3)]
            await anyio.sleep(0.3)
            assert node.caps.connections == 4 and node.stats.refused_connections == 3
            for s in again + two[:1]:
                await s.aclose()
            await until(lambda: node.caps.connections == 0)
            assert node.caps.per_address == {} and node.caps.handshaking == 0


async def test_handshaking_cap_refuses_silent_connections_not_authenticated_ones() -> None:
    limits = NetLimits(max_handshaking=2, handshake_timeout=60)
    with anyio.fail_after(30):
        async with (
            closing_all(),
            TcpTransport.serve(cluster_id=CLUSTER, node_id="n", limits=limits) as node,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="peer") as peer,
        ):
            held = [await silent(node.address) for _ in range(3)]
            await until(lambda: node.stats.refused_connections == 1)
            assert node.caps.handshaking == 2 and await closed_by_server(held[2])
            await held[0].aclose()  # a slot for the peer's connection
            await until(lambda: node.caps.handshaking == 1)
            await peer.send(node.address, {"t": 3, "hello": 1})
            envelope = await node.receive()
            assert envelope.peer == peer.address
            # the peer's connection left the handshake count once authenticated
            assert node.caps.handshaking == 1 and node.caps.connections == 2
            held.append(await silent(node.address))  # so a silent one fits again
            await anyio.sleep(0.3)
            assert node.caps.handshaking == 2 and node.stats.refused_connections == 1
            for s in held:
                await s.aclose()
            await until(lambda: node.caps.handshaking == 0 and node.caps.connections == 1)
