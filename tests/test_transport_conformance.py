"""One conformance suite for every Transport (simulated under MockClock, TCP on 127.0.0.1),
plus TCP-only tests of hostile connections."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import cbor2
import pytest
import trio
from trio.testing import MockClock

from edgekv.errors import LocalProtocolError, Unauthorized
from edgekv.gossip.transport import Envelope, Transport, TransportStats
from edgekv.gossip.wire import FrameDecoder, Handshake, encode_frame
from edgekv.node.faults import LinkFaults
from edgekv.node.tcp import FramedStream, LinkOptions, TcpTransport, parse_address
from edgekv.testnet.simnet import SimNetwork

KEY = b"cluster-secret"
CLUSTER = "test-cluster"


@pytest.fixture(params=["sim", "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock | None:
    """pytest-trio runs the test with this clock: virtual time for sim, the real one for TCP."""
    return MockClock(autojump_threshold=0) if kind == "sim" else None


@asynccontextmanager
async def network(kind: str, n: int) -> AsyncIterator[list[Transport]]:
    if kind == "sim":
        net = SimNetwork(LinkFaults(seed=1, latency=0.01))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            transports = [net.transport(f"node-{i}") for i in range(n)]
            yield list(transports)
            for t in transports:
                await t.aclose()
            nursery.cancel_scope.cancel()
    else:
        async with AsyncExitStack() as stack:
            tcp = [
                await stack.enter_async_context(
                    TcpTransport.serve(cluster_id=CLUSTER, node_id=f"node-{i}", key=KEY)
                )
                for i in range(n)
            ]
            yield list(tcp)


def dead_address(kind: str) -> str:
    return "node-nowhere" if kind == "sim" else "127.0.0.1:1"


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for something another task does (bounded by the test's fail_after)."""
    while not predicate():  # noqa: ASYNC110 - counters have no event to wait on
        await trio.sleep(0.001)


async def test_peer_identity(kind: str, clock: MockClock | None) -> None:
    with trio.fail_after(10):
        async with network(kind, 3) as (a, b, c):
            await a.send(b.address, {"t": 10, "from": "a"})
            env = await b.receive()
            assert env == Envelope(a.address, {"t": 10, "from": "a"})
            await c.send(b.address, {"t": 40})
            assert await b.receive() == Envelope(c.address, {"t": 40})
            await b.send(a.address, {"t": 41, "reply": True})  # replies reach the sender
            assert await a.receive() == Envelope(b.address, {"t": 41, "reply": True})


async def test_per_peer_order(kind: str, clock: MockClock | None) -> None:
    with trio.fail_after(10):
        async with network(kind, 3) as (a, b, c):
            for i in range(200):
                await a.send(c.address, {"t": 10, "i": i})
                await b.send(c.address, {"t": 10, "i": i})
            got: dict[str, list[int]] = {a.address: [], b.address: []}
            for _ in range(400):
                env = await c.receive()
                got[env.peer].append(env.message["i"])
            assert got[a.address] == list(range(200))
            assert got[b.address] == list(range(200))


async def test_send_to_dead_or_unknown_peer_does_not_raise(
    kind: str, clock: MockClock | None
) -> None:
    with trio.fail_after(10):
        async with network(kind, 2) as (a, b):
            for _ in range(3):
                await a.send(dead_address(kind), {"t": 40})
            await a.send("not an address", {"t": 40})
            await wait_until(lambda: a.stats.dropped >= 4)
            await a.send(b.address, {"t": 40})  # still works for live peers
            assert (await b.receive()).peer == a.address


async def test_send_to_closed_peer_does_not_raise(kind: str, clock: MockClock | None) -> None:
    with trio.fail_after(10):
        async with network(kind, 2) as (a, b):
            await a.send(b.address, {"t": 40})
            await b.receive()
            await b.aclose()
            for _ in range(5):
                await a.send(b.address, {"t": 40})
                await trio.sleep(0.01)


async def test_stats_count_messages_and_bytes(kind: str, clock: MockClock | None) -> None:
    msgs: list[dict[str, Any]] = [{"t": 10, "v": b"x" * 100}, {"t": 10}, {"t": 40, "n": 1}]
    with trio.fail_after(10):
        async with network(kind, 2) as (a, b):
            for m in msgs:
                await a.send(b.address, m)
            for _ in msgs:
                await b.receive()
            push_bytes = len(encode_frame(msgs[0])) + len(encode_frame(msgs[1]))
            assert a.stats.sent_messages == {"PUSH": 2, "PING": 1}
            assert a.stats.sent_bytes == {"PUSH": push_bytes, "PING": len(encode_frame(msgs[2]))}
            assert b.stats.received_messages == a.stats.sent_messages
            assert b.stats.received_bytes == a.stats.sent_bytes
            total = TransportStats.combined([a.stats, b.stats]).total()
            assert total["sent_messages"] == total["received_messages"] == 3
            assert total["dropped"] == 0


