"""The origin's HTTP API: a Starlette app served by Hypercorn (under trio, or asyncio).

Every route builds a request body of the shared schema (`requests`) and calls
`Origin.handle`, so HTTP gets exactly the checks and errors of the TCP protocol.  Values are raw
bytes bodies; the batch route takes JSON whose byte strings are UTF-8 text or, with
`"encoding": "base64"`, base64.  Errors are JSON `{"error": code, "message": text}` with the
error type's HTTP status; a bearer token comes from `Authorization: Bearer TOKEN`.
`GET /v1/status` (JSON: the log, commit groups, flushes, clients, gossip peers) and `GET
/metrics` (Prometheus text) need any known token when tokens are configured.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import EdgeKVError, InvalidInput
from ..node.admin_http import PROMETHEUS_TYPE
from .openapi import OPENAPI

if TYPE_CHECKING:
    from .server import Origin

logger = logging.getLogger("edgekv.origin.http")

MAX_BATCH_BODY = 64 << 20
Handler = Callable[[Request], Awaitable[Response]]


def _error(exc: EdgeKVError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=exc.http_status)


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is None:
        return None
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidInput("Authorization must be 'Bearer TOKEN'")
    return token.strip()


def _query_number(request: Request, name: str, default: float | None = None) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be a number") from None


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be an integer") from None


def _query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise InvalidInput(f"query parameter {name} must be true or false")
    return raw in ("true", "1", "")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or InvalidInput beyond `limit` bytes.  A body up to 4x the limit is still
    drained first, so an ordinary client reads the error instead of a reset connection."""
    chunks = bytearray()
    drained = 0
    async for chunk in request.stream():
        if drained or len(chunks) + len(chunk) > limit:
            drained += len(chunk)
            if drained > 4 * limit:
                break
            continue
        chunks += chunk
    if drained:
        raise InvalidInput(f"body exceeds the limit of {limit} bytes")
    return bytes(chunks)


