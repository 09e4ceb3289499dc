"""The receive path's shortcuts (issue #15, CPU per push at an edge): an authenticated framed
stream reads its socket directly, the transport's inbox hands over waiting messages without a
yield each (but still yields during a burst), and a receiver waiting on it wakes once per message."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.streams.stapled
import pytest
import trio
import trio.testing

from edgekv.errors import RemoteProtocolError
from edgekv.gossip.transport import Envelope
from edgekv.gossip.wire import encode_frame
from edgekv.node import sockio, tcp
from edgekv.node.tcp import FramedStream, LinkOptions, TcpTransport

KEY = b"cluster-secret"
CLUSTER = "test-cluster"
T = TypeVar("T")


def link(node_id: str) -> LinkOptions:
    return LinkOptions(cluster_id=CLUSTER, node_id=node_id, role="edge", key=KEY)


@asynccontextmanager
async def framed_pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """(client, server) framed streams over a real loopback TCP connection, handshaken."""
    accepted: list[FramedStream] = []
    got = anyio.Event()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        accepted.append(await FramedStream.accept(stream, link("server")))
        got.set()
        await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        client = await FramedStream.connect(f"127.0.0.1:{port}", link("client"))
        await got.wait()
        try:
            yield client, accepted[0]
        finally:
            await client.abort()
            await accepted[0].abort()
            tg.cancel_scope.cancel()


def forbid_stream_receive(fs: FramedStream) -> None:
    """Make the stream's own `receive` fail: only a direct read of the socket can work."""

    async def receive(max_bytes: int = 65536) -> bytes:
        raise AssertionError("read through the stream, not the socket")

    fs.stream.receive = receive  # type: ignore[method-assign]


async def test_authenticated_stream_reads_its_socket_directly() -> None:
    with trio.fail_after(10):
        async with framed_pair() as (client, server):
            forbid_stream_receive(server)
            frame = encode_frame({"t": 10, "v": b"x" * 1000})
            for i in range(0, len(frame), 97):  # any chunking
                await client.send_frame(frame[i : i + 97])
                await trio.sleep(0.001)
            await client.send({"t": 10, "n": 1})
            await client.send({"t": 10, "n": 2})
            assert await server.receive_sized() == ({"t": 10, "v": b"x" * 1000}, len(frame))
            assert await server.receive() == {"t": 10, "n": 1}
            assert await server.receive() == {"t": 10, "n": 2}


async def test_direct_reads_end_as_the_stream_would() -> None:
    with trio.fail_after(10):
        async with framed_pair() as (client, server):  # a clean close between frames
            await client.send({"t": 10})
            assert await server.receive() == {"t": 10}
            await client.stream.send_eof()
            with pytest.raises(anyio.EndOfStream):
                await server.receive()
        async with framed_pair() as (client, server):  # a close inside a frame
            await client.send_frame(struct.pack(">I", 100) + b"\x00" * 10)
            await client.stream.send_eof()
            with pytest.raises(RemoteProtocolError):
                await server.receive()
        async with framed_pair() as (client, server):  # a reset: BrokenResourceError
            await client.send({"t": 10})
            assert await server.receive() == {"t": 10}
            sock: Any = client.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await client.abort()
            with pytest.raises(anyio.BrokenResourceError):
                await server.receive()


async def yields_during(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """`work()`'s result and how many times another task ran meanwhile (about one per yield)."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        start = turns
        result = await work()
        ran = turns - start
        nursery.cancel_scope.cancel()
    return result, ran


async def test_inbox_hands_over_a_burst_and_still_yields() -> None:
    """Messages already in the inbox come out without a yield each, but at least one yield per
    `_RECEIVE_BURST` of them, so other tasks run during a long burst."""
    with trio.fail_after(10):
        async with TcpTransport.serve(cluster_id=CLUSTER, node_id="n", key=KEY) as t:
            n = 16 * tcp._RECEIVE_BURST
            for i in range(n):
                t._deliver(Envelope("peer:1", {"t": 10, "i": i}), 0)

            async def take_all() -> list[int]:
                return [(await t.receive()).message["i"] for _ in range(n)]

            got, ran = await yields_during(take_all)
            assert got == list(range(n))  # in order, none lost
            # one yield per burst (the other task runs once per yield, give or take one)
            assert n // (tcp._RECEIVE_BURST + 1) - 2 <= ran < n // 4


async def test_sends_queue_a_burst_and_still_yield() -> None:
    """`send` queues a frame for the peer's sender and returns without a yield, at most
    `_SEND_BURST` (or `_SEND_BURST_BYTES`) in a row: the origin's push to twenty edges was
    twenty scheduler steps."""
    with trio.fail_after(10):
        async with TcpTransport.serve(cluster_id=CLUSTER, node_id="n", key=KEY) as t:
            n = 8 * tcp._SEND_BURST

            async def send_all(count: int, message: dict[str, Any]) -> None:
                for i in range(count):
                    await t.send(f"127.0.0.1:{1000 + i}", message)

            _, ran = await yields_during(lambda: send_all(n, {"t": 13}))  # PRUNEs
            assert t.stats.sent_messages["PRUNE"] == n
            assert n // tcp._SEND_BURST - 2 <= ran <= n // tcp._SEND_BURST + 1

            # large frames (snapshot chunks) still yield each, so the writers drain the queues
            big = {"t": 13, "pad": bytes(tcp._SEND_BURST_BYTES)}
            _, ran = await yields_during(lambda: send_all(8, big))
            assert 7 <= ran <= 9


class _Steps(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_waiting_receiver_wakes_once_per_message() -> None:
    """A quiet node's driver waits in `receive`; a message handed to it costs its task one
    scheduler step, not a checkpoint on top (the inbox was an anyio memory stream, whose
    `receive` yields before it waits: two steps per push at every edge, 6 here)."""
    with trio.fail_after(10):
        async with TcpTransport.serve(cluster_id=CLUSTER, node_id="n", key=KEY) as t:
            steps = _Steps()
            got: list[int] = []

            async def driver() -> None:
                steps.task = trio.lowlevel.current_task()
                for _ in range(3):
                    got.append((await t.receive()).message["i"])

            trio.lowlevel.add_instrument(steps)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(driver)
                    for i in range(3):
                        await trio.testing.wait_all_tasks_blocked()
                        t._deliver(Envelope("peer:1", {"t": 10, "i": i}), 0)
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert got == [0, 1, 2]
            assert steps.steps == 3  # one per message (the task is known from its first step on)


async def test_direct_socket_is_asked_of_anyio_once_per_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The senders ask `direct_socket` at every frame: the answer is remembered per stream."""
    calls: list[object] = []
    raw = sockio._raw

    def counting(stream: anyio.abc.ByteStream) -> socket.socket | None:
        calls.append(stream)
        return raw(stream)

    monkeypatch.setattr(sockio, "_raw", counting)
    with trio.fail_after(10):
        async with framed_pair() as (client, _server):
            sock = sockio.direct_socket(client.stream)
            assert sock is not None
            assert sock is client.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            assert all(sockio.direct_socket(client.stream) is sock for _ in range(10))
            assert calls.count(client.stream) == 1
            stapled = anyio.streams.stapled.StapledByteStream(client.stream, client.stream)
            assert sockio.direct_socket(stapled) is None  # not a plain socket stream
