"""A hostile peer for tests: holds valid cluster credentials and speaks the real wire protocol.

`Hostile` sits on a testnet's network (`Testnet.attach`, sim or tcp) and sends whatever message
it is told to, built with the same `gossip.messages` builders and framed by the same
`gossip.wire` code as an honest node's, so a receiver cannot tell it from a peer by form.  In
tcp mode `send_as` also runs the handshake claiming another node's address (and role), which
is how a keyed edge would impersonate the origin.  The attack builders below are plain
functions returning messages; tests (and other issues' tests) combine them as they need.

    async with Testnet(edges=3, network="sim") as net:
        evil = await Hostile.join(net)
        await evil.send(net.address_of("edge-0"), forged_write("s", "k", b"x", seq=10**12))
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from edgekv.crdt import META, Register
from edgekv.gossip import messages as m
from edgekv.gossip.transport import Envelope
from edgekv.gossip.wire import Message
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.testnet import Testnet

MAX_SEQ = (1 << 63) - 1
FAR = 10**12  # a seq far above anything a test origin issues


class Hostile:
    """A peer that joined with valid credentials and sends what it is told (see the module)."""

    def __init__(self, net: Testnet, transport: Any) -> None:
        self.net = net
        self.transport = transport
        self._sid = 1000

    @classmethod
    async def join(cls, net: Testnet, name: str = "evil") -> Hostile:
        return cls(net, await net.attach(name))

    @property
    def address(self) -> str:
        return str(self.transport.address)

    def sid(self) -> int:
        self._sid += 1
        return self._sid

    async def send(self, dst: str, msg: Message) -> None:
        """Send `msg` to `dst` as this peer (its own address)."""
        await self.transport.send(dst, msg)

    async def send_to_all(self, msg: Message, *, origin: bool = True) -> None:
        """Send `msg` to every live edge (and the origin)."""
        names = [*(["origin"] if origin else []), *self.net.live_edges()]
        for name in names:
            await self.send(self.net.address_of(name), msg)

    async def send_as(self, claimed: str, dst: str, msg: Message, *, role: str = "edge") -> bool:
        """Open a connection to `dst` whose handshake claims address `claimed` and `role`, send
        `msg` on it and close it.  True if the handshake passed (tcp mode only)."""
        if self.net.network != "tcp":
            raise NotImplementedError("a sim network delivers under the sender's own address")
        try:
            conn = await FramedStream.connect(
                dst,
                LinkOptions(
                    cluster_id=self.net.cluster_id,
                    node_id=f"spoof-{os.urandom(3).hex()}",
                    role=role,
                    advertise=claimed,
                ),
            )
        except Exception:
            return False
        async with conn:
            try:
                await conn.send(msg)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return False  # the receiver closed it: refused after the handshake
        return True

    async def receive(self, timeout: float) -> Envelope | None:  # noqa: ASYNC109 (a probe)
        """The next message sent to this peer, or None after `timeout` seconds."""
        with anyio.move_on_after(timeout):
            env: Envelope = await self.transport.receive()
            return env
        return None


# -- attacks (pure builders) ---------------------------------------------------------------------


def forged_write(
    store: str, key: str, value: bytes, seq: int = FAR, written_at: int = 0
) -> Message:
    """A write the origin never made, at a seq above all of its own (it would outrank them)."""
    return m.Push([(store, key, Register(seq, written_at, value, None))], [], 0).to_wire()


def altered_value(store: str, key: str, genuine: Register, value: bytes) -> Message:
    """A genuine write's version with another value."""
    return m.Push(
        [(store, key, Register(genuine.seq, genuine.written_at, value, None))], [], 0
    ).to_wire()


def replay_higher_seq(store: str, key: str, genuine: Register, seq: int = FAR + 1) -> Message:
    """A genuine value replayed under a higher seq claim (it would outrank later writes)."""
    return m.Push(
        [(store, key, Register(seq, genuine.written_at, genuine.value, None))], [], 0
    ).to_wire()


def forged_store_drop(store: str, seq: int = FAR + 2) -> Message:
    """A tombstone for `store` in the reserved metadata store: a drop the origin never made."""
    return m.Push([(META, store, Register(seq, 0, None, None))], [], 0).to_wire()


def forged_sync_data(store: str, key: str, value: bytes, seq: int = FAR + 3) -> Message:
    """The same forgery on the catch-up path (SYNC_DATA, also a GRAFT's answer)."""
    items: list[m.Item] = [(store, key, Register(seq, 0, value, None))]
    return m.SyncData(0, items, [], 0, True).to_wire()


def purge_attack(sid: int, store: str, keys: list[str]) -> list[Message]:
    """AE_ROOT claiming purge mark 2^63-1, then AE_STATES saying it lacks `keys`: under the
    removal rule a receiver that believed the mark would delete them."""
    root = int.from_bytes(os.urandom(16), "big")
    return [
        m.AeRoot(sid, root, 0, 0, MAX_SEQ, True).to_wire(),
        m.AeStates(sid, store, [], [], keys, True).to_wire(),
    ]


def forged_ae_states(
    sid: int, store: str, key: str, value: bytes, seq: int = FAR + 4
) -> list[Message]:
    """A forged state on the anti-entropy path (a session opened first, as a peer would)."""
    root = int.from_bytes(os.urandom(16), "big")
    return [
        m.AeRoot(sid, root, 0, 0, 0, True).to_wire(),
        m.AeStates(sid, store, [(key, Register(seq, 0, value, None))], [], [], False).to_wire(),
    ]


def spoofed_origin_ping(origin: str, me: str, wm: int = 10**15) -> Message:
    """A PING claiming role "origin" and a huge watermark and purge mark, with member rows
    that declare the real origin dead (at a huge incarnation) and this peer an origin."""
    rows: list[m.MemberRow] = [
        (me, "origin", 0, "alive"),
        (origin, "edge", 10**9, "dead"),
    ]
    return m.Ping(1, wm, MAX_SEQ, 0, "origin", rows).to_wire()


def spoofed_origin_members(origin: str, me: str) -> Message:
    """A MEMBERS table redirecting the origin's role to this peer and burying the origin."""
    return m.Members([(me, "origin", 10**9, "alive"), (origin, "origin", 10**9, "dead")]).to_wire()


def spoofed_relayed_ack(origin: str, wm: int = 10**15) -> Message:
    """An ACK 'relayed' for the origin, carrying a huge watermark and purge mark."""
    return m.Ack(1, wm, MAX_SEQ, 10**9, "origin", target=origin, members=[]).to_wire()
