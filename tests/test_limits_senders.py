"""The table of per-peer senders stays bounded (issue #12), virtual clock.

A node keeps one send queue, one writer task and one connection per peer it sends to
(node/senders.py).  They used to live for ever, one per address ever sent to, so a peer that
made a node send to many addresses (or churn at 1,000 edges) grew tasks, memory and open
connections without bound.  Now a sender that idles for `sender_idle_timeout` is closed and
removed, at most `max_senders` exist (the one sent to least recently is evicted), a removed
sender is made again on the next send, and nothing queued to an active sender is lost.
Fake connections (no sockets) so that trio's MockClock can jump over the idle times.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel

from edgekv.gossip.transport import TransportStats
from edgekv.node.dialer import Dialer
from edgekv.node.framed import FramedStream
from edgekv.node.limits import DEFAULT_NET_LIMITS, ByteBudget, NetLimits
from edgekv.node.metrics import NodeCollector, NodeMetrics
from edgekv.node.senders import PeerSenders
from edgekv.node.tcp import TcpTransport
from test_edge_harness import wait_until


class FakeStream(anyio.abc.ByteStream):
    """One outbound connection: what is sent goes to `sink`, each send takes `delay` s."""

    def __init__(self, sink: list[bytes], delay: float) -> None:
        self.sink, self.delay = sink, delay
        self.closed = anyio.Event()

    async def send(self, item: bytes) -> None:
        await anyio.sleep(self.delay)
        if self.closed.is_set():
            raise anyio.ClosedResourceError
        self.sink.append(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await self.closed.wait()  # the peer never sends on our connection
        raise anyio.ClosedResourceError

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed.set()
        await anyio.lowlevel.checkpoint()


class FakeDialer:
    """Connects to any address at once; remembers every connection it opened."""

    address = "me:1"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: dict[str, list[bytes]] = {}
        self.streams: list[FakeStream] = []

    async def connect(self, address: str) -> FramedStream:
        await anyio.lowlevel.checkpoint()
        stream = FakeStream(self.sent.setdefault(address, []), self.delay)
        self.streams.append(stream)
        return FramedStream(stream)

    def open_connections(self) -> int:
        return sum(not s.closed.is_set() for s in self.streams)


def live_tasks(name: str) -> int:
    """Tasks of this trio run whose name contains `name` (walks the whole task tree)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None  # called from inside trio.run
    count, todo = 0, [root]
    while todo:
        task = todo.pop()
        count += name in task.name
        todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return count


def make_senders(
    tg: anyio.abc.TaskGroup, dialer: FakeDialer, limits: NetLimits = DEFAULT_NET_LIMITS
) -> PeerSenders:
    senders = PeerSenders(
        cast(Dialer, dialer),
        stats=TransportStats(),
        limits=limits,
        budget=ByteBudget(64 << 20),
        queue_size=1000,
        on_connected=lambda conn, dialled: None,
    )
    senders.tg = tg
    return senders


async def test_sending_to_2000_addresses_keeps_at_most_max_senders(autojump_clock: Any) -> None:
    dialer = FakeDialer()
    cap = DEFAULT_NET_LIMITS.max_senders
    async with anyio.create_task_group() as tg:
        senders = make_senders(tg, dialer)
        for i in range(2000):
            senders.enqueue(f"10.1.{i // 250}.{i % 250}:7", b"frame %d" % i)
            if i % 100 == 99:
                await trio.sleep(0.01)
                assert len(senders._peers) <= cap
                assert live_tasks("_writer") <= cap and live_tasks("_watch") <= cap
                assert dialer.open_connections() <= cap
        await trio.sleep(1)
        assert len(senders._peers) == cap  # was 2,000: one per address ever sent to
        assert live_tasks("_writer") == cap and dialer.open_connections() == cap
        assert senders.stats.senders_evicted == 2000 - cap
        assert senders.stats.total()["senders_evicted"] == 2000 - cap  # in /status
        metrics = NodeCollector(
            node_id="n", stats=senders.stats, metrics=NodeMetrics(), gossip_counters={}, gauges={}
        ).text()
        assert f'edgekv_senders_evicted_total{{node="n"}} {2000 - cap}.0' in metrics
        assert sum(map(len, dialer.sent.values())) == 2000  # each frame went out first
        assert senders.budget.used == 0
        # the newest stayed; the next send to an evicted address makes a new sender
        assert "10.1.7.249:7" in senders._peers and "10.1.0.0:7" not in senders._peers
        senders.enqueue("10.1.0.0:7", b"again")
        await trio.sleep(0.1)
        assert dialer.sent["10.1.0.0:7"] == [b"frame 0", b"again"]
        assert len(senders._peers) == cap
        tg.cancel_scope.cancel()