def _bytes_field(value: object, encoding: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{what} is not valid base64") from None
    return value.encode("utf-8", "surrogatepass")


def _json_op(entry: object) -> dict[str, Any]:
    """One batch op from JSON into the wire form (byte strings decoded)."""
    if not isinstance(entry, dict):
        raise InvalidInput("each batch op must be an object")
    op = dict(entry)
    enc = op.pop("encoding", "utf8")
    if enc not in ("utf8", "base64"):
        raise InvalidInput("encoding must be utf8 or base64")
    if "value" in op:
        op["value"] = _bytes_field(op["value"], enc, "value")
    kind = op.get("op")
    members = op.get("members")
    if kind == "zadd" and isinstance(members, dict):
        op["members"] = {_bytes_field(m, enc, "member"): s for m, s in members.items()}
    elif kind == "zrem" and isinstance(members, list):
        op["members"] = [_bytes_field(m, enc, "member") for m in members]
    if kind == "bf_add" and isinstance(op.get("items"), list):
        op["items"] = [_bytes_field(i, enc, "item") for i in op["items"]]
    return op


def _member_json(member: bytes, score: float) -> dict[str, Any]:
    out: dict[str, Any] = {"score": score if math.isfinite(score) else str(score)}
    try:
        out["member"] = member.decode()
    except UnicodeDecodeError:
        out["member_base64"] = base64.b64encode(member).decode()
    return out


def build_app(origin: Origin) -> Starlette:
    """The Starlette application for `origin`."""

    def route(fn: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except EdgeKVError as exc:
                return _error(exc)
            except Exception as exc:  # a bug: a 500 for this request, the origin keeps serving
                logger.exception("HTTP %s %s failed", request.method, request.url.path)
                return JSONResponse({"error": "error", "message": repr(exc)}, status_code=500)

        return wrapped

    async def call(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        body["token"] = _token(request)
        return await origin.handle(body)

    def version(r: dict[str, Any], status: int = 200) -> JSONResponse:
        seq = r["seq"] or None
        return JSONResponse(
            {"seq": seq, "written_at": r["written_at"] if seq else None}, status_code=status
        )

    @route
    async def stores(request: Request) -> Response:
        return JSONResponse(await call(request, {"op": "stores"}))

    @route
    async def store(request: Request) -> Response:
        name = request.path_params["store"]
        if request.method == "PUT":
            return version(await call(request, {"op": "create_store", "store": name}), 201)
        return version(await call(request, {"op": "drop_store", "store": name}))

    @route
    async def keys(request: Request) -> Response:
        body = {
            "op": "scan",
            "store": request.path_params["store"],
            "pattern": request.query_params.get("pattern", "*"),
            "limit": _query_int(request, "limit"),
        }
        return JSONResponse(await call(request, body))

    @route
    async def key(request: Request) -> Response:
        store, key = request.path_params["store"], request.path_params["key"]
        if request.method == "GET":
            r = await call(request, {"op": "get_entry", "store": store, "key": key})
            if r["value"] is None:
                return JSONResponse(
                    {"error": "not_found", "message": f"no key {key!r}"}, status_code=404
                )
            headers = {"x-edgekv-seq": str(r["seq"]), "x-edgekv-written-at": str(r["written_at"])}
            if r["expires_at"] is not None:
                headers["x-edgekv-expires-at"] = str(r["expires_at"])
            return Response(r["value"], media_type="application/octet-stream", headers=headers)
        if request.method == "PUT":
            value = await _read_body(request, origin.limits.max_value_bytes)
            body = {
                "op": "put",
                "store": store,
                "key": key,
                "value": value,
                "ttl": _query_number(request, "ttl"),
                "if_version": _query_int(request, "if_version"),
                "force": _query_flag(request, "force"),
            }
            return version(await call(request, body))
        body = {"op": "delete", "store": store, "key": key}
        body["if_version"] = _query_int(request, "if_version")
        return version(await call(request, body))

    @route
    async def batch(request: Request) -> Response:
        raw = await _read_body(request, MAX_BATCH_BODY)
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidInput("the body is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("ops"), list):
            raise InvalidInput('the body must be {"ops": [...]}')
        ops = [_json_op(e) for e in doc["ops"]]
        body = {"op": "batch", "store": request.path_params["store"], "ops": ops}
        r = await call(request, body)
        return JSONResponse({"seqs": r["seqs"], "written_at": r["written_at"]})

    @route
    async def zset(request: Request) -> Response:
        body = {
            "op": "zrange_by_score",
            "store": request.path_params["store"],
            "key": request.path_params["key"],
            "min": _query_number(request, "min", -math.inf),
            "max": _query_number(request, "max", math.inf),
        }
        r = await call(request, body)
        return JSONResponse({"members": [_member_json(m, s) for m, s in r["members"]]})

    @route
    async def bloom(request: Request) -> Response:
        item = request.query_params.get("item")
        if item is None:
            raise InvalidInput("query parameter item is required")
        body = {
            "op": "bf_exists",
            "store": request.path_params["store"],
            "key": request.path_params["key"],
            "item": item.encode(),
        }
        return JSONResponse(await call(request, body))

    @route
    async def status(request: Request) -> Response:
        origin.auth.check_known(_token(request))
        return JSONResponse(origin.status())

    @route
    async def metrics(request: Request) -> Response:
        origin.auth.check_known(_token(request))
        return PlainTextResponse(origin.metrics_text(), media_type=PROMETHEUS_TYPE)

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    routes = [
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/stores", stores, methods=["GET"]),
        Route("/v1/stores/{store}", store, methods=["PUT", "DELETE"]),
        Route("/v1/stores/{store}/keys", keys, methods=["GET"]),
        Route("/v1/stores/{store}/keys/{key:path}", key, methods=["GET", "PUT", "DELETE"]),
        Route("/v1/stores/{store}/batch", batch, methods=["POST"]),
        Route("/v1/stores/{store}/zsets/{key:path}", zset, methods=["GET"]),
        Route("/v1/stores/{store}/blooms/{key:path}", bloom, methods=["GET"]),
    ]
    return Starlette(routes=routes)


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
    app = build_app(origin)
    task_status.started(socket_address(sock))
    await serve_app(app, sock, shutdown=stop, errorlog=logger)
