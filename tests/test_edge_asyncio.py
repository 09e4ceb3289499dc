"""An asyncio application (Starlette) that embeds an EdgeNode and serves reads from it.

Runs the whole stack under asyncio (anyio's asyncio backend): a TCP origin, the embedded edge,
and the app exercised with httpx.AsyncClient over ASGITransport.
"""

from __future__ import annotations

import asyncio

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekv.errors import StoreNotFound
from edgekv.node.edge import EdgeNode
from edgekv.node.kvstore import KvStore
from test_edge_harness import tcp_origin, wait_until


def make_app(node: EdgeNode) -> Starlette:
    """What a user writes: read locally on GET, write through the edge on PUT."""

    async def get_flag(request: Request) -> Response:
        try:
            value = node.open("flags").get(request.path_params["name"])
        except StoreNotFound:
            return JSONResponse({"error": "no store"}, 503)
        return JSONResponse({"value": None if value is None else value.decode()})

    async def put_flag(request: Request) -> Response:
        version = await node.open("flags").put(request.path_params["name"], await request.body())
        return JSONResponse({"seq": version.seq})

    return Starlette(
        routes=[
            Route("/flags/{name}", get_flag, methods=["GET"]),
            Route("/flags/{name}", put_flag, methods=["PUT"]),
        ]
    )


async def _main() -> None:
    assert asyncio.get_running_loop() is not None
    with anyio.fail_after(20):
        async with tcp_origin() as origin:
            await origin.write({"op": "create_store", "store": "flags"})
            await origin.write({"op": "put", "store": "flags", "key": "dark", "value": b"on"})
            async with EdgeNode(origin=origin.address, node_id="asyncio-edge") as node:
                await wait_until(lambda: node.watermark == 2, within=10)
                assert KvStore.open("flags").get("dark") == b"on"
                transport = httpx.ASGITransport(app=make_app(node))
                async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                    assert (await http.get("/flags/dark")).json() == {"value": "on"}
                    assert (await http.get("/flags/none")).json() == {"value": None}
                    r = await http.put("/flags/beta", content=b"yes")
                    assert r.json() == {"seq": 3}
                    # read-your-writes: the write is visible here as soon as PUT returned
                    assert (await http.get("/flags/beta")).json() == {"value": "yes"}
                # and it reaches the origin's replica and back through gossip
                await wait_until(lambda: origin.watermark == 3 and node.watermark == 3, within=10)


def test_embedded_in_an_asyncio_starlette_app() -> None:
    anyio.run(_main, backend="asyncio")