async def test_the_peer_sent_to_least_recently_is_evicted_with_its_frames(
    autojump_clock: Any,
) -> None:
    dialer = FakeDialer(delay=10.0)  # slow peers: frames stay queued
    async with anyio.create_task_group() as tg:
        senders = make_senders(tg, dialer, NetLimits(max_senders=3))
        for peer in ("a", "b", "c", "a"):
            senders.enqueue(peer, b"x" * 100)
        await trio.sleep(1)  # each writer is sending its first frame (10 s)
        assert senders.budget.used == 400
        senders.enqueue("d", b"y" * 100)  # b was sent to least recently
        await trio.sleep(1)
        assert sorted(senders._peers) == ["a", "c", "d"]
        assert senders.stats.senders_evicted == 1 and senders.stats.dropped == 1
        assert senders.budget.used == 400  # b's frame given back (a holds 2)
        assert live_tasks("_writer") == 3
        await trio.sleep(30)
        assert dialer.sent["a"] == [b"x" * 100] * 2 and dialer.sent["b"] == []
        assert senders.budget.used == 0
        tg.cancel_scope.cancel()


async def test_an_idle_sender_is_removed_and_made_again_on_the_next_send(
    autojump_clock: Any,
) -> None:
    idle = 5.0
    dialer = FakeDialer(delay=2.0)
    async with anyio.create_task_group() as tg:
        senders = make_senders(tg, dialer, NetLimits(sender_idle_timeout=idle))
        # a queue that drains slowly (10 frames x 2 s, longer than the idle time) is not idle
        frames = [b"%d" % i for i in range(10)]
        for frame in frames:
            senders.enqueue("p", frame)
        await trio.sleep(19)
        assert len(senders._peers) == 1 and dialer.sent["p"] == frames[:9]
        # nor is one sent to more often than the idle time: it keeps its connection
        for i in range(5):
            await trio.sleep(idle - 1)
            senders.enqueue("p", b"more %d" % i)
        await trio.sleep(2.5)
        assert len(dialer.streams) == 1 and dialer.open_connections() == 1
        assert dialer.sent["p"] == frames + [b"more %d" % i for i in range(5)]
        assert senders.stats.senders_expired == 0
        # idle (for one to two idle times): closed, its tasks ended, its connection closed
        await trio.sleep(idle - 0.5)
        assert len(senders._peers) == 1
        await trio.sleep(idle + 0.5)
        assert len(senders._peers) == 0 and live_tasks("_writer") == 0 and live_tasks("_watch") == 0
        assert live_tasks("_sweep") == 0
        assert dialer.open_connections() == 0 and senders.stats.senders_expired == 1
        # the next send makes it again, transparently
        senders.enqueue("p", b"back")
        await trio.sleep(2.5)
        assert dialer.sent["p"][-1] == b"back" and len(dialer.streams) == 2
        assert len(senders._peers) == 1 and senders.budget.used == 0
        tg.cancel_scope.cancel()


async def test_a_cut_off_peer_gets_no_new_sender_when_its_old_one_idled_away(
    autojump_clock: Any,
) -> None:
    limits = NetLimits(sender_idle_timeout=1.0)
    async with TcpTransport.serve(cluster_id="senders", node_id="n", limits=limits) as node:
        node._senders.dialer = cast(Dialer, FakeDialer())
        node._enqueue("p:1", b"frame")
        await trio.sleep(0.1)
        assert len(node._senders._peers) == 1
        node.disconnect("p:1", backoff=60.0)
        await trio.sleep(5)
        assert len(node._senders._peers) == 0  # its back-off went with it
        node._enqueue("p:1", b"frame")
        await trio.sleep(0.1)
        assert len(node._senders._peers) == 0 and node.stats.dropped == 1
        await trio.sleep(60)
        node._enqueue("p:1", b"frame")
        await trio.sleep(0.1)
        assert len(node._senders._peers) == 1


def test_idle_expiry_and_eviction_under_asyncio() -> None:
    """The same rules where the node is embedded in an asyncio program (real time, short)."""

    async def main() -> None:
        dialer = FakeDialer()
        limits = NetLimits(sender_idle_timeout=0.2, max_senders=2)
        async with anyio.create_task_group() as tg:
            senders = make_senders(tg, dialer, limits)
            for peer in ("a", "b", "c"):
                senders.enqueue(peer, b"f")
            await anyio.sleep(0.05)
            assert sorted(senders._peers) == ["b", "c"] and senders.stats.senders_evicted == 1
            assert senders.stats.dropped == 1  # a's frame: evicted before its writer ran
            await anyio.sleep(0.6)
            assert not senders._peers and dialer.open_connections() == 0
            assert senders.stats.senders_expired == 2 and senders.budget.used == 0
            senders.enqueue("a", b"g")
            await anyio.sleep(0.05)
            assert dialer.sent["a"] == [b"g"] and list(senders._peers) == ["a"]
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")


