"""An edge's client reads on a plain TCP socket under trio (node/clientreads.py): the socket is
waited on, read and written directly, one trip through the scheduler per request; pipelined
requests are answered in order; what the socket does not take at once is charged to the
budget until it is sent; a get's answer is the generic one."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

import anyio
import anyio.abc
import cbor2
import trio

from edgekv.gossip.wire import MAX_FRAME_SIZE, MsgType, encode_frame
from edgekv.node.auth import TokenAuth
from edgekv.node.clientreads import ReadNode, answer, reply_frame, serve_reads
from edgekv.node.framed import FramedStream
from edgekv.node.limits import ByteBudget

_REQUEST = int(MsgType.REQUEST)


class _Store:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)


class _Node:
    def __init__(self, values: dict[str, bytes], tokens: dict[str, str] | None = None) -> None:
        self.auth = TokenAuth(tokens)
        self.store = _Store(values)

    def open(self, name: str) -> _Store:
        if name != "s":
            from edgekv.errors import StoreNotFound

            raise StoreNotFound(f"no such store: {name!r}")
        return self.store

    def stores(self) -> list[str]:
        return ["s"]

    def as_read_node(self) -> ReadNode:
        """This fake as the `ReadNode` it stands for: src's protocol says `open` returns the
        concrete `KvStore`, of which the reads here use only `get`, which `_Store` has."""
        return cast(ReadNode, self)


class _Steps(trio.abc.Instrument):
    """Counts the steps of the task named "reads"."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == "reads":
            self.steps += 1


@asynccontextmanager
async def serving(
    node: _Node, budget: ByteBudget
) -> AsyncIterator[Callable[[], anyio.abc.SocketStream]]:
    """serve_reads on one accepted TCP connection; yields the client's end."""
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    assert isinstance(listener, anyio.abc.SocketListener)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        client = await anyio.connect_tcp("127.0.0.1", port)
        server = await listener.accept()

        async def reads() -> None:
            fs = FramedStream(server, max_frame_size=MAX_FRAME_SIZE)
            await serve_reads(node.as_read_node(), fs, 60.0, MAX_FRAME_SIZE, budget=budget)

        tg.start_soon(reads, name="reads")
        async with client:
            yield lambda: client
        tg.cancel_scope.cancel()


async def answers(stream: anyio.abc.SocketStream, n: int) -> list[dict[str, object]]:
    buf = b""
    out: list[dict[str, object]] = []
    while len(out) < n:
        buf += await stream.receive()
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            size = 4 + struct.unpack(">I", buf[:4])[0]
            out.append(cbor2.loads(buf[4:size]))
            buf = buf[size:]
    return out


def get(i: int, key: object, store: object = "s", **more: object) -> bytes:
    return encode_frame({"t": _REQUEST, "id": i, "op": "get", "store": store, "key": key, **more})


async def test_one_scheduler_step_per_sequential_read() -> None:
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        with trio.fail_after(10):
            async with serving(_Node({"k": b"v"}), ByteBudget(1 << 20)) as client:
                await client().send(get(0, "k"))
                await answers(client(), 1)
                before = steps.steps
                for i in range(1, 101):
                    await client().send(get(i, "k"))
                    assert await answers(client(), 1) == [{"t": 51, "id": i, "value": b"v"}]
                # a stream's receive and send cost a step each on top (about 200 in all)
                assert steps.steps - before <= 110
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_pipelined_requests_are_answered_in_order() -> None:
    node = _Node({"a": b"1", "b": b"2"}, tokens={"t": "read:*"})
    burst = b"".join(
        [
            get(1, "a", token="t"),
            get(2, "b", token="t"),
            get(3, "missing", token="t"),
            get(4, 5, token="t"),  # not a string: InvalidInput
            get(5, "a"),  # no token: Unauthorized
            get(6, "a", store="x", token="t"),  # StoreNotFound
            encode_frame({"t": _REQUEST, "id": 7, "op": "stores", "token": "t"}),
            get(8, "a", token="t"),
        ]
    )
    with trio.fail_after(10):
        async with serving(node, ByteBudget(1 << 20)) as client:
            await client().send(burst)
            got = await answers(client(), 8)
    assert [m["id"] for m in got] == list(range(1, 9))
    assert [m.get("value") for m in got[:3]] == [b"1", b"2", None]
    assert [m.get("code") for m in got[3:6]] == ["invalid_input", "unauthorized", "store_not_found"]
    assert got[6]["stores"] == ["s"] and got[7]["value"] == b"1"


def test_a_get_answer_is_the_generic_one() -> None:
    node = _Node({"a": b"1"})
    for key in ("a", "missing"):
        msg = {"t": _REQUEST, "id": 2**64 - 1, "op": "get", "store": "s", "key": key}
        fields = answer(node.as_read_node(), msg)
        assert reply_frame(node.as_read_node(), msg, MAX_FRAME_SIZE) == encode_frame(
            {"t": 51, "id": 2**64 - 1, **fields}
        )


async def test_what_the_socket_does_not_take_is_charged_until_sent() -> None:
    big = b"x" * (12 << 20)  # more than the loopback socket buffers take at once
    budget = ByteBudget(64 << 20)
    with trio.fail_after(20):
        async with serving(_Node({"big": big}), budget) as client:
            await client().send(get(1, "big"))
            while budget.used == 0:  # noqa: ASYNC110 - the answer waits for the client to read it
                await trio.sleep(0.01)
            assert budget.used >= len(big)
            got = await answers(client(), 1)
            assert got[0]["value"] == big
            while budget.used:  # noqa: ASYNC110 - sent: given back
                await trio.sleep(0.01)
            await client().send(get(2, "big"))  # and the connection serves on
            assert (await answers(client(), 1))[0]["id"] == 2
