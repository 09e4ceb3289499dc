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
            for s in gossip[1:]:
                await s.aclose()
            await until(lambda: fds.held == 3)
            # (hypercorn notices a client's close before any request only at its head
            # timeout: the server's end closes them)
            server.cancel_scope.cancel()
    assert fds.held == 0


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