async def test_unencodable_message_is_local_error(kind: str, clock: MockClock | None) -> None:
    with trio.fail_after(10):
        async with network(kind, 2) as (a, b):
            with pytest.raises(LocalProtocolError):
                await a.send(b.address, {"t": 10, "v": {1, 2}})
            with pytest.raises(LocalProtocolError):
                await a.send(b.address, {"no type": 1})


async def test_close_is_clean(kind: str, clock: MockClock | None) -> None:
    with trio.fail_after(10):
        async with network(kind, 2) as (a, b):
            assert isinstance(a, Transport)
            outcome: list[BaseException] = []

            async def pending_receive() -> None:
                try:
                    await b.receive()
                except anyio.ClosedResourceError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_receive)
                await trio.sleep(0.01)
                await b.aclose()
            assert len(outcome) == 1
            await b.aclose()  # idempotent
            with pytest.raises(anyio.ClosedResourceError):
                await b.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await b.send(a.address, {"t": 40})


# --- TCP only: hostile connections -----------------------------------------------------------


@asynccontextmanager
async def server_and_good_peer() -> AsyncIterator[tuple[TcpTransport, TcpTransport]]:
    async with (
        TcpTransport.serve(cluster_id=CLUSTER, node_id="server", key=KEY) as server,
        TcpTransport.serve(cluster_id=CLUSTER, node_id="good", key=KEY) as good,
    ):
        yield server, good


async def assert_still_serves(server: TcpTransport, good: TcpTransport) -> None:
    await good.send(server.address, {"t": 10, "still": "serving"})
    assert await server.receive() == Envelope(good.address, {"t": 10, "still": "serving"})


async def raw_connection(server: TcpTransport) -> anyio.abc.SocketStream:
    host, port = parse_address(server.address)
    return await anyio.connect_tcp(host, port)


async def assert_closed_by_server(stream: anyio.abc.ByteStream) -> None:
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass


async def authenticated(server: TcpTransport) -> FramedStream:
    return await FramedStream.connect(
        server.address,
        LinkOptions(cluster_id=CLUSTER, node_id="raw", role="edge", advertise="", key=KEY),
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        struct.pack(">I", 0xFFFFFFFF),  # oversize length prefix before the handshake
        struct.pack(">I", 5000) + b"\x00" * 5000,  # over the handshake frame cap
        struct.pack(">I", 3) + b"\xff\xff\xff",  # undecodable CBOR
        encode_frame({"t": 10}),  # a message before the handshake
        encode_frame({"t": 1, "cluster": "other"}),  # malformed HELLO
    ],
)
async def test_garbage_before_handshake_closes_connection(payload: bytes) -> None:
    with trio.fail_after(10):
        async with server_and_good_peer() as (server, good):
            async with await raw_connection(server) as raw:
                await raw.send(payload)
                await assert_closed_by_server(raw)
            assert server.stats.rejected_connections == 1
            await assert_still_serves(server, good)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x05garbage",
        struct.pack(">I", 0xFFFFFFFF),
        struct.pack(">I", 6) + cbor2.dumps({"t": 9999}),
        encode_frame({"t": 10, "k": "v"})[:-2],  # truncated frame, then close
    ],
)
async def test_garbage_after_handshake_closes_connection(payload: bytes) -> None:
    with trio.fail_after(10):
        async with server_and_good_peer() as (server, good):
            fs = await authenticated(server)
            async with fs:
                await fs.send({"t": 10, "ok": 1})
                assert (await server.receive()).message == {"t": 10, "ok": 1}
                await fs.send_frame(payload)
                if payload.startswith(encode_frame({"t": 10, "k": "v"})[:4]):
                    await fs.stream.send_eof()
                await assert_closed_by_server(fs.stream)
            assert server.stats.rejected_connections == 1
            await assert_still_serves(server, good)


async def test_wrong_key_client_is_rejected_both_ways() -> None:
    with trio.fail_after(10):
        async with server_and_good_peer() as (server, good):
            with pytest.raises(Unauthorized):  # the client spots the server's MAC is not ours
                await FramedStream.connect(
                    server.address,
                    LinkOptions(cluster_id=CLUSTER, node_id="x", role="edge", key=b"wrong"),
                )
            # a hostile client that ignores that and sends a forged AUTH is closed by the server
            async with await raw_connection(server) as raw:
                hs = Handshake(CLUSTER, "evil", "edge", "", None, True, b"E" * 16)
                await raw.send(encode_frame(hs.start()[0]))
                decoder = FrameDecoder()
                while not (ack := decoder.feed(await raw.receive())):
                    pass
                assert ack[0]["t"] == 2
                await raw.send(encode_frame({"t": 3, "mac": b"\x00" * 32}))
                await assert_closed_by_server(raw)
            await wait_until(lambda: server.stats.rejected_connections == 2)
            await assert_still_serves(server, good)


