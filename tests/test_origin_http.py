"""The origin's HTTP API: routes, raw bytes bodies, JSON batches, tokens, every error path."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from edgekv.origin.server import Origin

TOKENS = {"admin": "write:*", "reader": "read:flags"}


@asynccontextmanager
async def http_client(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Origin, httpx.AsyncClient]]:
    with trio.fail_after(20):
        async with Origin(data_dir=tmp_path, listen=None, http="127.0.0.1:0", **kw) as origin:
            url = f"http://{origin.http_address}"
            async with httpx.AsyncClient(base_url=url) as h:
                yield origin, h


def error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"] == code
    assert r.json()["message"]


async def test_routes(tmp_path: Path) -> None:
    async with http_client(tmp_path) as (origin, h):
        assert (await h.put("/v1/stores/flags")).status_code == 201
        assert (await h.get("/v1/stores")).json() == {"stores": ["flags"]}
        r = await h.put("/v1/stores/flags/keys/feature:a", content=b"\x00\xffraw")
        assert r.json()["seq"] == 2
        r = await h.get("/v1/stores/flags/keys/feature:a")
        assert r.content == b"\x00\xffraw" and r.headers["x-edgekv-seq"] == "2"
        r = await h.put("/v1/stores/flags/keys/tmp", content=b"t", params={"ttl": "30"})
        assert "x-edgekv-expires-at" in (await h.get("/v1/stores/flags/keys/tmp")).headers
        assert (await h.get("/v1/stores/flags/keys", params={"pattern": "feature:*"})).json() == {
            "keys": ["feature:a"]
        }
        ops = [
            {"op": "zadd", "key": "rank", "members": {"alice": 10, "bob": 5.5}},
            {"op": "bf_add", "key": "blocked", "items": ["10.0.0.1"], "capacity": 100},
            {
                "op": "put",
                "key": "b64",
                "value": base64.b64encode(b"\x01\x02").decode(),
                "encoding": "base64",
            },
            {"op": "delete", "key": "missing"},
        ]
        r = await h.post("/v1/stores/flags/batch", json={"ops": ops})
        assert r.json()["seqs"] == [4, 5, 6, None]
        r = await h.get("/v1/stores/flags/zsets/rank", params={"min": 0, "max": 6})
        assert r.json() == {"members": [{"member": "bob", "score": 5.5}]}
        r = await h.get("/v1/stores/flags/blooms/blocked", params={"item": "10.0.0.1"})
        assert r.json() == {"exists": True}
        assert (await h.get("/v1/stores/flags/keys/b64")).content == b"\x01\x02"
        r = await h.put("/v1/stores/flags/keys/b64", content=b"x", params={"if_version": 6})
        assert r.json()["seq"] == 7
        error(
            await h.put("/v1/stores/flags/keys/b64", content=b"y", params={"if_version": 6}),
            409,
            "version_mismatch",
        )
        assert (await h.delete("/v1/stores/flags/keys/b64")).json()["seq"] == 8
        assert (await h.delete("/v1/stores/flags/keys/b64")).json()["seq"] is None
        error(await h.get("/v1/stores/flags/keys/b64"), 404, "not_found")
        doc = (await h.get("/v1/openapi.json")).json()
        assert doc["openapi"] == "3.1.0" and "/v1/stores/{store}/batch" in doc["paths"]
        assert "/v1/status" in doc["paths"] and "/metrics" in doc["paths"]
        assert "securitySchemes" not in doc["components"]  # tokens off: no security anywhere
        operations = [op for item in doc["paths"].values() for op in item.values()]
        assert all("security" not in op and "401" not in op["responses"] for op in operations)
        status = (await h.get("/v1/status")).json()
        assert status["role"] == "origin" and status["watermark"] == 8 == status["log"]["high"]
        assert status["log"]["commits"] == 8 and status["log"]["flushes"] >= 1
        assert status["stores"] == ["flags"] and status["keys"] == 5  # b64's tombstone included
        text = (await h.get("/metrics")).text
        node = origin.node_id
        assert node.startswith("origin-") and (tmp_path / "node-id").read_text().strip() == node
        assert f'edgekv_watermark{{node="{node}"}} 8.0' in text
        assert f'edgekv_origin_commits_total{{node="{node}"}} 8.0' in text
        assert "# TYPE edgekv_origin_log_flushes_total counter" in text
        assert (await h.delete("/v1/stores/flags")).status_code == 200
        assert (await h.get("/v1/stores")).json() == {"stores": []}


async def test_error_paths(tmp_path: Path) -> None:
    async with http_client(tmp_path) as (_, h):
        await h.put("/v1/stores/s")
        error(await h.put("/v1/stores/s/keys/" + "k" * 513, content=b"v"), 400, "invalid_input")
        error(
            await h.put("/v1/stores/s/keys/k", content=b"v" * ((1 << 20) + 1)),
            413,
            "payload_too_large",
        )
        error(await h.put("/v1/stores/bad!name"), 400, "invalid_input")
        error(await h.put("/v1/stores/bad!name/keys/k", content=b"v"), 400, "invalid_input")
        error(await h.put("/v1/stores/s"), 409, "store_exists")
        error(await h.put("/v1/stores/nope/keys/k", content=b"v"), 404, "store_not_found")
        error(await h.get("/v1/stores/nope/keys/k"), 404, "store_not_found")
        error(
            await h.put("/v1/stores/s/keys/k", content=b"v", params={"ttl": "soon"}),
            400,
            "invalid_input",
        )
        error(
            await h.put("/v1/stores/s/keys/k", content=b"v", params={"ttl": "-5"}),
            400,
            "invalid_input",
        )
        for body in (
            b"{not json",
            b"[]",
            b'{"ops": 5}',
            b'{"ops": []}',
            b'{"ops": [7]}',
            b"[" * 100000,
        ):
            error(await h.post("/v1/stores/s/batch", content=body), 400, "invalid_input")
        bad_ops: list[dict[str, Any]] = [
            {"op": "zadd", "key": "z", "members": {"m": "NaN"}},
            {"op": "zadd", "key": "z", "members": {"m": float("nan")}},
            {"op": "put", "key": "k", "value": "!!", "encoding": "base64"},
            {"op": "put", "key": "k", "value": "v", "encoding": "rot13"},
            {"op": "explode", "key": "k"},
            {"op": "bf_add", "key": "b", "items": ["x"], "error_rate": 5},
        ]
        for op in bad_ops:
            content = json.dumps({"ops": [op]}).encode()  # Python's json writes NaN literally
            r = await h.post(
                "/v1/stores/s/batch", content=content, headers={"content-type": "application/json"}
            )
            error(r, 400, "invalid_input")
        error(await h.get("/v1/stores/s/zsets/z", params={"min": "nan"}), 400, "invalid_input")
        error(await h.get("/v1/stores/s/zsets/z", params={"min": "low"}), 400, "invalid_input")
        r = await h.post(
            "/v1/stores/s/batch", json={"ops": [{"op": "zadd", "key": "z", "members": {"m": 1}}]}
        )
        assert r.status_code == 200
        error(await h.put("/v1/stores/s/keys/z", content=b"v"), 409, "wrong_kind")
        error(await h.get("/v1/stores/s/keys/z"), 409, "wrong_kind")
        # the origin keeps serving
        assert (await h.put("/v1/stores/s/keys/ok", content=b"v")).status_code == 200


async def test_tokens(tmp_path: Path) -> None:
    async with http_client(tmp_path, tokens=TOKENS) as (_, h):
        admin = {"authorization": "Bearer admin"}
        reader = {"authorization": "Bearer reader"}
        assert (await h.put("/v1/stores/flags", headers=admin)).status_code == 201
        error(await h.put("/v1/stores/other"), 401, "unauthorized")
        error(await h.get("/v1/stores"), 401, "unauthorized")
        error(
            await h.get("/v1/stores", headers={"authorization": "Bearer wrong"}),
            401,
            "unauthorized",
        )
        for odd in ("Basic abc", "Bearer", "Token admin", "bearer", "admin", "Bearer admin x"):
            error(await h.get("/v1/stores", headers={"authorization": odd}), 401, "unauthorized")
        error(
            await h.put("/v1/stores/flags/keys/k", content=b"v", headers=reader),
            401,
            "unauthorized",
        )
        assert (
            await h.put("/v1/stores/flags/keys/k", content=b"v", headers=admin)
        ).status_code == 200
        assert (await h.get("/v1/stores/flags/keys/k", headers=reader)).content == b"v"
        error(await h.get("/v1/stores/flags/keys/k"), 401, "unauthorized")
        assert (await h.get("/v1/stores", headers=reader)).json() == {"stores": ["flags"]}
        doc = (await h.get("/v1/openapi.json")).json()  # public, and says who needs what
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, item in doc["paths"].items():
            for op in item.values():
                public = path == "/v1/openapi.json"
                assert op["security"] == ([] if public else [{"bearer": []}])
                assert ("401" in op["responses"]) is not public
        for path in ("/v1/status", "/metrics"):  # any known token, none without one
            error(await h.get(path), 401, "unauthorized")
            assert (await h.get(path, headers=reader)).status_code == 200
