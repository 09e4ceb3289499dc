"""No outbound connection to an address a peer merely claims (issue #12), over real sockets.

A hostile peer with valid credentials floods every node with a MEMBERS table of 9,999 fake
rows and opens 200 connections whose handshakes claim new addresses.  Trap listeners sit at
some of the fake addresses and count what reaches them: nothing reaches a fake named in a
member row; a fake claimed by a connection from this host gets at most one confirmation probe
(a handshake asking "did you open this connection?", no gossip), and none again while it is
remembered as failed.  Member tables stay within `max_members` and hold no fake, and
anti-entropy keeps completing and the cluster converges on new writes.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from edgekv.gossip import messages as m
from edgekv.gossip.config import GossipConfig
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.testnet import Testnet as Net
from hostile import Hostile
from test_limits_process import wait_for


class Trap:
    """A listener at a fake address: counts the connections and bytes that reach it."""

    def __init__(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        self.listener = listener
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.address = f"127.0.0.1:{port}"
        self.accepted = 0
        self.received = 0

    async def run(self) -> None:
        async def handle(stream: anyio.abc.SocketStream) -> None:
            self.accepted += 1
            async with stream:
                with anyio.move_on_after(1):
                    async for chunk in stream:
                        self.received += len(chunk)

        async with self.listener:
            await self.listener.serve(handle)


async def open_traps(n: int, tg: anyio.abc.TaskGroup) -> list[Trap]:
    traps = []
    for _ in range(n):
        trap = Trap(await anyio.create_tcp_listener(local_host="127.0.0.1"))
        tg.start_soon(trap.run)
        traps.append(trap)
    return traps


def runtimes(net: Net) -> list[Any]:
    origin = net.origin
    assert origin is not None  # an in-process origin, up
    return [origin.runtime, *(net.edge(name).runtime for name in net.live_edges())]


async def test_member_floods_and_address_claims_open_no_connection_to_the_fakes() -> None:
    config = GossipConfig(max_members=64, ae_interval=0.2)
    async with anyio.create_task_group() as tg:
        row_traps = await open_traps(20, tg)
        claim_traps = await open_traps(20, tg)
        async with Net(edges=3, network="tcp", config=config, seed=5) as net:
            await net.client.create_store("s")
            await net.client.put("s", "before", b"1")
            assert await net.converged(timeout=20)
            completed = [rt.gossip.counters["ae_completed"] for rt in runtimes(net)]

            # a failed probe is not repeated while remembered (30 s by default); on a loaded
            # machine the claims below can take longer than that, so remember it for the test
            for rt in runtimes(net):
                getattr(rt.transport, "inner", rt.transport).dialer.failed_backoff = 3600.0
            evil = await Hostile.join(net)  # listens at its own address: its claims confirm
            fakes = [t.address for t in row_traps]
            fakes += [f"10.255.{i // 250}.{i % 250}:7" for i in range(9_999 - len(fakes))]
            flood = m.Members([(a, "edge", 0, "alive") for a in fakes]).to_wire()
            await evil.send_to_all(flood)
            claimed = [t.address for t in claim_traps] * 5  # each claimed 5 times
            claimed += [f"10.254.0.{i}:7" for i in range(100)]  # on another host
            targets = [net.address_of(n) for n in ["origin", *net.live_edges()]]
            passed: list[str] = []
            made: list[str] = []

            limiter = anyio.CapacityLimiter(20)  # handshakes at once (a loaded machine is slow)

            async def claim(i: int, address: str) -> None:
                async with limiter:
                    await claim_once(i, address)

            async def claim_once(i: int, address: str) -> None:
                try:
                    conn = await FramedStream.connect(
                        targets[i % len(targets)],
                        LinkOptions(
                            cluster_id=net.cluster_id,
                            node_id=f"spoof-{i}",
                            role="edge",
                            advertise=address,
                        ),
                        connect_timeout=20,
                    )
                except Exception:
                    return  # (a busy node may time a handshake out: then nothing was claimed)
                made.append(address)
                async with conn:
                    try:
                        await conn.send(flood)
                        # the node closes it once the claim fails: after a probe of up to
                        # 5 s, behind up to 16 others (generous for a loaded machine)
                        with anyio.move_on_after(30):
                            await conn.receive()
                        passed.append(address)
                    except Exception:
                        pass

            async with anyio.create_task_group() as claims:
                for i, address in enumerate(claimed):
                    claims.start_soon(claim, i, address)
            assert not passed, "a connection with an unconfirmed claim stayed open"

            await net.client.put("s", "after", b"2")
            assert await net.converged(timeout=20)
            await wait_for(
                lambda: all(
                    rt.gossip.counters["ae_completed"] > before
                    for rt, before in zip(runtimes(net), completed, strict=True)
                )
            )
            fake_set = set(fakes) | set(claimed)
            for rt in runtimes(net):
                peers = set(rt.gossip.peers())
                assert len(peers) <= config.max_members
                assert not peers & fake_set
                assert rt.transport.stats.undialled == 0  # nothing even tried to send to one
            refused = net.stats().refused_claims
            assert len(made) >= len(claimed) * 3 // 4
            n_refused = sum(r["unconfirmed_address"] for r in refused.values())
            assert len(made) <= n_refused <= len(claimed), refused
        assert all(t.accepted == 0 for t in row_traps), [t.accepted for t in row_traps]
        # one probe per claimed trap address, however often it was claimed (failures are kept)
        assert all(t.accepted <= 1 for t in claim_traps), [t.accepted for t in claim_traps]
        assert all(t.received <= 1024 for t in claim_traps)  # a HELLO, no gossip
        tg.cancel_scope.cancel()