async def test_wrong_cluster_and_keyless_peers_deliver_nothing() -> None:
    with trio.fail_after(10):
        async with (
            server_and_good_peer() as (server, good),
            TcpTransport.serve(cluster_id=CLUSTER, node_id="nokey") as keyless,
            TcpTransport.serve(cluster_id="other", node_id="other", key=KEY) as other,
        ):
            await keyless.send(server.address, {"t": 10, "from": "keyless"})
            await other.send(server.address, {"t": 10, "from": "other"})
            await wait_until(lambda: server.stats.rejected_connections == 2)
            await wait_until(lambda: keyless.stats.dropped == 1 and other.stats.dropped == 1)
            await assert_still_serves(server, good)


async def test_silent_client_times_out() -> None:
    with trio.fail_after(10):
        async with TcpTransport.serve(
            cluster_id=CLUSTER, node_id="s", key=KEY, handshake_timeout=0.2
        ) as server:
            async with await raw_connection(server) as raw:
                await assert_closed_by_server(raw)
            assert server.stats.rejected_connections == 1


async def test_reconnects_after_peer_restart() -> None:
    with trio.fail_after(10):
        async with TcpTransport.serve(cluster_id=CLUSTER, node_id="a") as a:
            async with TcpTransport.serve(cluster_id=CLUSTER, node_id="b") as b:
                address = b.address
                await a.send(address, {"t": 40})
                await b.receive()
            async with TcpTransport.serve(address, cluster_id=CLUSTER, node_id="b2") as b2:
                for i in range(100):
                    await a.send(address, {"t": 40, "i": i})
                    await trio.sleep(0.01)
                    if b2.stats.received_messages["PING"]:
                        break
                assert (await b2.receive()).peer == a.address


async def test_tcp_applies_link_faults() -> None:
    faults = LinkFaults(seed=3, latency=0.05)
    with trio.fail_after(10):
        async with (
            TcpTransport.serve(cluster_id=CLUSTER, node_id="a", faults=faults) as a,
            TcpTransport.serve(cluster_id=CLUSTER, node_id="b") as b,
        ):
            start = trio.current_time()
            await a.send(b.address, {"t": 40})
            await b.receive()
            assert trio.current_time() - start >= 0.05
            faults.block(a.address, b.address)
            await a.send(b.address, {"t": 40})
            assert a.stats.dropped == 1


async def test_tcp_runs_under_asyncio() -> None:
    received: list[Envelope] = []

    async def main() -> None:
        with anyio.fail_after(10):
            async with (
                TcpTransport.serve(cluster_id=CLUSTER, node_id="a", key=KEY) as a,
                TcpTransport.serve(cluster_id=CLUSTER, node_id="b", key=KEY) as b,
            ):
                await a.send(b.address, {"t": 10})
                received.append(await b.receive())

    await trio.to_thread.run_sync(lambda: anyio.run(main, backend="asyncio"))
    assert received[0].message == {"t": 10}


async def test_client_role_connections_go_to_on_client() -> None:
    from edgekv.gossip.wire import PeerIdentity

    async def echo(peer: PeerIdentity, fs: FramedStream) -> None:
        msg = await fs.receive()
        await fs.send({"t": 51, "echo": msg["q"], "who": peer.node_id})

    with trio.fail_after(10):
        async with (
            TcpTransport.serve(
                cluster_id=CLUSTER, node_id="origin", key=KEY, on_client=echo
            ) as server,
            await FramedStream.connect(
                server.address,
                LinkOptions(cluster_id=CLUSTER, node_id="cli", role="client", key=KEY),
            ) as client,
        ):
            await client.send({"t": 50, "q": "hi"})
            assert await client.receive() == {"t": 51, "echo": "hi", "who": "cli"}


async def test_disconnect_closes_both_ways_and_refuses_reconnects_during_the_backoff() -> None:
    """A peer cut off for unsigned data (node/runtime.py rule 6): its connection to us and ours
    to it are closed, and one it opens during the back-off is closed after the handshake."""
    with trio.fail_after(20):
        async with server_and_good_peer() as (server, bad):
            await assert_still_serves(server, bad)  # bad -> server open
            await server.send(bad.address, {"t": 10, "n": 1})  # server -> bad open
            assert await bad.receive() == Envelope(server.address, {"t": 10, "n": 1})
            assert bad.address in server._inbound and server._senders._peers[bad.address].conn
            server.disconnect(bad.address, 60.0)
            for _ in range(500):  # the reader notices the cancellation at its next checkpoint
                if bad.address not in server._inbound:
                    break
                await trio.sleep(0.01)
            assert bad.address not in server._inbound
            assert server._senders._peers[bad.address].conn is None
            before = server.stats.refused_connections
            while server.stats.refused_connections == before:  # bad reconnects, refused
                await bad.send(server.address, {"t": 10, "n": 2})
                await trio.sleep(0.05)
            await server.send(bad.address, {"t": 10, "n": 3})  # nothing goes to it either
            with trio.move_on_after(0.3):
                await server.receive()
                raise AssertionError("a message from a peer in its back-off was read")
            with trio.move_on_after(0.3):
                await bad.receive()
                raise AssertionError("a message was sent to a peer in its back-off")
            server._cut_off.clear()  # as when the back-off ends: its connections are served
            await assert_still_serves(server, bad)
