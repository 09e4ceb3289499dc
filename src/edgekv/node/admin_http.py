"""The edge's admin HTTP API (starlette, served by hypercorn under trio or asyncio).

Read-only: local reads of the replica, node status and Prometheus metrics.  Writes go through
the origin's API, never here.  The routes are a `httpapi` table, which also gives the OpenAPI
3.1 document served at `GET /v1/openapi.json`:

    GET /v1/stores/{store}/keys/{key}            raw value bytes; 404 when missing
    GET /v1/stores/{store}/keys?pattern=&limit=  JSON {"keys": [...]} (glob, default "*")
    GET /v1/stores/{store}/zsets/{key}?min=&max= JSON {"encoding", "members": [[member, score]]}
    GET /v1/stores/{store}/blooms/{key}?item=    JSON {"exists": bool}
    POST /v1/stores/{store}/mget                 JSON {"keys": [...]} -> {"values": [...]}: each
                                                 value base64, null when missing (one request
                                                 for many keys, at most MAX_MGET_KEYS)
    GET /status                                  JSON node status (`EdgeNode.status()`)
    GET /metrics                                 Prometheus text format 0.0.4

With tokens configured (`EdgeNode(tokens=...)`), store routes need a token with read scope on
the store and /status and /metrics any known token, as at the origin.  Errors are JSON
`{"error": code, "message": ...}` with a 4xx status.  The path and query parameters defined
here (STORE, KEY, ...) are shared with the origin's API.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response

from edgekv.crdt.ops import STORE_NAME
from edgekv.node.auth import TokenAuth
from edgekv.node.httpapi import (
    JSON_TYPE,
    OCTETS,
    Body,
    Call,
    HttpApi,
    HttpLimits,
    Operation,
    Param,
    Reply,
)
from edgekv.node.httpserve import bind_socket, serve_app, socket_address
from edgekv.node.kvstore import KvStore

__all__ = ["AdminNode", "bind_socket", "build_api", "build_app", "serve_app", "socket_address"]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SCAN_LIMIT = 100_000
MAX_MGET_KEYS = 10_000
MAX_KEY_CHARS = 512  # keys are at most 512 bytes of UTF-8 (`crdt.Limits`), so at most 512 chars
MAX_PATTERN = 4 * MAX_KEY_CHARS

# -- parameters shared by the edge's and the origin's APIs ---------------------------------------

STORE = Param(
    "store",
    "path",
    "string",
    "a store name; `.` and `..` are path segments, not addressable in a URL",
    {"minLength": 1, "maxLength": 64, "pattern": f"^{STORE_NAME.pattern}$"}
    | {"not": {"enum": [".", ".."]}},
    example="flags",
)
KEY_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS}
KEY = Param(
    "key",
    "path",
    "string",
    "a key: at most 512 bytes of UTF-8 (writes refuse longer ones); it may hold `/`, but no "
    "path segment of it may be `.` or `..` (clients resolve those away)",
    {"minLength": 1, "maxLength": MAX_KEY_CHARS, "not": {"pattern": r"(^|/)\.\.?(/|$)"}},
    example="greeting",
    slashes=True,
)


def pattern_param(max_chars: int = MAX_PATTERN) -> Param:
    return Param(
        "pattern",
        "query",
        "string",
        "Redis-style glob over keys (`*`, `?`, `[a-z]`, `\\x`); default `*`",
        {"maxLength": max_chars},
        example="feature:*",
    )


LIMIT = Param(
    "limit",
    "query",
    "integer",
    "at most this many keys, in key order",
    {"minimum": 1, "maximum": MAX_SCAN_LIMIT},
    example=100,
)
INF_WORDS = ("-inf", "+inf", "inf")
MIN_SCORE = Param(
    "min", "query", "number", "lowest score, inclusive (default -inf)", words=INF_WORDS, example=0
)
MAX_SCORE = Param(
    "max",
    "query",
    "number",
    "highest score, inclusive (default +inf)",
    words=INF_WORDS,
    example=100,
)
ITEM = Param(
    "item", "query", "string", "the item (its UTF-8 bytes)", required=True, example="10.0.0.1"
)
STATUS_REPLY = Reply(
    200, "node status", schema={"type": "object"}, example={"node_id": "edge-1", "watermark": 42}
)
EXISTS_REPLY = Reply(
    200,
    "whether the filter may hold the item (false for a missing key)",
    schema={
        "type": "object",
        "required": ["exists"],
        "properties": {"exists": {"type": "boolean"}},
    },
    example={"exists": True},
)
KEYS_REPLY = Reply(
    200,
    "matching keys in order",
    schema={
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "string"}}},
    },
    example={"keys": ["feature:a", "feature:b"]},
)
STORE_404 = "no such store"
KIND_409 = "the key holds another kind of value (`wrong_kind`)"


def metrics_operation(render: Callable[[], str]) -> Operation:
    """GET /metrics: Prometheus text (format 0.0.4), for any known token."""

    async def metrics(call: Call) -> Response:
        return PlainTextResponse(render(), media_type=PROMETHEUS_TYPE)

    example = '# TYPE edgekv_watermark gauge\nedgekv_watermark{node="edge-1"} 42.0\n'
    reply = Reply(200, "Prometheus text", "text/plain", schema={"type": "string"}, example=example)
    return Operation("GET", "/metrics", "metrics", "Prometheus metrics", metrics, reply, "known")


def score_bounds(params: dict[str, Any]) -> tuple[float, float]:
    """The (min, max) of a score-range query (the words "-inf"/"+inf"/"inf" included)."""
    return float(params.get("min", -math.inf)), float(params.get("max", math.inf))


class AdminNode(Protocol):
    """What the admin API reads from a node."""

    def open(self, name: str) -> KvStore: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


def _zrange_json(members: list[tuple[bytes, float]]) -> dict[str, Any]:
    try:
        out: list[list[Any]] = [[m.decode(), s] for m, s in members]
        encoding = "utf-8"
    except UnicodeDecodeError:
        out = [[base64.b64encode(m).decode(), s] for m, s in members]
        encoding = "base64"
    for pair in out:  # JSON has no infinities
        if math.isinf(pair[1]):
            pair[1] = "+inf" if pair[1] > 0 else "-inf"
    return {"encoding": encoding, "members": out}


def build_api(
    node: AdminNode, auth: TokenAuth | None = None, limits: HttpLimits | None = None
) -> HttpApi:
    """The route table (and document) of the admin API over `node`."""
    limits = limits or HttpLimits()

    async def get_key(call: Call) -> Response:
        value = node.open(call.params["store"]).get(call.params["key"])
        if value is None:
            return JSONResponse({"error": "not_found", "message": "no such key"}, 404)
        return Response(value, media_type=OCTETS)

    async def scan(call: Call) -> Response:
        store = node.open(call.params["store"])
        pattern = call.params.get("pattern", "*")
        return JSONResponse(
            {"keys": store.scan(pattern, limit=call.params.get("limit", MAX_SCAN_LIMIT))}
        )

    async def zrange(call: Call) -> Response:
        lo, hi = score_bounds(call.params)
        members = node.open(call.params["store"]).zrange_by_score(call.params["key"], lo, hi)
        return JSONResponse(_zrange_json(members))

    async def bloom(call: Call) -> Response:
        store = node.open(call.params["store"])
        item = call.params["item"].encode("utf-8", "surrogatepass")
        return JSONResponse({"exists": store.bf_exists(call.params["key"], item)})

    async def mget(call: Call) -> Response:
        store = node.open(call.params["store"])
        get, b64 = store.get, base64.b64encode
        values = [None if (v := get(k)) is None else b64(v).decode() for k in call.body["keys"]]
        return JSONResponse({"values": values})

    async def status(call: Call) -> Response:
        return JSONResponse(node.status())

    base = "/v1/stores/{store}"
    ops = [
        Operation(
            "GET",
            base + "/keys/{key}",
            "getValue",
            "read a value from the local replica (raw bytes)",
            get_key,
            Reply(200, "the value", OCTETS, {"type": "string", "format": "binary"}, "hello"),
            params=(STORE, KEY),
            errors={404: "no such store, or no such key (`not_found`)", 409: KIND_409},
        ),
        Operation(
            "GET",
            base + "/keys",
            "scanKeys",
            "keys matching a glob pattern, in order",
            scan,
            KEYS_REPLY,
            params=(STORE, pattern_param(), LIMIT),
            errors={404: STORE_404},
            description=f"At most `limit` keys (default and maximum {MAX_SCAN_LIMIT}).",
        ),
        Operation(
            "GET",
            base + "/zsets/{key}",
            "zrangeByScore",
            "sorted-set members with min <= score <= max, by score",
            zrange,
            Reply(
                200,
                "members and scores; members are UTF-8 text, or all base64 when one is not",
                schema={
                    "type": "object",
                    "required": ["encoding", "members"],
                    "properties": {
                        "encoding": {"enum": ["utf-8", "base64"]},
                        "members": {
                            "type": "array",
                            "items": {
                                "type": "array",
                                "description": "[member, score]",
                                "items": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                                "minItems": 2,
                                "maxItems": 2,
                            },
                        },
                    },
                },
                example={"encoding": "utf-8", "members": [["alice", 10.0]]},
            ),
            params=(STORE, KEY, MIN_SCORE, MAX_SCORE),
            errors={404: STORE_404, 409: KIND_409},
        ),
        Operation(
            "GET",
            base + "/blooms/{key}",
            "bloomExists",
            "Bloom filter membership",
            bloom,
            EXISTS_REPLY,
            params=(STORE, KEY, ITEM),
            errors={404: STORE_404, 409: KIND_409},
        ),
        Operation(
            "POST",
            base + "/mget",
            "getMany",
            "read many values in one request",
            mget,
            Reply(
                200,
                "the values in the keys' order: base64, null when missing",
                schema={
                    "type": "object",
                    "required": ["values"],
                    "properties": {
                        "values": {"type": "array", "items": {"type": ["string", "null"]}}
                    },
                },
                example={"values": ["aGVsbG8=", None]},
            ),
            params=(STORE,),
            body=Body(
                JSON_TYPE,
                {
                    "type": "object",
                    "required": ["keys"],
                    "properties": {
                        "keys": {"type": "array", "items": KEY_SCHEMA, "maxItems": MAX_MGET_KEYS}
                    },
                    "additionalProperties": False,
                },
                limits.max_mget_body,
                f"up to {MAX_MGET_KEYS} keys",
                {"keys": ["greeting", "missing"]},
            ),
            errors={404: STORE_404, 409: KIND_409},
        ),
        Operation("GET", "/status", "status", "node status", status, STATUS_REPLY, "known"),
        metrics_operation(node.metrics_text),
    ]
    return HttpApi(
        "edgekv edge admin",
        ops,
        auth or TokenAuth(None),
        limits,
        description="Local reads of an edge's replica, its status and metrics.",
    )


def build_app(
    node: AdminNode, auth: TokenAuth | None = None, limits: HttpLimits | None = None
) -> Starlette:
    """The starlette application over `node`."""
    return build_api(node, auth, limits).app()
