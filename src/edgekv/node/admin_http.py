"""The edge's admin HTTP API (starlette, served by hypercorn under trio or asyncio).

Read-only: local reads of the replica, node status and Prometheus metrics.  Writes go through
the origin's API, never here.

    GET /v1/stores/{store}/keys/{key}            raw value bytes; 404 when missing
    GET /v1/stores/{store}/keys?pattern=&limit=  JSON {"keys": [...]} (glob, default "*")
    GET /v1/stores/{store}/zsets/{key}?min=&max= JSON {"encoding", "members": [[member, score]]}
    POST /v1/stores/{store}/mget                 JSON {"keys": [...]} -> {"values": [...]}: each
                                                 value base64, null when missing (one request
                                                 for many keys, at most MAX_MGET_KEYS)
    GET /status                                  JSON node status (`EdgeNode.status()`)
    GET /metrics                                 Prometheus text format 0.0.4

Errors are JSON `{"error": code, "message": ...}` with the error type's HTTP status.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import socket
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import sniffio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edgekv.errors import EdgeKVError, InvalidInput
from edgekv.node.kvstore import KvStore
from edgekv.node.tcp import format_address, parse_address

__all__ = ["AdminNode", "bind_socket", "build_app", "serve_app"]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SCAN_LIMIT = 100_000
MAX_MGET_KEYS = 10_000
MAX_MGET_BODY = 4 << 20  # bytes of JSON: 10,000 keys of up to ~400 bytes


class AdminNode(Protocol):
    """What the admin API reads from a node."""

    def open(self, name: str) -> KvStore: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


def _error(exc: EdgeKVError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=exc.http_status)


def _float(value: str | None, default: float, name: str) -> float:
    if value is None or value == "":
        return default
    try:
        x = float(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a number (or -inf/+inf), got {value!r}") from None
    if math.isnan(x):
        raise InvalidInput(f"{name} must not be NaN")
    return x


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return MAX_SCAN_LIMIT
    if not value.isdigit() or not 0 < int(value) <= MAX_SCAN_LIMIT:
        raise InvalidInput(f"limit must be an integer in [1, {MAX_SCAN_LIMIT}]")
    return int(value)


async def _json_body(request: Request, limit: int) -> object:
    """The request's JSON body, read up to `limit` bytes; InvalidInput if larger or not JSON."""
    data = bytearray()
    async with contextlib.aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            data += chunk
            if len(data) > limit:
                raise InvalidInput(f"the body exceeds {limit} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise InvalidInput("the body is not valid JSON") from None


def build_app(node: AdminNode) -> Starlette:
    """The starlette application over `node`."""

    def guarded(
        handler: Callable[[Request], Response],
    ) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return handler(request)
            except EdgeKVError as exc:
                return _error(exc)

        return endpoint

    # Handlers are plain functions: reads are synchronous, local and fast; starlette would run
    # sync endpoints in a thread, so each is wrapped in an async endpoint below.
    def get_key(request: Request) -> Response:
        store = node.open(request.path_params["store"])
        value = store.get(request.path_params["key"])
        if value is None:
            return JSONResponse({"error": "not_found", "message": "no such key"}, 404)
        return Response(value, media_type="application/octet-stream")

    def scan(request: Request) -> Response:
        store = node.open(request.path_params["store"])
        pattern = request.query_params.get("pattern", "*")
        keys = store.scan(pattern, limit=_limit(request.query_params.get("limit")))
        return JSONResponse({"keys": keys})

    def zrange(request: Request) -> Response:
        store = node.open(request.path_params["store"])
        q = request.query_params
        lo = _float(q.get("min"), -math.inf, "min")
        hi = _float(q.get("max"), math.inf, "max")
        members = store.zrange_by_score(request.path_params["key"], lo, hi)
        try:
            out: list[list[Any]] = [[m.decode(), s] for m, s in members]
            encoding = "utf-8"
        except UnicodeDecodeError:
            out = [[base64.b64encode(m).decode(), s] for m, s in members]
            encoding = "base64"
        for pair in out:  # JSON has no infinities
            if math.isinf(pair[1]):
                pair[1] = "+inf" if pair[1] > 0 else "-inf"
        return JSONResponse({"encoding": encoding, "members": out})

    def mget(request: Request, body: object) -> Response:
        store = node.open(request.path_params["store"])
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidInput('the body must be {"keys": [string, ...]}')
        if len(keys) > MAX_MGET_KEYS:
            raise InvalidInput(f"{len(keys)} keys exceed the limit of {MAX_MGET_KEYS}")
        get, b64 = store.get, base64.b64encode
        values = [None if (v := get(k)) is None else b64(v).decode() for k in keys]
        return JSONResponse({"values": values})

    async def mget_endpoint(request: Request) -> Response:
        try:
            body = await _json_body(request, MAX_MGET_BODY)
            return mget(request, body)
        except EdgeKVError as exc:
            return _error(exc)

    def status(request: Request) -> Response:
        return JSONResponse(node.status())

    def metrics(request: Request) -> Response:
        return PlainTextResponse(node.metrics_text(), media_type=PROMETHEUS_TYPE)

    def make(handler: Callable[[Request], Response]) -> Callable[[Request], Any]:
        inner = guarded(handler)

        async def endpoint(request: Request) -> Response:
            return inner(request)

        return endpoint

    return Starlette(
        routes=[
            Route("/v1/stores/{store}/keys/{key:path}", make(get_key), methods=["GET"]),
            Route("/v1/stores/{store}/keys", make(scan), methods=["GET"]),
            Route("/v1/stores/{store}/zsets/{key:path}", make(zrange), methods=["GET"]),
            Route("/v1/stores/{store}/mget", mget_endpoint, methods=["POST"]),
            Route("/status", make(status), methods=["GET"]),
            Route("/metrics", make(metrics), methods=["GET"]),
        ]
    )


def bind_socket(listen: str, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on `listen` (port 0 picks a free port)."""
    host, port = parse_address(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return format_address(host, port)


async def serve_app(
    app: Starlette,
    sock: socket.socket,
    *,
    shutdown: anyio.Event | None = None,
    errorlog: logging.Logger | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with hypercorn on the bound `sock` until `shutdown` is set or the caller
    cancels (trio or asyncio)."""
    from hypercorn.config import Config

    config = Config()
    fd = sock.detach()  # hypercorn owns (and closes) the listening socket from here on
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = errorlog
    config.graceful_timeout = 0.5
    if shutdown is None:
        shutdown = anyio.Event()
    task_status.started()
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
