"""One route table gives both the HTTP app (Starlette) and its OpenAPI 3.1 document.

Each `Operation` declares its parameters (with JSON Schema constraints), its body (media type,
schema, byte cap), its success reply and the errors its handler can raise; `HttpApi` serves
them and describes them, so the document and the behaviour cannot drift: a parameter is
checked against the very schema the document shows.

Theory of operation, for every request, in this order:
1. Authentication.  With tokens on, the Authorization header must be `Bearer TOKEN` with a
   known token (401 otherwise, whatever else is wrong), before anything else is looked at.
2. Path and query parameters are decoded from text by their declared type (strictly: `true`
   or `false`, JSON number syntax) and checked against their schema (400, naming the value).
3. Authorisation: the token's scope must cover the operation's access on the path's store (401).
4. The body.  A Content-Length past the operation's cap is refused (413) before a byte is read;
   otherwise the body is read up to the cap (413 beyond) within `HttpLimits.body_timeout`
   (408).  JSON is then parsed strictly (no NaN or Infinity), its count of values bounded by
   `max_json_values` before parsing and its nesting by `max_json_depth`, and checked against
   the schema (400); large bodies parse in a worker thread, so other requests keep being
   served.
5. The handler runs on the validated values.  An `EdgeKVError` becomes its HTTP status with the
   error body `{"error": code, "message": text}`; unknown paths (404) and methods (405, with
   `Allow`) get the same body.  The document lists exactly these statuses per operation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import jsonschema_rs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekv.errors import EdgeKVError, InvalidInput, Unauthorized

__all__ = [
    "JSON_TYPE",
    "OCTETS",
    "Body",
    "Call",
    "HttpApi",
    "HttpLimits",
    "Operation",
    "Param",
    "Reply",
    "bearer_token",
    "error_body",
]

logger = logging.getLogger("edgekv.http")

JSON_TYPE = "application/json"
OCTETS = "application/octet-stream"
Schema = dict[str, Any]
Access = Literal["public", "known", "read", "write"]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Limits every HTTP request meets before its handler runs (see the module docstring)."""

    body_timeout: float = 10.0  # seconds to receive a whole body
    max_json_depth: int = 32
    max_json_values: int = 500_000  # bounds parsing memory: a 16 MiB body of "{}" is 400 MiB
    max_batch_body: int = 16 << 20  # the origin's batch route, bytes of JSON
    max_mget_body: int = 4 << 20  # the edge's mget route: 10,000 keys of up to ~400 bytes
    thread_parse_from: int = 1 << 20  # JSON bodies of at least this many bytes parse in a thread
    # the port itself (admin_http.serve_app): connections at once, in total (capped below the
    # fd limit) and per source IP; a connection's request head must be complete within
    # `head_timeout` of its start or of its previous answer
    max_connections: int = 1024
    max_per_address: int = 256
    head_timeout: float = 5.0


class PayloadTooLarge(EdgeKVError):
    code = "payload_too_large"
    http_status = 413


class RequestTimeout(EdgeKVError):
    code = "request_timeout"
    http_status = 408


