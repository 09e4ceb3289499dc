"""JSON Schemas of the origin's HTTP bodies and replies, built from its `Limits`.

The batch schema is what the server checks a batch against (`node.httpapi`), so every limit
the write path enforces is in it: key and value sizes, items per op, ops per batch, TTL range,
Bloom parameters (capacity and error rate are bounded so that the filter they size is always
within the Bloom limits).  One bound JSON Schema cannot state: key, value and member limits are
in UTF-8 *bytes*, while `maxLength` counts characters; text past the byte limit is refused (400).
"""

from __future__ import annotations

import math
from typing import Any

from ..crdt import Limits
from ..crdt.bloom import MAX_BLOOM_BITS, MAX_BLOOM_HASHES
from ..node.admin_http import KEY_SCHEMA

Schema = dict[str, Any]

MAX_TTL = 100 * 365 * 86400  # seconds, as `crdt.ops.validate_op` allows
MIN_ERROR_RATE = 1e-9
# The largest capacity whose filter fits in MAX_BLOOM_BITS at the smallest error rate.
MAX_CAPACITY = math.floor(MAX_BLOOM_BITS * math.log(2) ** 2 / -math.log(MIN_ERROR_RATE)) - 1
IF_VERSION: Schema = {
    "type": "integer",
    "minimum": 0,
    "maximum": (1 << 63) - 1,
    "description": "write only if the key is at this version (0: absent), else 409",
}
TTL: Schema = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": MAX_TTL,
    "description": "seconds until the value expires",
}


def _text(limit: int, base64: bool) -> Schema:
    if base64:  # format "byte" (OpenAPI's base64) is checked (`httpapi.FORMATS`)
        encoded = 4 * math.ceil(limit / 3)
        return {
            "type": "string",
            "format": "byte",
            "contentEncoding": "base64",
            "maxLength": encoded,
        }
    return {"type": "string", "maxLength": limit}


def _op(name: str, base64: bool, fields: Schema, required: list[str]) -> Schema:
    encoding: Schema = {"const": "base64"} if base64 else {"const": "utf8"}
    return {
        "type": "object",
        "properties": {
            "op": {"const": name},
            "key": KEY_SCHEMA,
            "encoding": encoding,
            "if_version": IF_VERSION,
            **fields,
        },
        "required": ["op", "key", *required, *(["encoding"] if base64 else [])],
        "additionalProperties": False,
    }


def batch_schema(limits: Limits) -> Schema:
    """The body of POST /v1/stores/{store}/batch."""
    ops: list[Schema] = [_op("delete", False, {}, []), _op("delete", True, {}, [])]
    for b64 in (False, True):
        value = _text(limits.max_value_bytes, b64)
        member = _text(limits.max_member_bytes, b64)
        ops.append(
            _op("put", b64, {"value": value, "ttl": TTL, "force": {"type": "boolean"}}, ["value"])
        )
        zadd_members = {
            "type": "object",
            "minProperties": 1,
            "maxProperties": limits.max_items_per_op,
            "propertyNames": member,
            "additionalProperties": {"type": "number"},
            "description": "member -> score",
        }
        zadd = {"members": zadd_members, "force": {"type": "boolean"}}
        ops.append(_op("zadd", b64, zadd, ["members"]))
        zrem_members = {"type": "array", "maxItems": limits.max_items_per_op, "items": member}
        ops.append(_op("zrem", b64, {"members": zrem_members}, ["members"]))
        items = {"type": "array", "minItems": 1, "maxItems": limits.max_items_per_op}
        bloom = {
            "items": {**items, "items": value},
            "capacity": {"type": "integer", "minimum": 1, "maximum": MAX_CAPACITY},
            "error_rate": {
                "type": "number",
                "minimum": MIN_ERROR_RATE,
                "exclusiveMaximum": 1,
            },
            "m": {"type": "integer", "minimum": 8, "maximum": MAX_BLOOM_BITS},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_BLOOM_HASHES},
            "force": {"type": "boolean"},
        }
        op = _op("bf_add", b64, bloom, ["items"])
        op["dependentRequired"] = {"m": ["k"], "k": ["m"]}
        op["description"] = "a new filter is sized by m and k, else by capacity and error_rate"
        ops.append(op)
    return {
        "type": "object",
        "required": ["ops"],
        "properties": {
            "ops": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_ops_per_batch,
                "items": {"anyOf": ops},  # exclusive by `op` and `encoding`
            }
        },
        "additionalProperties": False,
    }


BATCH_EXAMPLE = {
    "ops": [
        {"op": "put", "key": "greeting", "value": "hello", "ttl": 3600},
        {"op": "put", "key": "raw", "value": "AAH/", "encoding": "base64"},
        {"op": "zadd", "key": "ranking", "members": {"alice": 10, "bob": 5.5}},
        {"op": "bf_add", "key": "blocked", "items": ["10.0.0.1"], "capacity": 1000},
        {"op": "delete", "key": "old"},
    ]
}
VERSION: Schema = {
    "type": "object",
    "required": ["seq", "written_at"],
    "properties": {
        "seq": {"type": ["integer", "null"], "description": "null: nothing changed"},
        "written_at": {"type": ["integer", "null"], "description": "origin clock, ms"},
    },
    "additionalProperties": False,
}
BATCH_REPLY: Schema = {
    "type": "object",
    "required": ["seqs", "written_at"],
    "properties": {
        "seqs": {"type": "array", "items": {"type": ["integer", "null"]}},
        "written_at": {"type": ["integer", "null"]},
    },
}
SCORE: Schema = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf"]}]}
MEMBERS: Schema = {
    "type": "object",
    "required": ["members"],
    "properties": {
        "members": {
            "type": "array",
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["member", "score"],
                        "properties": {"member": {"type": "string"}, "score": SCORE},
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["member_base64", "score"],
                        "properties": {"member_base64": {"type": "string"}, "score": SCORE},
                        "additionalProperties": False,
                    },
                ]
            },
        }
    },
}
STORES: Schema = {
    "type": "object",
    "required": ["stores"],
    "properties": {"stores": {"type": "array", "items": {"type": "string"}}},
}
SEQ_HEADER: Schema = {"type": "string", "pattern": "^[0-9]+$"}
