"""Client reads at an edge: the origin's client protocol, read operations only, served locally.

Why: an application in another process (or a benchmark polling every replica) needs a cheap
network read of an edge's replica; the admin HTTP API costs about a millisecond per read in
Python, this costs one small CBOR frame each way.  `OriginClient(edge_address)` speaks it.

Theory of operation
1. A connection whose handshake declares the role "client" on an edge's gossip port is served
   here (before the handshake nothing differs from the origin's port: cluster key or TLS).
   Requests are handled one at a time, in order: each answer is sent before the next request is
   read, so a client that stops reading its answers stops being read (TCP back-pressure), and
   one connection costs at most one answer in flight.
2. REQUEST {"t": 50, "id", "op", "store", ...} with a read op (get, get_entry, scan,
   zrange_by_score, zscan, bf_exists, stores) is answered from the local replica through the
   node's `KvStore` API, as RESPONSE {"t": 51, "id", ...} with the fields the origin answers
   with.  These are eventually consistent reads of this edge, not the origin's strong reads.
3. Every other op (writes included) gets ERROR {"t": 52, "id", "code", "message"}: writes go to
   the origin.  An EdgeKVError becomes its code; the connection keeps serving.  A frame that is
   not a REQUEST with an int id, or that the decoder rejects, closes the connection.
4. With tokens configured (`EdgeNode(tokens=...)`), a request's "token" needs read scope on its
   store, as on the admin HTTP API.  A connection silent for `NetLimits.idle_timeout` is closed
   (it may be closed up to 1/256 of that earlier: the deadline moves only that often, not at
   every request).
5. Memory: request bytes read and the answer in flight (what the socket did not take at once)
   are charged to the node's byte budget for clients (`TcpTransport.client_budget`, the
   clients' half of `NetLimits.node_bytes`, as the origin's client connections), so many
   connections cannot add up one answer each.  An
   answer larger than `FLOOR` is sent only when it fits in the budget (or nothing else is
   held); otherwise it is dropped unsent and rebuilt once it fits (counted as
   `client_read_waits`).  Reading more of a request past `FLOOR` bytes waits while the budget
   is full, at most `NetLimits.handshake_timeout`, then the connection is closed.  A small
   read (answer and request within `FLOOR`) is always served: clients that do not read their
   large answers cannot starve the others, and each connection holds at most about
   3 x `FLOOR` beyond the budget.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import cbor2

from ..errors import EdgeKVError, InvalidInput, RemoteProtocolError
from ..gossip.wire import Message, MsgType, encode_frame
from .auth import TokenAuth
from .kvstore import KvStore
from .limits import DEFAULT_NET_LIMITS, ByteBudget
from .sockio import direct_socket, receive_ready, send_now
from .tcp import FramedStream

logger = logging.getLogger("edgekv.edge")

_REQUEST, _RESPONSE, _ERROR = int(MsgType.REQUEST), int(MsgType.RESPONSE), int(MsgType.ERROR)
FLOOR = 64 << 10  # request bytes, and an answer, one connection holds whatever the budget
_HEADER = struct.Struct(">I")
_dumps = cbor2.dumps  # a RESPONSE to a get holds only an int id and bytes or None: no checks
READ_OPS = frozenset({"get", "get_entry", "scan", "zrange_by_score", "zscan", "bf_exists"})


class ReadNode(Protocol):
    auth: TokenAuth

    def open(self, name: str) -> KvStore: ...

    def stores(self) -> list[str]: ...


def _text(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    v = body.get(name, default)
    if not isinstance(v, str):
        raise InvalidInput(f"{name} must be a string")
    return v


def _bound(body: Mapping[str, Any], name: str, default: float) -> float:
    v = body.get(name, default)
    if type(v) not in (int, float) or math.isnan(v):
        raise InvalidInput(f"{name} must be a number")
    return float(v)


def answer(node: ReadNode, body: Mapping[str, Any]) -> Message:
    """The response fields for one read request (rule 2); EdgeKVError if it is refused."""
    op = body.get("op")
    if op == "get":
        return {"value": _get(node, body)}
    token = body.get("token")
    if op == "stores":
        return {"stores": node.auth.visible(token, node.stores())}
    if op not in READ_OPS:
        raise InvalidInput(f"an edge serves reads only ({op!r}): writes go to the origin")
    name = _text(body, "store")
    node.auth.check(token, "read", name)
    store = node.open(name)  # StoreNotFound when this edge does not know it
    if op == "scan":
        limit = body.get("limit")
        if limit is not None and type(limit) is not int:
            raise InvalidInput("limit must be an integer")
        return {"keys": store.scan(_text(body, "pattern", "*"), limit)}
    key = _text(body, "key")
    if op == "get_entry":
        entry = store.get_entry(key)
        if entry is None:
            return {"value": None}
        v = entry.version
        return {
            "value": entry.value,
            "seq": v.seq,
            "written_at": v.written_at,
            "expires_at": entry.expires_at,
        }
    if op == "zrange_by_score":
        lo, hi = _bound(body, "min", -math.inf), _bound(body, "max", math.inf)
        return {"members": [[m, s] for m, s in store.zrange_by_score(key, lo, hi)]}
    if op == "zscan":
        return {"members": [[m, s] for m, s in store.zscan(key, _text(body, "pattern", "*"))]}
    item = body.get("item")
    if not isinstance(item, bytes):
        raise InvalidInput("bf_exists needs an item (bytes)")
    return {"exists": store.bf_exists(key, item)}


def reply_frame(node: ReadNode, msg: Message, max_frame_size: int) -> bytes:
    """The RESPONSE or ERROR frame answering `msg`, a REQUEST with an int id (rule 3)."""
    req_id = msg["id"]
    try:
        if msg.get("op") == "get":  # the common read (a poller's), without the generic checks
            value = _get(node, msg)
            if value is None or value.__class__ is bytes:
                body = _dumps({"t": _RESPONSE, "id": req_id, "value": value})
                if len(body) <= max_frame_size:
                    return _HEADER.pack(len(body)) + body
        return encode_frame({"t": _RESPONSE, "id": req_id, **answer(node, msg)}, max_frame_size)
    except EdgeKVError as exc:
        code, message = exc.code, str(exc)
    except Exception as exc:  # a bug: report it to this client, keep serving
        logger.exception("client read %r failed", msg.get("op"))
        code, message = "error", f"internal: {exc!r}"
    return encode_frame({"t": _ERROR, "id": req_id, "code": code, "message": message[:4096]})


def _get(node: ReadNode, body: Mapping[str, Any]) -> bytes | None:
    """The value a "get" request asks for (rule 2, 4), checked in the order `answer` checks."""
    name = body.get("store")
    if name.__class__ is not str:
        name = _text(body, "store")
    node.auth.check(body.get("token"), "read", name)
    store = node.open(name)  # StoreNotFound when this edge does not know it
    key = body.get("key")
    if key.__class__ is not str:
        key = _text(body, "key")
    return store.get(key)


@dataclass(eq=False)
class _ReadConnection:
    """One client connection's requests and answers, charged to the node's budget (rule 5).

    On a plain socket under trio (`sockio.direct_socket`) it waits until the socket is readable
    and reads it, and hands an answer to the socket directly: one trip through the scheduler
    per request instead of three (a stream's `receive` first tries a read that fails, its
    `send` yields after sending).  Only what the socket does not take at once goes through the
    stream's `send`, charged to the budget while it waits."""

    node: ReadNode
    stream: FramedStream
    max_frame_size: int
    budget: ByteBudget
    room_timeout: float
    events: Counter[str] | None
    held: int = 0  # bytes charged to `budget`: the decoder's plus the answer in flight

    def __post_init__(self) -> None:
        self.decoder = self.stream.detach_decoder()
        self.sock = direct_socket(self.stream.stream)

    def _charge(self, n: int) -> None:
        if n != self.held:
            self.budget.take(n - self.held)
            self.held = n

    def release(self) -> None:
        self._charge(0)

    async def next_request(self) -> Message:
        """The next message; a checkpoint (a wait for the socket, or a yield when the message
        was already buffered) either way."""
        decoder, budget = self.decoder, self.budget
        if (frame := decoder.next_frame()) is not None:
            self._charge(decoder.buffered)
            await anyio.lowlevel.checkpoint()  # pipelined requests: let the others run
            return frame[0]
        while True:
            self._charge(decoder.buffered)
            if decoder.buffered >= FLOOR and budget.full:
                with anyio.move_on_after(self.room_timeout):
                    await budget.room()
                if budget.full:
                    raise TimeoutError(
                        f"no memory for the rest of a request in {self.room_timeout} s"
                    )
            try:
                data = await self._receive()
            except anyio.EndOfStream:
                if decoder.buffered:
                    raise RemoteProtocolError("connection closed inside a frame") from None
                raise
            decoder.receive_data(data)
            if (frame := decoder.next_frame()) is not None:
                self._charge(decoder.buffered)
                return frame[0]

    async def _receive(self) -> bytes:
        sock = self.sock
        if sock is None:
            return await self.stream.stream.receive(FLOOR)
        return await receive_ready(sock, FLOOR)

    async def answer(self, msg: Message) -> None:
        """Build the answer to `msg` once it fits in the budget, send it, give it back."""
        while True:
            frame = reply_frame(self.node, msg, self.max_frame_size)
            size = len(frame)
            if size <= FLOOR or self.budget.fits(size) or self.budget.used <= self.held:
                break
            del frame  # not held while waiting: rebuilt (the value may change meanwhile)
            if self.events is not None:
                self.events["client_read_waits"] += 1
            await self.budget.fit(size, self.held)
        sock = self.sock
        if sock is not None:
            sent = send_now(sock, frame)
            if sent == size:
                return  # the socket took it all: nothing held
            if sent:
                frame = frame[sent:]  # (the whole frame stays charged while the rest waits)
        base = self.held
        self._charge(base + size)
        await self.stream.send_frame(frame)
        self._charge(base)


