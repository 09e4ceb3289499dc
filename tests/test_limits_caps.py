"""The gossip port's connection caps, over real sockets (issue #12).

The process tests (test_limits_process) flood a node past its fd limit, where the cap that
refuses is the one derived from that limit.  Here each of the other caps of `NetLimits` is
hit on its own: connections from one source address (`max_per_address`), in total
(`max_connections`) and still in their handshake (`max_handshaking`).  What is over a cap is
closed at once and counted; the counts go back to zero when the connections close, and the
port takes new ones again.  The accept loop every port shares (the gossip port, the HTTP ports
under trio and under asyncio) counts accept errors and backs off, in virtual time.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import trio

from edgekv.gossip.transport import TransportStats
from edgekv.node.limits import NetLimits
from edgekv.node.listener import ConnectionCaps, accept_each
from edgekv.node.tcp import TcpTransport, parse_address
from test_limits_budget import until

CLUSTER = "caps"


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


async def test_accept_errors_are_counted_and_backed_off_and_the_loop_lives(
    autojump_clock: Any,
) -> None:
    def fails(code: int) -> OSError:
        return OSError(code, errno.errorcode[code])

    wrapped = anyio.BrokenResourceError()  # how a listener may report it
    wrapped.__cause__ = fails(errno.EMFILE)
    script: list[BaseException | tuple[str, str] | None] = [
        fails(errno.EMFILE),
        fails(errno.ENFILE),
        fails(errno.ENOBUFS),
        wrapped,
    ]
    script += [fails(errno.EMFILE)] * 3  # the back-off stops doubling at 1 s
    script += [("c1", "h"), fails(errno.EMFILE), ("c2", "h"), None]
    times: list[float] = []

    async def accept() -> tuple[str, str] | None:
        await anyio.lowlevel.checkpoint()
        times.append(trio.current_time())
        item = script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    started: list[str] = []
    closed: list[str] = []

    async def close(conn: str) -> None:
        closed.append(conn)

    stats = TransportStats()
    caps = ConnectionCaps(10, 1, 10, accept_backoff=0.1)  # one connection per address
    await accept_each(
        accept, lambda c, h: started.append(c), close, caps=caps, stats=stats, name=lambda: "t"
    )
    assert stats.accept_errors == 8 and not script
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    # doubling from accept_backoff up to 1 s; after a success it starts again at 0.1 s
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 0.0, 0.1, 0.0]
    assert started == ["c1"] and closed == ["c2"] and stats.refused_connections == 1
