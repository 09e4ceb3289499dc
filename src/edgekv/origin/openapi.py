"""The OpenAPI 3.1 description of the origin's HTTP API (served at /v1/openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            }
        }
    },
}
_VERSION = {
    "description": "the write's version (seq null: nothing changed)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "seq": {"type": ["integer", "null"]},
                    "written_at": {"type": ["integer", "null"]},
                },
            }
        }
    },
}
_ERRORS = {s: _ERROR for s in ("400", "401", "404", "409", "412", "503")}
_STORE = {"name": "store", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


def _q(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "edgekv origin", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": _SECURITY,
    "paths": {
        "/v1/stores": {
            "get": {"summary": "list stores", "responses": {"200": {"description": "names"}}},
        },
        "/v1/stores/{store}": {
            "parameters": [_STORE],
            "put": {"summary": "create a store", "responses": {"201": _VERSION, **_ERRORS}},
            "delete": {"summary": "drop a store", "responses": {"200": _VERSION, **_ERRORS}},
        },
        "/v1/stores/{store}/keys": {
            "parameters": [_STORE],
            "get": {
                "summary": "keys matching a glob pattern",
                "parameters": [_q("pattern", "string"), _q("limit", "integer")],
                "responses": {"200": {"description": "{keys: [...]}"}, **_ERRORS},
            },
        },
        "/v1/stores/{store}/keys/{key}": {
            "parameters": [_STORE, _KEY],
            "get": {
                "summary": "read a value (raw bytes; version in X-EdgeKV-Seq)",
                "responses": {"200": {"description": "the value"}, **_ERRORS},
            },
            "put": {
                "summary": "write a value (raw bytes body)",
                "parameters": [
                    _q("ttl", "number"),
                    _q("if_version", "integer"),
                    _q("force", "boolean"),
                ],
                "requestBody": {"content": {"application/octet-stream": {}}},
                "responses": {"200": _VERSION, **_ERRORS},
            },
            "delete": {
                "summary": "delete a key",
                "parameters": [_q("if_version", "integer")],
                "responses": {"200": _VERSION, **_ERRORS},
            },
        },
        "/v1/stores/{store}/batch": {
            "parameters": [_STORE],
            "post": {
                "summary": "atomic batch of put/delete/zadd/zrem/bf_add ops, consecutive seqs",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "ops": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "op": {
                                                    "enum": [
                                                        "put",
                                                        "delete",
                                                        "zadd",
                                                        "zrem",
                                                        "bf_add",
                                                    ]
                                                },
                                                "key": {"type": "string"},
                                                "value": {"type": "string"},
                                                "encoding": {"enum": ["utf8", "base64"]},
                                                "ttl": {"type": "number"},
                                                "force": {"type": "boolean"},
                                                "if_version": {"type": "integer"},
                                                "members": {},
                                                "items": {"type": "array"},
                                                "capacity": {"type": "integer"},
                                                "error_rate": {"type": "number"},
                                                "m": {"type": "integer"},
                                                "k": {"type": "integer"},
                                            },
                                            "required": ["op", "key"],
                                        },
                                    }
                                },
                            }
                        }
                    }
                },
                "responses": {"200": {"description": "{seqs, written_at}"}, **_ERRORS},
            },
        },
        "/v1/stores/{store}/zsets/{key}": {
            "parameters": [_STORE, _KEY],
            "get": {
                "summary": "sorted-set members with min <= score <= max",
                "parameters": [_q("min", "number"), _q("max", "number")],
                "responses": {"200": {"description": "{members: [...]}"}, **_ERRORS},
            },
        },
        "/v1/status": {
            "get": {
                "summary": "Origin status: log, commit groups, flushes, clients, gossip peers",
                "responses": {"200": {"description": "JSON status"}, **_ERRORS},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition (version 0.0.4)",
                "responses": {"200": {"description": "metrics"}, **_ERRORS},
            },
        },
        "/v1/stores/{store}/blooms/{key}": {
            "parameters": [_STORE, _KEY],
            "get": {
                "summary": "Bloom filter membership",
                "parameters": [_q("item", "string")],
                "responses": {"200": {"description": "{exists: bool}"}, **_ERRORS},
            },
        },
    },
}
