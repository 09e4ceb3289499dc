"""Admin HTTP API of an edge: reads, status and Prometheus metrics (ASGI and real loopback)."""

from __future__ import annotations

import base64
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from edgekv.errors import InvalidInput
from edgekv.node.admin_http import build_app
from edgekv.node.auth import load_tokens
from edgekv.node.edge import EdgeNode
from edgekv.testnet.simnet import SimNetwork
from test_edge_harness import FAST, OriginNode, origin_node, tcp_origin, wait_until


@pytest.fixture
async def net() -> AsyncIterator[SimNetwork]:
    network = SimNetwork()
    network.faults.set_default(latency=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.run)
        yield network
        nursery.cancel_scope.cancel()


async def _fill(origin: OriginNode) -> None:
    await origin.write({"op": "create_store", "store": "flags"})
    await origin.write({"op": "put", "store": "flags", "key": "greeting", "value": b"\x00hi\xff"})
    await origin.write({"op": "put", "store": "flags", "key": "feature:a", "value": b"1"})
    await origin.write({"op": "put", "store": "flags", "key": "feature:b", "value": b"2"})
    await origin.write(
        {"op": "zadd", "store": "flags", "key": "rank", "members": {b"alice": 3.0, b"bob": 1.5}}
    )


async def test_admin_endpoints(net: SimNetwork, autojump_clock: Any) -> None:
    async with (
        origin_node(net.transport("origin:1"), seed=3) as origin,
        EdgeNode(
            origin="origin:1",
            transport=net.transport("e1:1"),
            node_id="e1",
            config=FAST,
            rng=random.Random(3),
        ) as edge,
    ):
        await _fill(origin)
        await wait_until(lambda: edge.watermark == origin.watermark)
        transport = httpx.ASGITransport(app=build_app(edge))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
            r = await http.get("/v1/stores/flags/keys/greeting")
            assert r.status_code == 200 and r.content == b"\x00hi\xff"
            assert r.headers["content-type"] == "application/octet-stream"
            r = await http.get("/v1/stores/flags/keys/missing")
            assert r.status_code == 404
            r = await http.get("/v1/stores/nope/keys/greeting")
            assert r.status_code == 404 and r.json()["error"] == "store_not_found"
            r = await http.get("/v1/stores/flags/keys/rank")
            assert r.status_code == 409 and r.json()["error"] == "wrong_kind"
            r = await http.get("/v1/stores/flags/keys", params={"pattern": "feature:*"})
            assert r.json() == {"keys": ["feature:a", "feature:b"]}
            r = await http.get("/v1/stores/flags/keys", params={"limit": "1"})
            assert r.json() == {"keys": ["feature:a"]}
            r = await http.get("/v1/stores/flags/keys", params={"limit": "-3"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_input"
            r = await http.get("/v1/stores/flags/zsets/rank", params={"min": "2", "max": "inf"})
            assert r.json() == {"encoding": "utf-8", "members": [["alice", 3.0]]}
            r = await http.get("/v1/stores/flags/zsets/rank")
            assert r.json()["members"] == [["bob", 1.5], ["alice", 3.0]]
            r = await http.get("/v1/stores/flags/zsets/rank", params={"min": "nan"})
            assert r.status_code == 400
            r = await http.get("/v1/stores/flags/zsets/missing")
            assert r.json()["members"] == []

            r = await http.post("/v1/stores/flags/mget", json={"keys": ["greeting", "nope"]})
            assert r.json() == {"values": [base64.b64encode(b"\x00hi\xff").decode(), None]}
            r = await http.post("/v1/stores/flags/mget", json={"keys": []})
            assert r.json() == {"values": []}
            for bad in (b"{", b"[]", b'{"keys": "greeting"}', b'{"keys": [1]}'):
                r = await http.post("/v1/stores/flags/mget", content=bad)
                assert r.status_code == 400 and r.json()["error"] == "invalid_input", bad[:20]
            r = await http.post("/v1/stores/flags/mget", json={"keys": ["k"] * 10_001})
            assert r.status_code == 400 and "10000" in r.json()["message"]
            r = await http.post("/v1/stores/flags/mget", json={"keys": ["rank"]})
            assert r.status_code == 409 and r.json()["error"] == "wrong_kind"
            r = await http.post("/v1/stores/nope/mget", json={"keys": ["greeting"]})
            assert r.status_code == 404
            # a body well past the limit is refused while it streams in (1 MiB chunks: not all read)
            status, body = await _asgi_post(build_app(edge), "/v1/stores/flags/mget", 16)
            assert status == 413 and b"exceeds" in body

            status = (await http.get("/status")).json()
            assert status["node_id"] == "e1" and status["address"] == "e1:1"
            assert status["watermark"] == origin.watermark == 5
            assert status["lag_seqs"] == 0 and status["lag_ms"] == 0
            assert status["peers"]["origin:1"]["state"] == "alive"
            assert status["roots"]["flags"] == f"{origin.replica.roots()['flags']:032x}"
            assert status["counters"]["changes_applied"] >= 5
            assert set(status["antientropy"]) == {"rounds", "repairs"}
            assert status["propagation_ms"]["count"] >= 5

            r = await http.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = r.text
            assert 'edgekv_watermark{node="e1"} 5.0' in text
            assert 'edgekv_keys{node="e1"} 4.0' in text
            assert re.search(
                r'edgekv_messages_received_total\{node="e1",type="[A-Z_]+"\} [1-9]', text
            )
            assert re.search(r'edgekv_bytes_sent_total\{node="e1",type="[A-Z_]+"\} [1-9]', text)
            assert 'edgekv_propagation_latency_seconds_bucket{le="+Inf",node="e1"}' in text
            assert "# TYPE edgekv_propagation_latency_seconds histogram" in text
            assert 'edgekv_peers{node="e1",state="alive"} 1.0' in text
            assert re.search(r'edgekv_antientropy_rounds_total\{node="e1"\} \d+', text)
            assert re.search(r'edgekv_antientropy_repairs_total\{node="e1"\} \d+', text)
            for line in text.splitlines():  # every sample line is "name{labels} number"
                if not line.startswith("#"):
                    float(line.rsplit(" ", 1)[1])


async def _asgi_post(app: Any, path: str, mib: int) -> tuple[int, bytes]:
    """POST `mib` MiB to `app` straight through ASGI; (status, body) of the answer."""
    chunks = [{"type": "http.request", "body": b"[" * (1 << 20), "more_body": True}] * mib
    chunks.append({"type": "http.request", "body": b"", "more_body": False})
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "server": ("edge", 80),
        "client": ("test", 1),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert chunks, "the whole body was read"
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


async def test_admin_over_loopback_with_hypercorn() -> None:
    with trio.fail_after(20):
        async with (
            tcp_origin() as origin,
            EdgeNode(origin=origin.address, http="127.0.0.1:0", node_id="e1") as edge,
        ):
            await _fill(origin)
            await wait_until(lambda: edge.watermark == origin.watermark, within=10)
            assert edge.http_address is not None
            async with httpx.AsyncClient(base_url=f"http://{edge.http_address}") as http:
                r = await http.get("/v1/stores/flags/keys/feature:a")
                assert r.status_code == 200 and r.content == b"1"
                assert (await http.get("/status")).json()["watermark"] == 5
                assert "edgekv_watermark" in (await http.get("/metrics")).text
                r = await http.post("/v1/stores/flags/mget", json={"keys": ["feature:b"]})
                assert r.json() == {"values": [base64.b64encode(b"2").decode()]}


async def test_admin_tokens_over_loopback(tmp_path: Path) -> None:
    """With tokens on, store routes need read scope on the store, /status and /metrics any
    known token, and the OpenAPI document none (it says so)."""
    path = tmp_path / "tokens"
    path.write_text("# admin HTTP tokens\nreader=read:flags\n\nother = read:other\n")
    tokens = load_tokens(path)
    assert tokens == {"reader": "read:flags", "other": "read:other"}
    with trio.fail_after(20):
        async with (
            tcp_origin() as origin,
            EdgeNode(origin=origin.address, http="127.0.0.1:0", tokens=tokens) as edge,
        ):
            await _fill(origin)
            await wait_until(lambda: edge.watermark == origin.watermark, within=10)
            reader = {"authorization": "Bearer reader"}
            other = {"authorization": "Bearer other"}
            async with httpx.AsyncClient(base_url=f"http://{edge.http_address}") as http:
                for route in ("/v1/stores/flags/keys/feature:a", "/v1/stores/flags/keys"):
                    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "x"}):
                        r = await http.get(route, headers=headers)
                        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
                        assert r.headers["www-authenticate"] == "Bearer"
                    assert (await http.get(route, headers=other)).status_code == 401
                    assert (await http.get(route, headers=reader)).status_code == 200
                r = await http.post("/v1/stores/flags/mget", json={"keys": ["feature:a"]})
                assert r.status_code == 401
                r = await http.post(
                    "/v1/stores/flags/mget", json={"keys": ["feature:a"]}, headers=reader
                )
                assert r.json() == {"values": [base64.b64encode(b"1").decode()]}
                for route in ("/status", "/metrics"):
                    assert (await http.get(route)).status_code == 401
                    assert (await http.get(route, headers=other)).status_code == 200
                doc = (await http.get("/v1/openapi.json")).json()
                assert "bearer" in doc["components"]["securitySchemes"]
                get = doc["paths"]["/v1/stores/{store}/keys/{key}"]["get"]
                assert get["security"] == [{"bearer": []}] and "401" in get["responses"]
    for bad in ("=read:x", "token", "t=shout:x"):
        path.write_text(bad)
        with pytest.raises(InvalidInput):
            load_tokens(path)
