"""One byte budget per node across all its connections (issue #12), over real sockets.

Per-connection caps alone let 1,000 connections hold 1,000 times their cap.  Here frames
still arriving on many connections, and frames queued to many peers, all draw on one
`ByteBudget` of `NetLimits.node_bytes`: the node's total stays within it (plus one read chunk
per connection), what is over is dropped or not read, and everything works again once the
pressure goes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from edgekv.gossip.wire import encode_frame
from edgekv.node.limits import ByteBudget, NetLimits
from edgekv.node.tcp import TcpTransport

pytestmark = pytest.mark.anyio
CLUSTER = "budget"
CHUNK = 65536  # what one reader may read past the budget (framed.py's read size)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait (bounded) until `check()` holds."""
    with anyio.fail_after(timeout):
        while True:
            if check():
                return
            await anyio.sleep(0.05)


async def test_byte_budget_counts_waits_and_calls_back() -> None:
    budget = ByteBudget(100)
    woken: list[int] = []
    budget.take(60)
    assert budget.fits(40) and not budget.fits(41) and not budget.full
    budget.take(50)
    assert budget.full and budget.peak == 110
    budget.on_room(lambda: woken.append(budget.used))
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def waiter() -> None:
            await budget.room()
            done.set()

        tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        assert not done.is_set()
        budget.give(20)
        await done.wait()
    assert woken == [90] and budget.used == 90


async def test_frames_arriving_on_many_connections_share_one_budget() -> None:
    limit, conns, frame_size = 1 << 20, 40, 256 << 10  # gossip's half of node_bytes
    limits = NetLimits(node_bytes=2 * limit, inbox_bytes=64 << 20, handshake_timeout=1.0)
    async with (
        TcpTransport.serve(cluster_id=CLUSTER, node_id="node", limits=limits) as node,
        TcpTransport.serve(cluster_id=CLUSTER, node_id="peer") as peer,
    ):
        streams = [await peer.dialer.connect(node.address) for _ in range(conns)]
        body = b"\xa0" * (frame_size - 4)  # a frame announcing 256 KiB, 70% of it sent
        part = struct.pack(">I", len(body)) + body[: int(frame_size * 0.7)]
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for fs in streams:
                    tg.start_soon(fs.stream.send, part)
        await until(lambda: node.budget.used >= limit)  # readers fill it, then stop reading
        await anyio.sleep(0.5)
        unbounded = conns * len(part)  # what per-connection caps alone would let in
        assert node.budget.peak <= limit + conns * CHUNK < unbounded
        for fs in streams:
            await anyio.aclose_forcefully(fs.stream)
        # connections waiting for memory with part of a frame give up within the handshake
        # timeout (no deadlock), and what they held is given back
        await until(lambda: not node.budget.used)
        await peer.send(node.address, {"t": 3, "hello": 1})  # and the node reads again
        with anyio.fail_after(10):
            envelope = await node.receive()
        assert envelope.peer == peer.address


async def test_frames_queued_to_many_peers_share_one_budget() -> None:
    limit, frame = 2 << 20, encode_frame({"t": 3, "pad": b"x" * (100 << 10)})
    limits = NetLimits(node_bytes=2 * limit, send_queue_bytes=1 << 20)
    sink_limits = NetLimits(inbox_bytes=1)  # nobody takes their inbox: they stop reading
    async with TcpTransport.serve(cluster_id=CLUSTER, node_id="node", limits=limits) as node:
        sinks = []
        async with anyio.create_task_group() as tg:
            for i in range(5):
                sinks.append(
                    await TcpTransport.create(
                        task_group=tg, cluster_id=CLUSTER, node_id=f"sink{i}", limits=sink_limits
                    )
                )
            for _ in range(60):  # 6 MiB per sink: 30 MiB by per-peer caps alone
                for sink in sinks:
                    node._enqueue(sink.address, frame)
                await anyio.sleep(0.01)
            assert node.budget.peak <= limit < 5 * limits.send_queue_bytes
            assert node.stats.dropped > 0
            for sink in sinks:
                await sink.aclose()
        await until(lambda: not node.budget.used)  # writers sent or dropped all they held


async def test_byte_budget_fit_waits_until_the_bytes_fit() -> None:
    budget = ByteBudget(100)
    budget.take(90)
    with anyio.move_on_after(0.05):
        await budget.fit(20)  # 110 > 100: waits
        pytest.fail("fit returned while 20 bytes did not fit")
    async with anyio.create_task_group() as tg:
        done: list[int] = []

        async def waiter(n: int, own: int = 0) -> None:
            await budget.fit(n, own)
            done.append(n)

        tg.start_soon(waiter, 20)
        tg.start_soon(waiter, 500, 5)  # more than the limit: served once only its own is held
        await anyio.lowlevel.checkpoint()
        budget.give(5)  # 85 + 20 > 100: nobody
        await anyio.sleep(0.01)
        assert done == []
        budget.give(10)  # 75 + 20 fits
        await anyio.sleep(0.01)
        assert done == [20]
        budget.give(70)  # 5 held, all of it the caller's own
    assert done == [20, 500]


async def test_a_flood_of_small_frames_fills_the_inbox_to_its_count_then_waits() -> None:
    """The inbox is bounded in messages too (`inbox_size`): a peer flooding tiny frames at a
    node whose driver takes none fills it to that count, the node stops reading, and every
    message comes out, in order, once the driver takes them."""
    n, size = 200, 8
    async with (
        TcpTransport.serve(cluster_id=CLUSTER, node_id="node", inbox_size=size) as node,
        TcpTransport.serve(cluster_id=CLUSTER, node_id="peer") as peer,
    ):
        for i in range(n):
            await peer.send(node.address, {"t": 3, "i": i})
        await until(lambda: len(node._inbox) == size)
        await anyio.sleep(0.2)
        assert len(node._inbox) == size  # and no more: the reader waits
        with anyio.fail_after(10):
            got = [(await node.receive()).message["i"] for _ in range(n)]
        assert got == list(range(n))
