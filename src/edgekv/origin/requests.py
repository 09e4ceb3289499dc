"""The request schema shared by TCP clients, forwarding edges and the HTTP API.

A request body is a dict: {"op": name, "store": str, "key": str, ...op fields, "if_version":
int | None, "token": str | None}.  `parse_write` turns a write body into a `writer.Command`
and `parse_op` one op of it; everything is type-checked here and range-checked by
`crdt.ops.validate_op`, so malformed input of any shape is an `InvalidInput`, never a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..crdt import BfAdd, Delete, Limits, Op, Put, ZAdd, ZRem, validate_op, validate_store_name
from ..errors import InvalidInput
from .writer import BatchCommand, Command, StoreCommand

WRITE_OPS = frozenset({"put", "delete", "zadd", "zrem", "bf_add"})
STORE_OPS = frozenset({"create_store", "drop_store"})
READ_OPS = frozenset({"get", "get_entry", "scan", "zrange_by_score", "zscan", "bf_exists"})
ALL_OPS = WRITE_OPS | STORE_OPS | READ_OPS | {"batch", "stores"}


def is_write(op: str) -> bool:
    return op in WRITE_OPS or op in STORE_OPS or op == "batch"


def op_name(body: Mapping[str, Any]) -> str:
    op = body.get("op")
    if not isinstance(op, str) or op not in ALL_OPS:
        raise InvalidInput(f"unknown op {op!r}")
    return op


def opt_int(body: Mapping[str, Any], name: str, lo: int = 0) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if type(v) is not int or v < lo or v >= 1 << 63:
        raise InvalidInput(f"{name} must be an integer >= {lo}")
    return v


def opt_number(body: Mapping[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if type(v) not in (int, float):
        raise InvalidInput(f"{name} must be a number")
    return float(v)


def flag(body: Mapping[str, Any], name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if type(v) is not bool:
        raise InvalidInput(f"{name} must be true or false")
    return v


def store_of(body: Mapping[str, Any]) -> str:
    return validate_store_name(body.get("store"))


def parse_op(body: Mapping[str, Any], limits: Limits) -> tuple[Op, int | None]:
    """One write op and its `if_version` from a body (or a batch entry)."""
    if not isinstance(body, Mapping):
        raise InvalidInput("an op must be a map")
    kind = body.get("op")
    # unchecked wire values: `validate_op` below checks every field of the op built from them
    key: Any = body.get("key")
    value: Any = body.get("value")
    op: Op
    if kind == "put":
        op = Put(key, value, opt_number(body, "ttl"), flag(body, "force"))
    elif kind == "delete":
        op = Delete(key)
    elif kind == "zadd":
        members = body.get("members")
        if not isinstance(members, Mapping):
            raise InvalidInput("zadd needs a map of member -> score")
        op = ZAdd(key, members, flag(body, "force"))
    elif kind == "zrem":
        members = body.get("members")
        if not isinstance(members, list):
            raise InvalidInput("zrem needs a list of members")
        op = ZRem(key, members)
    elif kind == "bf_add":
        items = body.get("items")
        if not isinstance(items, list):
            raise InvalidInput("bf_add needs a list of items")
        error_rate = opt_number(body, "error_rate")
        if error_rate is not None and not math.isfinite(error_rate):
            raise InvalidInput("error_rate must be finite")
        op = BfAdd(
            key,
            items,
            capacity=opt_int(body, "capacity", 1),
            error_rate=error_rate,
            m=opt_int(body, "m"),
            k=opt_int(body, "k"),
            force=flag(body, "force"),
        )
    else:
        raise InvalidInput(f"unknown write op {kind!r}")
    return validate_op(op, limits), opt_int(body, "if_version")


def parse_write(
    body: Mapping[str, Any], limits: Limits, op: str | None = None, store: str | None = None
) -> Command:
    """The command for a write body (put, delete, zadd, zrem, bf_add, batch, create/drop).

    `op` and `store`, when given, are `op_name(body)` and `store_of(body)` already checked by
    the caller (they are not checked twice)."""
    if op is None:
        op = op_name(body)
    if store is None:
        store = store_of(body)
    if op == "create_store":
        return StoreCommand("create", store)
    if op == "drop_store":
        return StoreCommand("drop", store)
    if op == "batch":
        ops = body.get("ops")
        if not isinstance(ops, list) or not ops:
            raise InvalidInput("batch needs a non-empty list of ops")
        if len(ops) > limits.max_ops_per_batch:
            raise InvalidInput(f"{len(ops)} ops exceed the limit of {limits.max_ops_per_batch}")
        parsed = []
        for i, entry in enumerate(ops):
            try:
                parsed.append(parse_op(entry, limits))
            except InvalidInput as exc:
                raise InvalidInput(f"batch op {i}: {exc}") from None
        return BatchCommand(store, tuple(parsed))
    if op not in WRITE_OPS:
        raise InvalidInput(f"{op!r} is not a write")
    return BatchCommand(store, (parse_op(body, limits),))