async def serve_reads(
    node: ReadNode,
    stream: FramedStream,
    idle_timeout: float,
    max_frame_size: int,
    *,
    budget: ByteBudget | None = None,
    room_timeout: float = DEFAULT_NET_LIMITS.handshake_timeout,
    events: Counter[str] | None = None,
) -> None:
    """Serve one client connection until it closes, idles or misbehaves.  Never raises.
    `budget` is the node's for client connections (rule 5; a private one if None), `events`
    counts `client_read_waits`."""
    if budget is None:
        budget = ByteBudget(DEFAULT_NET_LIMITS.node_bytes // 2)
    conn = _ReadConnection(node, stream, max_frame_size, budget, room_timeout, events)
    try:
        async with stream:
            with anyio.CancelScope() as idle:
                moved, slack = -math.inf, idle_timeout / 256
                while True:
                    now = anyio.current_time()
                    if now - moved >= slack:  # the deadline moves on with the requests
                        moved = now
                        idle.deadline = now + idle_timeout
                    msg = await conn.next_request()
                    if msg.get("t") != _REQUEST or type(msg.get("id")) is not int:
                        logger.info("client connection closed: expected a REQUEST")
                        return
                    await conn.answer(msg)
            logger.info("client connection closed: idle")
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return  # (TimeoutError, waiting for memory, is an OSError)
    except EdgeKVError as exc:  # an undecodable or oversize frame (RemoteProtocolError)
        logger.info("client connection closed: %s", exc)
    finally:
        conn.release()
