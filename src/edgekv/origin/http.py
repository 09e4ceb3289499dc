"""The origin's HTTP API: a Starlette app served by Hypercorn (under trio, or asyncio).

The routes are a `node.httpapi` table: the same table gives the OpenAPI 3.1 document at
`GET /v1/openapi.json`, and parameters and bodies are checked against the schemas it shows.
Every route builds a request body of the shared schema (`requests`) and calls `Origin.handle`,
so HTTP gets exactly the checks and errors of the TCP protocol.  Values are raw bytes bodies;
the batch route takes JSON whose byte strings are UTF-8 text or, with `"encoding": "base64"`,
base64.  Errors are JSON `{"error": code, "message": text}` with a 4xx status; a bearer token
comes from `Authorization: Bearer TOKEN`.  `GET /v1/status` (JSON: the log, commit groups,
flushes, clients, gossip peers) and `GET /metrics` (Prometheus text) need any known token when
tokens are configured.
"""

from __future__ import annotations

import base64
import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response

from ..node.admin_http import (
    EXISTS_REPLY,
    ITEM,
    KEY,
    KEYS_REPLY,
    LIMIT,
    MAX_SCORE,
    MIN_SCORE,
    STATUS_REPLY,
    STORE,
    metrics_operation,
    pattern_param,
    score_bounds,
)
from ..node.httpapi import (
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
from . import openapi as schemas

if TYPE_CHECKING:
    from .server import Origin

logger = logging.getLogger("edgekv.origin.http")

STORE_404 = "no such store"
NOT_LEADER = "this origin follows a shared log and takes no writes (`not_leader`): use another"
CONFLICT = "the key holds another kind of value (`wrong_kind`; `force` overrides), or is not at `if_version` (`version_mismatch`)"


INTEGER_FIELDS = frozenset({"if_version", "capacity", "m", "k"})


def _bytes_field(value: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(value, validate=True)  # the schema checked the alphabet
    return value.encode("utf-8", "surrogatepass")


def _json_op(entry: dict[str, Any]) -> dict[str, Any]:
    """One (schema-checked) batch op from JSON into the wire form (byte strings decoded)."""
    op = dict(entry)
    for name in INTEGER_FIELDS.intersection(op):  # JSON Schema's integers include 5.0
        if isinstance(op[name], float):
            op[name] = int(op[name])
    enc = op.pop("encoding", "utf8")
    if "value" in op:
        op["value"] = _bytes_field(op["value"], enc)
    kind = op["op"]
    if kind == "zadd":
        op["members"] = {_bytes_field(m, enc): s for m, s in op["members"].items()}
    elif kind == "zrem":
        op["members"] = [_bytes_field(m, enc) for m in op["members"]]
    elif kind == "bf_add":
        op["items"] = [_bytes_field(i, enc) for i in op["items"]]
    return op


def _member_json(member: bytes, score: float) -> dict[str, Any]:
    out: dict[str, Any] = {"score": score if math.isfinite(score) else str(score)}
    try:
        out["member"] = member.decode()
    except UnicodeDecodeError:
        out["member_base64"] = base64.b64encode(member).decode()
    return out


def build_api(origin: Origin, limits: HttpLimits | None = None) -> HttpApi:
    """The route table (and document) of the origin's HTTP API."""
    limits = limits or HttpLimits()

    async def call(c: Call, body: dict[str, Any]) -> dict[str, Any]:
        body["token"] = c.token
        return await origin.handle(body)

    def version(r: dict[str, Any], status: int = 200) -> JSONResponse:
        seq = r["seq"] or None
        return JSONResponse(
            {"seq": seq, "written_at": r["written_at"] if seq else None}, status_code=status
        )

    async def stores(c: Call) -> Response:
        return JSONResponse(await call(c, {"op": "stores"}))

    async def create_store(c: Call) -> Response:
        return version(await call(c, {"op": "create_store", "store": c.params["store"]}), 201)

    async def drop_store(c: Call) -> Response:
        return version(await call(c, {"op": "drop_store", "store": c.params["store"]}))

    async def scan(c: Call) -> Response:
        p = c.params
        body = {"op": "scan", "store": p["store"], "pattern": p.get("pattern", "*")}
        return JSONResponse(await call(c, {**body, "limit": p.get("limit")}))

    async def get_key(c: Call) -> Response:
        store, key = c.params["store"], c.params["key"]
        r = await call(c, {"op": "get_entry", "store": store, "key": key})
        if r["value"] is None:
            return JSONResponse({"error": "not_found", "message": f"no key {key!r}"}, 404)
        headers = {"x-edgekv-seq": str(r["seq"]), "x-edgekv-written-at": str(r["written_at"])}
        if r["expires_at"] is not None:
            headers["x-edgekv-expires-at"] = str(r["expires_at"])
        return Response(r["value"], media_type=OCTETS, headers=headers)

    async def put_key(c: Call) -> Response:
        p = c.params
        body = {
            "op": "put",
            "store": p["store"],
            "key": p["key"],
            "value": c.body,
            "ttl": p.get("ttl"),
            "if_version": p.get("if_version"),
            "force": p.get("force", False),
        }
        return version(await call(c, body))

    async def delete_key(c: Call) -> Response:
        p = c.params
        body = {"op": "delete", "store": p["store"], "key": p["key"]}
        return version(await call(c, {**body, "if_version": p.get("if_version")}))

    async def batch(c: Call) -> Response:
        ops = [_json_op(e) for e in c.body["ops"]]
        r = await call(c, {"op": "batch", "store": c.params["store"], "ops": ops})
        return JSONResponse({"seqs": r["seqs"], "written_at": r["written_at"]})

    async def zset(c: Call) -> Response:
        lo, hi = score_bounds(c.params)
        body = {"op": "zrange_by_score", "store": c.params["store"], "key": c.params["key"]}
        r = await call(c, {**body, "min": lo, "max": hi})
        return JSONResponse({"members": [_member_json(m, s) for m, s in r["members"]]})

    async def bloom(c: Call) -> Response:
        p = c.params
        body = {"op": "bf_exists", "store": p["store"], "key": p["key"]}
        r = await call(c, {**body, "item": p["item"].encode("utf-8", "surrogatepass")})
        return JSONResponse(r)

    async def status(c: Call) -> Response:
        return JSONResponse(origin.status())

    lim = origin.limits
    store_path, key_path = "/v1/stores/{store}", "/v1/stores/{store}/keys/{key}"
    version_reply = Reply(
        200,
        "the write's version",
        schema=schemas.VERSION,
        example={"seq": 7, "written_at": 1764806400000},
    )
    if_version = Param(
        "if_version",
        "query",
        "integer",
        schemas.IF_VERSION["description"],
        {k: v for k, v in schemas.IF_VERSION.items() if k in ("minimum", "maximum")},
        example=6,
    )
    ops = [
        Operation(
            "GET",
            "/v1/stores",
            "listStores",
            "the stores the token may read",
            stores,
            Reply(200, "store names", schema=schemas.STORES, example={"stores": ["flags"]}),
            "known",
        ),
        Operation(
            "PUT",
            store_path,
            "createStore",
            "create a store",
            create_store,
            Reply(
                201,
                "created: its version",
                schema=schemas.VERSION,
                example={"seq": 1, "written_at": 1764806400000},
            ),
            "write",
            (STORE,),
            errors={503: NOT_LEADER, 409: "the store exists (`store_exists`)"},
        ),
        Operation(
            "DELETE",
            store_path,
            "dropStore",
            "drop a store and everything in it",
            drop_store,
            version_reply,
            "write",
            (STORE,),
            errors={503: NOT_LEADER, 404: STORE_404},
        ),
        Operation(
            "GET",
            "/v1/stores/{store}/keys",
            "scanKeys",
            "keys matching a glob pattern, in order",
            scan,
            KEYS_REPLY,
            "read",
            (STORE, pattern_param(4 * lim.max_key_bytes), LIMIT),
            errors={404: STORE_404},
            description="All matching keys unless `limit` is given.",
        ),
        Operation(
            "GET",
            key_path,
            "getValue",
            "read a value (raw bytes; its version in headers)",
            get_key,
            Reply(
                200,
                "the value",
                OCTETS,
                {"type": "string", "format": "binary"},
                "hello",
                headers={
                    "x-edgekv-seq": {**schemas.SEQ_HEADER, "description": "the value's version"},
                    "x-edgekv-written-at": {
                        **schemas.SEQ_HEADER,
                        "description": "origin clock at the write, ms",
                    },
                    "x-edgekv-expires-at": {
                        **schemas.SEQ_HEADER,
                        "description": "expiry, ms (with a TTL only)",
                    },
                },
                required_headers=("x-edgekv-seq", "x-edgekv-written-at"),
            ),
            "read",
            (STORE, KEY),
            errors={
                404: "no such store, or no such key (`not_found`)",
                409: "the key holds another kind of value (`wrong_kind`)",
            },
        ),
        Operation(
            "PUT",
            key_path,
            "putValue",
            "write a value (the raw bytes body)",
            put_key,
            version_reply,
            "write",
            (
                STORE,
                KEY,
                Param(
                    "ttl",
                    "query",
                    "number",
                    schemas.TTL["description"],
                    {"exclusiveMinimum": 0, "maximum": schemas.MAX_TTL},
                    example=3600,
                ),
                if_version,
                Param(
                    "force", "query", "boolean", "overwrite a key of another kind", example=False
                ),
            ),
            Body(
                OCTETS,
                {"type": "string", "format": "binary", "maxLength": lim.max_value_bytes},
                lim.max_value_bytes,
                f"the value, at most {lim.max_value_bytes} bytes",
                "hello",
            ),
            errors={503: NOT_LEADER, 404: STORE_404, 409: CONFLICT},
        ),
        Operation(
            "DELETE",
            key_path,
            "deleteKey",
            "delete a key (seq null: it was absent)",
            delete_key,
            version_reply,
            "write",
            (STORE, KEY, if_version),
            errors={
                503: NOT_LEADER,
                404: STORE_404,
                409: "the key is not at `if_version` (`version_mismatch`)",
            },
        ),
        Operation(
            "POST",
            "/v1/stores/{store}/batch",
            "batch",
            "an atomic batch of put/delete/zadd/zrem/bf_add ops, consecutive seqs",
            batch,
            Reply(
                200,
                "one seq per op (null: the op changed nothing)",
                schema=schemas.BATCH_REPLY,
                example={"seqs": [8, 9, 10, 11, None], "written_at": 1764806400000},
            ),
            "write",
            (STORE,),
            Body(
                JSON_TYPE,
                schemas.batch_schema(lim),
                limits.max_batch_body,
                'byte strings are UTF-8 text, or base64 with `"encoding": "base64"`',
                schemas.BATCH_EXAMPLE,
            ),
            errors={503: NOT_LEADER, 404: STORE_404, 409: CONFLICT},
        ),
        Operation(
            "GET",
            "/v1/stores/{store}/zsets/{key}",
            "zrangeByScore",
            "sorted-set members with min <= score <= max, by score",
            zset,
            Reply(
                200,
                "members (UTF-8 text, else base64) and scores",
                schema=schemas.MEMBERS,
                example={"members": [{"member": "alice", "score": 10.0}]},
            ),
            "read",
            (STORE, KEY, MIN_SCORE, MAX_SCORE),
            errors={404: STORE_404, 409: "the key holds another kind of value (`wrong_kind`)"},
        ),
        Operation(
            "GET",
            "/v1/stores/{store}/blooms/{key}",
            "bloomExists",
            "Bloom filter membership",
            bloom,
            EXISTS_REPLY,
            "read",
            (STORE, KEY, ITEM),
            errors={404: STORE_404, 409: "the key holds another kind of value (`wrong_kind`)"},
        ),
        Operation(
            "GET",
            "/v1/status",
            "status",
            "origin status: log, commit groups, flushes, clients, gossip peers",
            status,
            STATUS_REPLY,
            "known",
        ),
        metrics_operation(origin.metrics_text),
    ]
    return HttpApi(
        "edgekv origin",
        ops,
        origin.auth,
        limits,
        description="Writes (durable, versioned) and reads of the origin, the source of truth.",
    )


def build_app(origin: Origin, limits: HttpLimits | None = None) -> Starlette:
    """The Starlette application for `origin`."""
    return build_api(origin, limits).app()


async def serve_http(
    origin: Origin,
    listen: str,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API on `listen` ("host:port", port 0 picks one) until `stop` is set."""
    from ..node.admin_http import bind_socket, serve_app, socket_address

    sock = bind_socket(listen, backlog=1024)
    app = build_app(origin, origin.http_limits)
    task_status.started(socket_address(sock))
    await serve_app(
        app,
        sock,
        shutdown=stop,
        errorlog=logger,
        tls=origin.tls,
        limits=origin.http_limits,
        fds=getattr(origin.transport, "fds", None),  # the node's one fd budget
    )
