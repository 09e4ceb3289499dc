"""The typed operations of the request schema, written once for the origin and its client.

`StoreApi` turns each method (put, delete, zadd, ..., get, scan, ...) into a request body of
origin/requests.py and its answer into the typed result (`Version`, `Entry`, lists).  A
subclass says how a body is carried: `OriginClient` sends it over its connection (a write
with a request id when it knows several origins), `Origin` hands it to its own request path
in-process (`handle`, trusted) or answers a read from its replica.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..crdt import BfAdd, Delete, Entry, Op, Put, Version, ZAdd, ZRem
from ..crdt.ops import op_body  # one body for an op or a ready mapping
from ..gossip.wire import Message

__all__ = ["StoreApi", "op_body"]


def _version(reply: Message) -> Version:
    return Version(reply["seq"], reply["written_at"])


class StoreApi:
    """The operations on stores and keys over `_write` and `_read` (see the module docstring)."""

    async def _write(self, body: dict[str, Any]) -> Message:
        raise NotImplementedError

    async def _read(self, body: dict[str, Any]) -> Message:
        raise NotImplementedError

    async def _write_op(self, store: str, op: Op, if_version: int | None) -> Version:
        return _version(
            await self._write({**op_body(op), "store": store, "if_version": if_version})
        )

    # -- stores ----------------------------------------------------------------------------------

    async def create_store(self, store: str) -> Version:
        return _version(await self._write({"op": "create_store", "store": store}))

    async def drop_store(self, store: str) -> Version:
        return _version(await self._write({"op": "drop_store", "store": store}))

    async def stores(self) -> list[str]:
        names: list[str] = (await self._read({"op": "stores"}))["stores"]
        return names

    # -- writes ----------------------------------------------------------------------------------

    async def put(
        self,
        store: str,
        key: str,
        value: bytes,
        ttl: float | None = None,
        if_version: int | None = None,
        force: bool = False,
    ) -> Version:
        return await self._write_op(store, Put(key, value, ttl, force), if_version)

    async def delete(self, store: str, key: str, if_version: int | None = None) -> Version | None:
        """Delete `key`; returns its tombstone's version, None when there was nothing to delete."""
        v = await self._write_op(store, Delete(key), if_version)
        return v if v.seq else None

    async def zadd(
        self,
        store: str,
        key: str,
        members: Mapping[bytes, float],
        if_version: int | None = None,
        force: bool = False,
    ) -> Version:
        return await self._write_op(store, ZAdd(key, members, force), if_version)

    async def zrem(
        self, store: str, key: str, members: Sequence[bytes], if_version: int | None = None
    ) -> Version | None:
        v = await self._write_op(store, ZRem(key, members), if_version)
        return v if v.seq else None

    async def bf_add(
        self,
        store: str,
        key: str,
        items: Sequence[bytes],
        capacity: int | None = None,
        error_rate: float | None = None,
        m: int | None = None,
        k: int | None = None,
        force: bool = False,
    ) -> Version:
        op = BfAdd(key, items, capacity, error_rate, m, k, force)
        return await self._write_op(store, op, if_version=None)

    async def batch(
        self, store: str, ops: Sequence[Op | Mapping[str, Any]]
    ) -> list[Version | None]:
        """Apply `ops` atomically with consecutive seqs; one version per op (None: no-op)."""
        body = {"op": "batch", "store": store, "ops": [op_body(o) for o in ops]}
        r = await self._write(body)
        return [None if s is None else Version(s, r["written_at"]) for s in r["seqs"]]

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, store: str, key: str) -> bytes | None:
        value: bytes | None = (await self._read({"op": "get", "store": store, "key": key}))["value"]
        return value

    async def get_entry(self, store: str, key: str) -> Entry | None:
        r = await self._read({"op": "get_entry", "store": store, "key": key})
        if r.get("value") is None:
            return None
        return Entry(r["value"], Version(r["seq"], r["written_at"]), r["expires_at"])

    async def scan(self, store: str, pattern: str = "*", limit: int | None = None) -> list[str]:
        keys: list[str] = (
            await self._read({"op": "scan", "store": store, "pattern": pattern, "limit": limit})
        )["keys"]
        return keys

    async def zrange_by_score(
        self, store: str, key: str, min: float = -math.inf, max: float = math.inf
    ) -> list[tuple[bytes, float]]:
        r = await self._read(
            {"op": "zrange_by_score", "store": store, "key": key, "min": min, "max": max}
        )
        return [(m, s) for m, s in r["members"]]

    async def zscan(self, store: str, key: str, pattern: str = "*") -> list[tuple[bytes, float]]:
        r = await self._read({"op": "zscan", "store": store, "key": key, "pattern": pattern})
        return [(m, s) for m, s in r["members"]]

    async def bf_exists(self, store: str, key: str, item: bytes) -> bool:
        r = await self._read({"op": "bf_exists", "store": store, "key": key, "item": item})
        return bool(r["exists"])
