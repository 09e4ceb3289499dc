"""Clients a `Testnet` hands out as `net.client`.

`SimClient` writes through the origin over a simulated endpoint (sim mode has no sockets);
`HighSeq` wraps a real `OriginClient` in processes mode to remember the highest acked seq (the
checker's stand-in for the origin's digest there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from edgekv.crdt.ops import Delete, op_body
from edgekv.crdt.version import Version
from edgekv.gossip.transport import Transport
from edgekv.gossip.wire import Message, MsgType
from edgekv.node.pending import PendingRequests, Waiter, outcome
from edgekv.origin.api import StoreApi

__all__ = ["HighSeq", "SimClient"]

_REQUEST = int(MsgType.REQUEST)


class SimClient(StoreApi):
    """An OriginClient-like writer over a simulated endpoint: REQUEST in, RESPONSE/ERROR out.

    Speaks the same request schema as `OriginClient` (see origin/requests.py); used in sim mode,
    where there are no sockets.  Requests time out (virtual seconds) with `OriginUnavailable`.
    Replies are matched to requests by `node.pending` (as NodeRuntime and OriginClient do).
    """

    def __init__(self, transport: Transport, origin: str, *, timeout: float = 5.0) -> None:
        self.transport = transport
        self.origin = origin
        self.timeout = timeout
        self._pending: PendingRequests[Waiter] = PendingRequests()

    async def __aenter__(self) -> SimClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.aclose()

    async def receive_loop(self) -> None:
        """Match replies to waiting requests; run it in a task group until closed."""
        try:
            while True:
                env = await self.transport.receive()
                if env.peer == self.origin:
                    self._pending.complete(env.message)
        except anyio.ClosedResourceError:
            pass

    async def request(self, body: Mapping[str, Any]) -> Message:
        waiter = Waiter()
        rid = self._pending.add(waiter)
        try:
            await self.transport.send(
                self.origin,
                {"if_version": None, "token": None, **body, "t": _REQUEST, "id": rid},
            )
            with anyio.move_on_after(self.timeout):
                await waiter.event.wait()
        finally:
            self._pending.discard(rid)
        return outcome(waiter.reply, f"no answer from {self.origin} within {self.timeout:g} s")

    # the operations (put, create_store, ...) are api.StoreApi's, carried by `request`
    async def _write(self, body: dict[str, Any]) -> Message:
        return await self.request(body)

    async def _read(self, body: dict[str, Any]) -> Message:
        return await self.request(body)

    async def delete(self, store: str, key: str, if_version: int | None = None) -> Version:
        """Unlike OriginClient's: the version even when there was nothing to delete."""
        body = {**op_body(Delete(key)), "store": store, "if_version": if_version}
        return _version(await self.request(body))


def _version(reply: Message) -> Version:
    return Version(int(reply["seq"]), int(reply.get("written_at", 0)))


class HighSeq:
    """Wraps a client: remembers the highest acked seq (processes mode has no origin digest)."""

    def __init__(self, client: Any, sink: Any) -> None:
        self._client = client
        self._sink = sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            if isinstance(result, Version):
                self._sink.high_seq = max(self._sink.high_seq, result.seq)
            return result

        return call
