"""One fd budget for every port and outbound connection of a node, over real sockets (#12).

The process test (test_limits_fds) floods a real node's two ports past its fd limit.  Here a
gossip port and an HTTP port share one `FdBudget` whose fd limit is a small number: the
connections of both count in it, one arriving with the budget full is closed at once on
either port (counted), and closing one on one port makes room on the other.  Outbound dials
draw on the same count, may use a quarter of the reserve beyond it, fail at once past that
(counted, the frames dropped) except to the node's origins, and give their descriptor back
when they close.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edgekv.node.fdbudget import FdBudget, FdsExhausted
from edgekv.node.httpapi import HttpLimits
from edgekv.node.httpserve import bind_socket, serve_app, socket_address
from edgekv.node.limits import NetLimits
from edgekv.node.tcp import TcpTransport
from test_limits_budget import until
from test_limits_caps import closed_by_server, closing_all, silent

CLUSTER = "fds"


async def hello(_request: Any) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def test_the_gossip_port_and_an_http_port_share_one_budget() -> None:
    fds = FdBudget(0, limit=lambda: 4)
    limits = NetLimits(handshake_timeout=60)
    sock = bind_socket("127.0.0.1:0")
    http = socket_address(sock)
    with anyio.fail_after(30):
        async with (
            closing_all(),
            TcpTransport.serve(cluster_id=CLUSTER, node_id="n", limits=limits, fds=fds) as node,
            trio.open_nursery() as server,
        ):
            app = Starlette(routes=[Route("/", hello)])
            await server.start(
                partial(serve_app, app, sock, limits=HttpLimits(head_timeout=60), fds=fds)
            )
            assert node.fds is fds
            gossip = [await silent(node.address) for _ in range(2)]
            web = [await silent(http) for _ in range(2)]
            await until(lambda: fds.held == 4)
            assert (fds.inbound, fds.outbound) == (4, 0)
            # each port is far below its own caps: the process's budget refuses
            over = [await silent(node.address), await silent(http)]
            assert [await closed_by_server(s) for s in over] == [True, True]
            assert fds.refused_inbound == 2 and node.stats.refused_connections == 1
            assert not any([await closed_by_server(s, 0.3) for s in gossip + web])
            await gossip[0].aclose()  # room on one port is room on the other
            await until(lambda: fds.held == 3)
            web.append(await silent(http))
            assert not await closed_by_server(web[-1], 0.3)
            assert fds.held == 4 and fds.refused_inbound == 2 and fds.peak == 4
            for s in gossip[1:] + web:
                await s.aclose()
            # given back at once on both ports, though the HTTP head timeout is 60 s
            await until(lambda: fds.held == 0)
            server.cancel_scope.cancel()
    assert fds.held == 0


async def slow(_request: Any) -> PlainTextResponse:
    await anyio.sleep(0.3)
    return PlainTextResponse("late")


async def answer_of(stream: anyio.abc.SocketStream, request: bytes, *, eof: bool) -> bytes:
    """What the server sends back to `request` on `stream` (to its EOF with `eof`; else until
    the body "hi" has arrived, the connection kept alive)."""
    await stream.send(request)
    if eof:
        await stream.send_eof()  # the client's half-close: it only reads from now on
    data = b""
    with anyio.fail_after(10):
        while eof or not data.endswith(b"hi"):
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return data


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_connection_its_client_closed_gives_its_descriptor_back_at_once(
    backend: str,
) -> None:
    """Hypercorn keeps a connection whose client has closed it (before any request, after an
    answer, during a request) or that sent garbage, until its keep-alive timer (the head
    timeout, 60 s here) runs out: its descriptor and its place in the fd budget with it, so a
    flood that went still filled the budget (httpserve rule 2).  Here each is given back at
    once, and a client that half-closes after its request still gets the answer."""
    get = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"

    async def main() -> None:
        fds = FdBudget(0, limit=lambda: 1000)
        sock = bind_socket("127.0.0.1:0")
        host, port = sock.getsockname()[:2]
        app = Starlette(routes=[Route("/", hello), Route("/slow", slow)])
        limits = HttpLimits(head_timeout=60)
        stop = anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(partial(serve_app, app, sock, shutdown=stop, limits=limits, fds=fds))
                # closed before any request
                quiet = [await anyio.connect_tcp(host, port) for _ in range(3)]
                await until(lambda: fds.inbound == 3)
                for s in quiet:
                    await s.aclose()
                await until(lambda: fds.inbound == 0, 5)
                # closed after an answer (kept alive until then)
                async with await anyio.connect_tcp(host, port) as s:
                    assert (await answer_of(s, get, eof=False)).startswith(b"HTTP/1.1 200")
                    assert fds.inbound == 1
                await until(lambda: fds.inbound == 0, 5)
                # half-closed during its request: still answered, then closed
                async with await anyio.connect_tcp(host, port) as s:
                    answer = await answer_of(s, get.replace(b"/", b"/slow", 1), eof=True)
                    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"late")
                await until(lambda: fds.inbound == 0, 5)
                # garbage: a 400, closed by the server
                async with await anyio.connect_tcp(host, port) as s:
                    answer = await answer_of(s, b"NOT HTTP\r\n\r\n", eof=False)
                    assert answer.startswith(b"HTTP/1.1 400")
                await until(lambda: fds.inbound == 0, 5)
                assert fds.peak == 3 and fds.refused_inbound == 0
                stop.set()

    anyio.run(main, backend=backend)


async def test_outbound_dials_draw_on_the_budget_and_fail_cleanly_past_it() -> None:
    # inbound stops at 2 connections, outbound a quarter of the reserve (1) beyond
    fds = FdBudget(4, limit=lambda: 6)
    with anyio.fail_after(30):
        async with (
            TcpTransport.serve(cluster_id=CLUSTER, node_id="a", fds=fds) as a,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="b") as b,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="c") as c,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="d") as d,
        ):
            first = await a.dialer.connect(b.address)
            second = await a.dialer.connect(c.address)
            third = await a.dialer.connect(d.address)  # within the quarter of the reserve
            assert fds.outbound == 3 and fds.limit() == 2
            with pytest.raises(FdsExhausted):
                await a.dialer.connect(b.address)
            assert fds.refused_outbound == 1 and fds.outbound == 3
            a.origins = frozenset({b.address})  # a dial to an origin is never refused
            origin = await a.dialer.connect(b.address)
            assert fds.outbound == 4 and fds.refused_outbound == 1
            for conn in (first, second, third, origin):
                await conn.abort()
            await first.abort()  # given back once, however often it is closed
            assert fds.outbound == 0
            # the transport's senders: a dial refused is a dropped frame, counted, no crash
            a.origins = frozenset()
            held = [await a.dialer.connect(x.address) for x in (b, c, d)]
            await a.send(b.address, {"t": 3, "hello": 1})
            await until(lambda: fds.refused_outbound == 2 and a.stats.dropped >= 1)
            for conn in held:
                await conn.aclose()
            assert fds.outbound == 0
            # room again: sent (to a node that never had a's connections refused its probe)
            async with TcpTransport.serve(cluster_id=CLUSTER, node_id="e") as e:
                await a.send(e.address, {"t": 3, "hello": 2})
                envelope = await e.receive()
                assert envelope.peer == a.address and fds.outbound == 1


async def test_a_flood_cannot_take_the_descriptors_a_dial_needs() -> None:
    # inbound connections fill the budget; the node still dials a peer
    fds = FdBudget(4, limit=lambda: 6)
    limits = NetLimits(handshake_timeout=60)
    with anyio.fail_after(30):
        async with (
            closing_all(),
            TcpTransport.serve(cluster_id=CLUSTER, node_id="a", limits=limits, fds=fds) as a,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="b") as b,
        ):
            await a.send(b.address, {"t": 3, "hello": 1})  # b confirms a's address once
            assert (await b.receive()).peer == a.address
            a.disconnect(b.address)  # the next frame needs a new connection
            await until(lambda: fds.held == 0)
            flood = [await silent(a.address) for _ in range(4)]
            await until(lambda: a.stats.refused_connections == 2)
            assert fds.inbound == 2 and fds.refused_inbound == 2
            await a.send(b.address, {"t": 3, "hello": 2})
            assert (await b.receive()).peer == a.address
            assert fds.outbound == 1 and fds.held == 3 and fds.refused_outbound == 0
            for s in flood:
                await s.aclose()
