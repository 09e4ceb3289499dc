"""Shared helpers of the edge tests (no tests here): a minimal origin driven by NodeRuntime.

`OriginNode` sequences writes with `crdt.ops.plan` in-process (no threads, so trio's MockClock
sees all the work) and runs a `GossipNode(role="origin")` through a `NodeRuntime` over any
Transport, answering forwarded writes with their deltas and covers like the real origin.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from edgekv.clock import wall_clock_ms
from edgekv.crdt import (
    META,
    BfAdd,
    Delete,
    Delta,
    Op,
    Put,
    Register,
    Replica,
    ZAdd,
    ZRem,
    plan,
    validate_op,
    validate_store_name,
)
from edgekv.crdt.codec import encode_delta
from edgekv.errors import InvalidInput, StoreExists, StoreNotFound
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.core import GossipNode
from edgekv.gossip.transport import Transport
from edgekv.gossip.wire import Message
from edgekv.node.faults import LinkFaults
from edgekv.node.runtime import NodeRuntime

FAST = GossipConfig(ping_interval=0.5, ae_interval=1.0, purge_interval=2.0)


class OriginNode:
    """A minimal origin: a sequencer over `crdt.ops.plan` and a replica, no threads, no disk
    (so it runs exactly in trio virtual time), gossiping through a NodeRuntime."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self.replica = Replica()
        self.wall_ms = wall_ms
        self.seq = 0
        self.runtime: NodeRuntime | None = None

    @property
    def address(self) -> str:
        assert self.runtime is not None
        return self.runtime.address

    @property
    def watermark(self) -> int:
        return self.replica.watermark

    def _op(self, body: Mapping[str, Any]) -> Op:
        op, key = body.get("op"), body.get("key")
        if not isinstance(key, str):
            raise InvalidInput("a key must be a string")
        force = bool(body.get("force", False))
        if op == "put":
            return Put(key, body.get("value"), body.get("ttl"), force)  # type: ignore[arg-type]
        if op == "delete":
            return Delete(key)
        if op == "zadd":
            return ZAdd(key, body.get("members"), force)  # type: ignore[arg-type]
        if op == "zrem":
            return ZRem(key, body.get("members"))  # type: ignore[arg-type]
        if op == "bf_add":
            return BfAdd(key, body.get("items"), force=force)  # type: ignore[arg-type]
        raise InvalidInput(f"unknown op {op!r}")

    async def write(self, body: Mapping[str, Any]) -> Message:
        store = validate_store_name(body.get("store"))
        written_at = self.wall_ms()
        seq = self.seq + 1
        if body.get("op") in ("create_store", "drop_store"):
            live = body["op"] == "create_store"
            if live == self.replica.has_store(store):
                raise StoreExists(store) if live else StoreNotFound(store)
            delta: Delta | None = Register(seq, written_at, b"" if live else None, None)
            target = (META, store)
        else:
            if not self.replica.has_store(store):
                raise StoreNotFound(f"no such store: {store!r}")
            op = validate_op(self._op(body))
            delta = plan(op, self.replica.state(store, op.key), seq, written_at)
            target = (store, op.key)
        if delta is None:
            return {"seq": self.seq, "written_at": written_at, "items": [], "covers": []}
        self.seq = seq
        items = [(target[0], target[1], delta)]
        self.replica.apply_batch(items, [(seq, seq)])
        assert self.runtime is not None
        await self.runtime.publish(items, [(seq, seq)])
        return {
            "seq": seq,
            "written_at": written_at,
            "items": [[target[0], target[1], encode_delta(delta)]],
            "covers": [[seq, seq]],
        }


@asynccontextmanager
async def origin_node(
    transport: Transport,
    *,
    config: GossipConfig | None = FAST,
    wall_ms: Callable[[], int] = wall_clock_ms,
    seed: int = 0,
) -> AsyncIterator[OriginNode]:
    """An origin on `transport` (closed on exit)."""
    origin = OriginNode(wall_ms)

    async def on_request(peer: str, msg: Message) -> Message:
        return await origin.write(msg)

    gossip = GossipNode(
        transport.address, origin.replica, role="origin", config=config, rng=random.Random(seed)
    )
    origin.runtime = NodeRuntime(transport, gossip, on_request=on_request, wall_ms=wall_ms)
    async with anyio.create_task_group() as tg:
        await tg.start(origin.runtime.run)
        try:
            yield origin
        finally:
            await transport.aclose()
            tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Poll `predicate` every 50 ms (virtual time under MockClock) until true, else fail."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (polls replica state: no event to wait on)
            await anyio.sleep(0.05)


@asynccontextmanager
async def tcp_origin(
    seed: int = 0, key: bytes | None = None, faults: LinkFaults | None = None
) -> AsyncIterator[OriginNode]:
    """An origin on a real TcpTransport bound to 127.0.0.1 (port 0), under trio or asyncio."""
    from edgekv.node.tcp import TcpTransport

    async with anyio.create_task_group() as tg:
        transport = await TcpTransport.create(
            "127.0.0.1:0",
            task_group=tg,
            cluster_id="edgekv",
            node_id="origin",
            role="origin",
            key=key,
            faults=faults,
        )
        async with origin_node(transport, seed=seed) as origin:
            yield origin
        tg.cancel_scope.cancel()