_CODES = {
    400: ("invalid_input", "the request breaks a documented constraint"),
    401: ("unauthorized", "no token, an unknown token, or one without the needed scope"),
    404: ("store_not_found", "no such store (or key, `not_found`)"),
    405: ("method_not_allowed", "the path does not take this method"),
    408: ("request_timeout", "the body did not arrive within the read timeout"),
    409: ("wrong_kind", "a conflict with the current state"),
    413: ("payload_too_large", "the body is larger than the limit"),
    503: ("not_leader", "this node cannot serve the request now"),
}

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "a stable error code"},
        "message": {"type": "string"},
    },
    "additionalProperties": False,
}

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
FORMATS: dict[str, Callable[[str], bool]] = {
    "byte": lambda s: _BASE64.fullmatch(s) is not None,  # OpenAPI's base64 strings
}
"""String formats the server checks (others, e.g. "binary", are annotations)."""
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def error_body(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """The project's error response."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _error(exc: EdgeKVError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else {}
    if isinstance(exc, PayloadTooLarge | RequestTimeout):
        headers["Connection"] = "close"  # the rest of the body is never read
    return error_body(exc.http_status, exc.code, str(exc), **headers)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; Unauthorized if malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
    return token.strip()


class Authorizer(Protocol):
    """What the API needs of `node.auth.TokenAuth`."""

    enabled: bool

    def check(self, token: object, level: str, store: str) -> None: ...

    def check_known(self, token: object) -> None: ...


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter: its JSON type and constraints, decoded and checked by them.

    `words` are extra literal spellings a number parameter accepts (e.g. "-inf"); they reach
    the handler as strings."""

    name: str
    location: Literal["path", "query"]
    kind: Literal["string", "integer", "number", "boolean"]
    description: str
    constraints: Schema = field(default_factory=dict)
    required: bool = False
    example: Any = None
    words: tuple[str, ...] = ()
    slashes: bool = False  # a path parameter that may hold "/" (a key)

    @property
    def schema(self) -> Schema:
        base = {"type": self.kind, **self.constraints}
        if self.words:
            return {"anyOf": [base, {"type": "string", "enum": list(self.words)}]}
        return base

    def decode(self, raw: str) -> Any:
        if raw in self.words:
            return raw
        if self.kind == "integer":
            if not _INTEGER.fullmatch(raw):
                raise InvalidInput(f"{self.name} must be an integer, got {raw[:40]!r}")
            return int(raw)
        if self.kind == "number":
            value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
            if not math.isfinite(value):
                raise InvalidInput(f"{self.name} must be a finite number, got {raw[:40]!r}")
            return value
        if self.kind == "boolean":
            if raw not in ("true", "false"):
                raise InvalidInput(f"{self.name} must be true or false, got {raw[:40]!r}")
            return raw == "true"
        return raw

    def doc(self) -> Schema:
        out: Schema = {
            "name": self.name,
            "in": self.location,
            "required": self.required or self.location == "path",
            "description": self.description,
            "schema": self.schema,
        }
        if self.example is not None:
            out["example"] = self.example
        return out


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: JSON (parsed and checked against `schema`) or raw bytes."""

    media_type: str
    schema: Schema
    max_bytes: int
    description: str
    example: Any = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The success response of an operation."""

    status: int
    description: str
    media_type: str = JSON_TYPE
    schema: Schema | None = None
    example: Any = None
    headers: Mapping[str, Schema] = field(default_factory=dict)
    required_headers: tuple[str, ...] = ()

    def doc(self) -> Schema:
        content: Schema = {"schema": self.schema or {}}
        if self.example is not None:
            content["example"] = self.example
        out: Schema = {"description": self.description, "content": {self.media_type: content}}
        if self.headers:
            out["headers"] = {
                name: {
                    "description": s.get("description", name),
                    "required": name in self.required_headers,
                    "schema": s,
                }
                for name, s in self.headers.items()
            }
        return out


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler receives: validated parameters and body, and the caller's token."""

    request: Request
    params: dict[str, Any]
    body: Any
    token: str | None


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path.  `errors` maps each status the handler itself may answer
    (beyond the framework's 400/401/408/413) to when it happens."""

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    reply: Reply
    access: Access = "read"
    params: tuple[Param, ...] = ()
    body: Body | None = None
    errors: Mapping[int, str] = field(default_factory=dict)
    description: str = ""


class _Bound:
    """An operation with its compiled validators."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.params = [(p, jsonschema_rs.Draft202012Validator(p.schema)) for p in op.params]
        self.body = None
        if op.body is not None and op.body.media_type == JSON_TYPE:
            self.body = jsonschema_rs.Draft202012Validator(
                op.body.schema, formats=FORMATS, validate_formats=True
            )


def _check(validator: jsonschema_rs.Validator, value: Any, where: str) -> None:
    try:
        validator.validate(value)
    except jsonschema_rs.ValidationError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.instance_path)
        message = exc.message  # "<the value> <what is wrong>": keep the end when it is long
        if len(message) > 200:
            message = message[:60] + " ... " + message[-140:]
        raise InvalidInput(f"{where}{path}: {message}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, max_depth: int, max_values: int = 500_000) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most `max_depth` deep, of at most `max_values`
    values (counted before parsing, from separators and brackets: an upper bound); InvalidInput
    if not."""
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > max_values:
        raise InvalidInput(f"the body holds more than {max_values} JSON values: split it")
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:100]
        raise InvalidInput(f"the body is not valid JSON: {reason}") from None
    stack: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(doc, dict | list):
        stack.append((doc, 1))
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise InvalidInput(f"the body nests deeper than {max_depth} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return doc


class HttpApi:
    """Serves `operations` (a Starlette app) and describes them (OpenAPI 3.1)."""

    def __init__(
        self,
        title: str,
        operations: Sequence[Operation],
        auth: Authorizer,
        limits: HttpLimits,
        *,
        description: str = "",
        document_path: str = "/v1/openapi.json",
    ) -> None:
        self.title = title
        self.description = description
        self.auth = auth
        self.limits = limits

        async def document(call: Call) -> Response:
            return JSONResponse(self.document)

        reply = Reply(200, "this document (OpenAPI 3.1)", schema={"type": "object"})
        own = Operation("GET", document_path, "openapi", "this document", document, reply, "public")
        self.operations = [*operations, own]
        self._paths: dict[str, dict[str, _Bound]] = {}
        for op in self.operations:
            self._paths.setdefault(op.path, {})[op.method.upper()] = _Bound(op)
        self.document = self._document()

    # -- serving --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = []
        for path, ops in self._paths.items():
            route_path = path
            for name in {p.name for b in ops.values() for p in b.op.params if p.slashes}:
                route_path = route_path.replace(f"{{{name}}}", f"{{{name}:path}}")
            routes.append(Route(route_path, self._endpoint(ops), methods=sorted(ops)))

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            if exc.status_code == 404:
                return error_body(404, "not_found", f"no route for {request.url.path[:200]}")
            code = _CODES.get(exc.status_code, ("error", ""))[0]
            return error_body(exc.status_code, code, str(exc.detail), **(exc.headers or {}))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    def _endpoint(self, ops: dict[str, _Bound]) -> Callable[[Request], Awaitable[Response]]:
        allow = ", ".join(sorted(ops))

        async def endpoint(request: Request) -> Response:
            bound = ops.get(request.method)
            if bound is None:
                return error_body(
                    405, "method_not_allowed", f"use {allow}", Allow=allow, Connection="close"
                )
            try:
                return await self._serve(bound, request)
            except EdgeKVError as exc:
                if exc.http_status >= 500:
                    logger.error("HTTP %s %s: %s", request.method, request.url.path, exc)
                return _error(exc)
            except Exception:  # a bug: a 500 for this request, the node keeps serving
                logger.exception("HTTP %s %s failed", request.method, request.url.path)
                return error_body(500, "error", "internal error")

        return endpoint

    async def _serve(self, bound: _Bound, request: Request) -> Response:
        op = bound.op
        token = None
        if self.auth.enabled and op.access != "public":
            token = bearer_token(request.headers.get("authorization"))
            self.auth.check_known(token)
        params: dict[str, Any] = {}
        for p, validator in bound.params:
            source = request.path_params if p.location == "path" else request.query_params
            raw = source.get(p.name)
            if raw is None:
                if p.required or p.location == "path":
                    raise InvalidInput(f"{p.location} parameter {p.name} is required")
                continue
            value = p.decode(raw)
            _check(validator, value, f"{p.location} parameter {p.name}")
            params[p.name] = value
        if self.auth.enabled and op.access in ("read", "write") and "store" in params:
            self.auth.check(token, op.access, params["store"])
        body: Any = None
        if op.body is not None:
            raw_body = await self._read_body(request, op.body.max_bytes)
            if bound.body is None:
                body = raw_body
            elif len(raw_body) >= self.limits.thread_parse_from:
                body = await anyio.to_thread.run_sync(self._parse, bound, raw_body)
            else:
                body = self._parse(bound, raw_body)
        return await op.handler(Call(request, params, body, token))

    def _parse(self, bound: _Bound, raw: bytes) -> Any:
        doc = parse_json(raw, self.limits.max_json_depth, self.limits.max_json_values)
        assert bound.body is not None
        _check(bound.body, doc, "body")
        return doc

    async def _read_body(self, request: Request, cap: int) -> bytes:
        """The body, at most `cap` bytes.  A body a little past the cap (by up to the cap, at
        most 4 MiB) is read and dropped before the 413, so an ordinary client that sends
        first and reads later gets the answer rather than a reset; a larger declared length
        is refused before a byte is read."""
        slack = min(cap, 4 << 20)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap + slack):
            raise PayloadTooLarge(f"the body exceeds the limit of {cap} bytes")
        data = bytearray()
        total = 0
        try:
            with anyio.fail_after(self.limits.body_timeout):
                async with contextlib.aclosing(request.stream()) as chunks:
                    async for chunk in chunks:
                        total += len(chunk)
                        if total <= cap:
                            data += chunk
                        elif total > cap + slack:
                            break
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self.limits.body_timeout:g} s"
            ) from None
        if total > cap:
            raise PayloadTooLarge(f"the body exceeds the limit of {cap} bytes")
        return bytes(data)

    # -- describing -----------------------------------------------------------------------------

    def _document(self) -> Schema:
        paths: Schema = {}
        for path, ops in self._paths.items():
            for method, bound in ops.items():
                paths.setdefault(path, {})[method.lower()] = self._operation_doc(bound.op)
        components: Schema = {"schemas": {"Error": ERROR_SCHEMA}}
        if self.auth.enabled:
            components["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token the node was configured with (scopes per store)",
                }
            }
        info = {"title": self.title, "version": "1", "description": self.description}
        return {"openapi": "3.1.0", "info": info, "paths": paths, "components": components}

    def statuses(self, op: Operation) -> dict[int, str]:
        """Every error status `op` can answer, with when."""
        out: dict[int, str] = {}
        if op.params or op.body is not None:
            out[400] = "a parameter or the body breaks a documented constraint"
        if self.auth.enabled and op.access != "public":
            out[401] = _CODES[401][1]
        if op.body is not None:
            out[408] = _CODES[408][1]
            out[413] = f"the body is larger than {op.body.max_bytes} bytes"
        out.update(op.errors)
        return dict(sorted(out.items()))

    def _operation_doc(self, op: Operation) -> Schema:
        responses: Schema = {str(op.reply.status): op.reply.doc()}
        for status, when in self.statuses(op).items():
            code = _CODES.get(status, ("error", ""))[0]
            example = {"error": code, "message": when}
            error: Schema = {
                "description": when,
                "content": {
                    JSON_TYPE: {
                        "schema": {"$ref": "#/components/schemas/Error"},
                        "example": example,
                    }
                },
            }
            if status == 401:
                error["headers"] = {
                    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
                }
            responses[str(status)] = error
        out: Schema = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
        }
        if op.description:
            out["description"] = op.description
        if op.params:
            out["parameters"] = [p.doc() for p in op.params]
        if op.body is not None:
            content: Schema = {"schema": op.body.schema}
            if op.body.example is not None:
                content["example"] = op.body.example
            out["requestBody"] = {
                "required": True,
                "description": op.body.description,
                "content": {op.body.media_type: content},
            }
        if self.auth.enabled:
            out["security"] = [] if op.access == "public" else [{"bearer": []}]
        return out