async def test_one_peers_queue_is_bounded_in_bytes(autojump_clock: Any) -> None:
    """`send_queue_bytes` per peer: frames past it are dropped and counted, the rest go out
    in order; a peer that drains takes frames again."""
    dialer = FakeDialer(delay=1.0)
    async with anyio.create_task_group() as tg:
        senders = make_senders(tg, dialer, NetLimits(send_queue_bytes=1000))
        frames = [b"%03d" % i + b"x" * 97 for i in range(30)]  # 100 bytes each
        for frame in frames:
            senders.enqueue("slow", frame)
        assert senders.stats.dropped == 20 and senders.budget.used == 1000
        await trio.sleep(20)
        assert dialer.sent["slow"] == frames[:10] and senders.budget.used == 0
        senders.enqueue("slow", frames[10])
        await trio.sleep(2)
        assert dialer.sent["slow"] == frames[:11]
        tg.cancel_scope.cancel()


async def test_a_frame_larger_than_the_queue_goes_when_the_queue_is_empty(
    autojump_clock: Any,
) -> None:
    """The queue bound drops frames behind others, not a frame alone: one larger than
    `send_queue_bytes` (a key's whole state, up to the frame limit, above the 4 MiB default)
    is queued when nothing else is, and what comes while it waits is dropped."""
    dialer = FakeDialer(delay=1.0)
    async with anyio.create_task_group() as tg:
        senders = make_senders(tg, dialer, NetLimits(send_queue_bytes=1000))
        big, small = b"b" * 2500, b"s" * 10
        senders.enqueue("slow", big)
        senders.enqueue("slow", small)
        assert senders.stats.dropped == 1 and senders.budget.used == len(big)
        await trio.sleep(5)
        assert dialer.sent["slow"] == [big] and senders.budget.used == 0
        tg.cancel_scope.cancel()


class SocketDialer:
    """Connects to one real loopback listener, with small kernel buffers (so that a large frame
    is taken only in part)."""

    address = "me:1"

    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self, address: str) -> FramedStream:
        stream = await anyio.connect_tcp("127.0.0.1", self.port)
        stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        return FramedStream(stream)


@pytest.mark.parametrize("budget", [64 << 20, 1 << 20])
async def test_a_frame_to_an_idle_connected_peer_is_written_at_once(budget: int) -> None:
    """Rule 1: with the peer's connection open and nothing queued, `enqueue` writes the frame
    to the socket itself (no writer task's turn); what the kernel does not take is queued and
    goes first, so frames arrive whole and in order.  A frame the byte budget cannot hold is
    dropped whole, never cut after a part went out."""
    got = bytearray()
    reading = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await reading.wait()
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    got.extend(await stream.receive())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    listener.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
    )
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        senders = make_senders(tg, cast(FakeDialer, SocketDialer(port)))
        senders.budget = ByteBudget(budget)
        senders.enqueue("p:1", b"a" * 10)  # opens the connection (the writer task sends it)
        out = senders._peers["p:1"]
        await wait_until(lambda: not out.queued_bytes, within=10)
        senders.enqueue("p:1", b"b" * 10)  # idle and connected: written here and now
        assert out.queued_bytes == 0
        big = b"c" * (4 << 20)
        senders.enqueue("p:1", big)  # the kernel takes a part; the rest is queued
        fits = budget >= len(big)
        assert 0 < out.queued_bytes < len(big) if fits else out.queued_bytes == 0
        senders.enqueue("p:1", b"d" * 10)  # behind the queued rest, never before it
        reading.set()
        sent = b"a" * 10 + b"b" * 10 + (big if fits else b"") + b"d" * 10
        await wait_until(lambda: len(got) >= len(sent), within=10)
        assert bytes(got) == sent
        senders.close()
        tg.cancel_scope.cancel()


async def test_one_message_sent_to_several_peers_in_a_row_is_encoded_once(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The origin's push at one flush moment is one message object for every peer
    (gossip/dissemination.py rule 1): the transport encodes it once, and every peer gets the
    same frame; another message (even an equal one) is encoded again."""
    import edgekv.gossip.wire as wire
    import edgekv.node.tcp as tcp

    encoded: list[dict[str, Any]] = []

    def counting(message: dict[str, Any], max_frame_size: int = 1 << 20) -> bytes:
        encoded.append(message)
        return real(message, max_frame_size)

    real = wire.encode_frame  # the function tcp imports from gossip.wire and calls
    monkeypatch.setattr(tcp, "encode_frame", counting)
    async with TcpTransport.serve(cluster_id="senders", node_id="n") as node:
        dialer = FakeDialer()
        node._senders.dialer = cast(Dialer, dialer)
        push = {"t": 10, "items": [["s", "k", b"v"]]}
        for peer in ("a:1", "b:1", "c:1"):
            await node.send(peer, push)
        await node.send("a:1", dict(push))
        await trio.sleep(0.1)
        assert len(encoded) == 2
        assert dialer.sent["a:1"][0] == dialer.sent["b:1"][0] == dialer.sent["c:1"][0]
        assert dialer.sent["a:1"][1] == dialer.sent["a:1"][0]
