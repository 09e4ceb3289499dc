"""TCP transport (anyio: runs under trio and asyncio): `Transport` over authenticated frames.

Theory of operation
1. Connection model (simple and symmetric): every node listens; messages to a peer go over one
   persistent *outbound* connection to the peer's advertised address, opened lazily by a
   writer task that owns that peer's queue (senders.py), so sends to one peer keep their
   order.  Inbound connections only carry messages in; replies travel over the replier's own
   outbound connection.  A send never waits for the network.
2. The listening port (listener.py) caps connections in total, per source address and in
   their handshake, survives accept errors, and every accepted connection must finish its
   handshake (framed.py) within `limits.handshake_timeout` and then not stay silent for
   `limits.idle_timeout` (the deadline moves only every 1/256 of it, so a connection may be
   closed that much early).  One connection's garbage, truncation, oversize frame or failed
   authentication closes that connection with a logged reason; nothing else is affected.
3. An inbound connection's address is a claim: no frame of it is read before the claim is
   confirmed by dialling that address back (dialer.py rule 2: only the process that connected
   can confirm it).  An unconfirmed connection is closed and counted per remote host in
   `stats.refused_claims`.  So the address of every message this transport delivers is
   where its sender really listens; a message whose envelope names an origin came from the
   process at the origin's address.  The role "origin" is believed only from `origins`.
4. Outbound gate: the transport dials only addresses that are configured (`seeds`,
   `origins`), confirmed (rule 3), or that its driver says it may dial (`may_dial`, set by
   the node runtime from membership's vouching, gossip/membership.py rule 8).  A frame for
   any other address is dropped and counted (`stats.undialled`): what a peer merely claims
   never opens a connection.  Without a driver (`may_dial` None) the caller names the
   addresses itself and every one is dialled.
5. Memory: the inbox is bounded in bytes and messages (`limits.inbox_bytes`, `inbox_size`;
   readers pause while it is full), each peer's send queue too (at most `limits.max_senders`
   of them, each closed after `limits.sender_idle_timeout` unused: senders.py rule 4; a peer
   cut off by `disconnect` gets no new one), and all of them together with the frames still
   arriving draw on the gossip half of the node's byte budget (`budget`, limits.py); the
   origin's client connections draw on the other half (`client_budget`).
6. Descriptors: every inbound connection of the port and every outbound one (senders, claim
   probes) is counted in `fds`, one `FdBudget` per node that its HTTP server shares
   (fdbudget.py): near the process's fd limit new inbound connections are closed at once
   and dials fail at once (counted), except to the node's origins.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TypedDict, Unpack

import anyio
import anyio.abc
import anyio.lowlevel

from edgekv.errors import RemoteProtocolError
from edgekv.gossip.transport import Envelope, TransportStats
from edgekv.gossip.wire import MAX_FRAME_SIZE, Message, PeerIdentity, encode_frame, type_name
from edgekv.node.backoff import Backoffs
from edgekv.node.dialer import Dialer
from edgekv.node.faults import LinkFaults
from edgekv.node.fdbudget import FdBudget
from edgekv.node.framed import (
    CONNECT_TIMEOUT,
    FramedStream,
    LinkOptions,
    format_address,
    parse_address,
)
from edgekv.node.identity import advertised_address
from edgekv.node.limits import DEFAULT_NET_LIMITS, ByteBudget, NetLimits
from edgekv.node.listener import ConnectionCaps, accept_loop
from edgekv.node.senders import PeerSenders
from edgekv.node.tlsconfig import TlsConfig

__all__ = [
    "FramedStream",
    "LinkOptions",
    "TcpTransport",
    "TransportOptions",
    "format_address",
    "parse_address",
]

logger = logging.getLogger("edgekv.tcp")

_MAX_WHERE = 65536  # node ids remembered with their address
_RECEIVE_BURST = 32  # inbox messages `receive` takes in a row without yielding
_SEND_BURST = 32  # messages `send` queues in a row without yielding...
_SEND_BURST_BYTES = 64 << 10  # ...or bytes

ClientHandler = Callable[[PeerIdentity, FramedStream], Awaitable[None]]


class TransportOptions(TypedDict, total=False):
    """Keyword options of `TcpTransport.create` and `serve` (those of the constructor)."""

    cluster_id: str
    node_id: str
    role: str
    key: bytes | None
    faults: LinkFaults | None
    max_frame_size: int
    handshake_timeout: float | None
    connect_timeout: float
    queue_size: int
    inbox_size: int
    on_client: ClientHandler | None
    limits: NetLimits
    tls: TlsConfig | None
    origins: Iterable[str]
    seeds: Sequence[str]
    fds: FdBudget | None


class TcpTransport:
    """`Transport` over TCP with the authenticated handshake (see the module docstring).

    Use `async with TcpTransport.serve(...) as t:` or `await TcpTransport.create(..., task_group=tg)`.
    With `faults`, each send is routed through `faults.route(self.address, peer, now)` first
    (loss, delay, duplication), so a fault scenario runs over real sockets too.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        node_id: str,
        role: str = "edge",
        key: bytes | None = None,
        faults: LinkFaults | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        handshake_timeout: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        queue_size: int = 4096,
        inbox_size: int = 4096,
        on_client: ClientHandler | None = None,
        limits: NetLimits = DEFAULT_NET_LIMITS,
        tls: TlsConfig | None = None,
        origins: Iterable[str] = (),
        seeds: Sequence[str] = (),
        fds: FdBudget | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.role = role
        # claims of these addresses are confirmed; the role "origin" is believed only from them
        self.origins = frozenset(origins)
        self.seeds = frozenset(seeds)
        self.faults = faults
        self.max_frame_size = max_frame_size
        self.limits = limits
        self.handshake_timeout = (
            limits.handshake_timeout if handshake_timeout is None else handshake_timeout
        )
        self.stats = TransportStats()
        # the node's byte budget (limits.py): gossip's half here, the clients' half for the
        # origin's client connections (origin/clientconn.py)
        self.budget = ByteBudget(limits.node_bytes - limits.node_bytes // 2)
        self.client_budget = ByteBudget(limits.node_bytes // 2)
        self.tls = tls
        link = LinkOptions(cluster_id, node_id, role, key=key, max_frame_size=max_frame_size)
        client_ssl = None if tls is None else tls.client_context()
        # descriptors of every connection, inbound and outbound (rule 6): the node's HTTP
        # server counts its connections in it too
        self.fds = FdBudget(limits.fd_reserve) if fds is None else fds
        self.dialer = Dialer(
            replace(link, ssl_context=client_ssl), connect_timeout=connect_timeout, fds=self.fds
        )
        self.dialer.essential = lambda address: address in self.origins
        # a port that serves clients (the origin's) lets them come without a certificate
        server_ssl = (
            None if tls is None else tls.server_context(require_client_cert=on_client is None)
        )
        self._server_link = replace(link, ssl_context=server_ssl)  # (advertise: at each accept)
        self._senders = PeerSenders(
            self.dialer,
            stats=self.stats,
            limits=limits,
            budget=self.budget,
            queue_size=queue_size,
            on_connected=lambda conn, dialled: self._note_peer(conn.peer, dialled),
        )
        # the driver's word on which addresses may be dialled (rule 4); None: any
        self.may_dial: Callable[[str], bool] | None = None
        # the readers' frames for `receive`, in arrival order: a deque and the one waiting
        # receiver's event (an anyio memory stream cost a checkpoint per wait, a trip
        # through the scheduler for every message on a quiet node)
        self._inbox: deque[tuple[Envelope, int]] = deque()
        self._inbox_size = inbox_size
        self._inbox_wake: anyio.Event | None = None
        self._inbox_bytes = 0
        self._inbox_space = anyio.Event()
        self._burst = 0  # messages taken from the inbox without a yield (`receive`)
        self._unyielded = self._unyielded_bytes = 0  # queued without a yield (`send`)
        self.caps = ConnectionCaps.of(limits, self.fds)
        self._inbound: dict[str, set[anyio.CancelScope]] = {}  # peer address -> its readers
        self._cut_off = Backoffs()  # peers cut off by `disconnect`, until when (bounded)
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._closed = False
        # the last message sent and its frame: a message object sent to several peers in a
        # row (the origin's push at one flush moment) is encoded once; messages are never
        # changed once handed to `send` (the reference keeps its identity unique)
        self._last_message: Message | None = None
        self._last_frame = b""
        # Connections whose handshake role is "client" (they have no listen address, so replies
        # must go back over their own connection) are handed whole to this callback.
        self.on_client = on_client
        # (old, new): a peer is no longer at `old` (it came back elsewhere under its node id,
        # or a seed address we dialled answered as `new`); see `_note_peer`
        self.on_moved: list[Callable[[str, str], None]] = []
        self._where: dict[str, str] = {}  # node id -> the address it last advertised

    @property
    def address(self) -> str:
        return self.dialer.address

    @property
    def connections(self) -> int:
        """Inbound connections open now."""
        return self.caps.connections

    @classmethod
    async def create(
        cls,
        listen: str = "127.0.0.1:0",
        *,
        task_group: anyio.abc.TaskGroup,
        advertise: str | None = None,
        **options: Unpack[TransportOptions],
    ) -> TcpTransport:
        """Bind `listen` and serve inside `task_group` until `aclose()`.

        `address` is what peers dial: `advertise`, else the bound "host:port", else for a
        wildcard bind the interface routing to the first of `seeds` (`identity.advertised_address`).
        """
        transport = cls(**options)
        seeds = list(options.get("seeds", ()))
        await task_group.start(transport._run, listen, advertise, seeds)
        return transport

    @classmethod
    @asynccontextmanager
    async def serve(
        cls,
        listen: str = "127.0.0.1:0",
        *,
        advertise: str | None = None,
        **options: Unpack[TransportOptions],
    ) -> AsyncIterator[TcpTransport]:
        """Context manager: a transport serving in its own task group, closed on exit."""
        async with anyio.create_task_group() as tg:
            transport = await cls.create(listen, task_group=tg, advertise=advertise, **options)
            try:
                yield transport
            finally:
                await transport.aclose()

    async def _run(
        self,
        listen: str,
        advertise: str | None,
        seeds: list[str],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            host, port = parse_address(listen)
            with anyio.CancelScope() as scope:
                self._scope = scope
                listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
                async with listener, anyio.create_task_group() as tg:
                    self._tg = self._senders.tg = tg
                    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
                    self.dialer.address = advertised_address(host, bound, advertise, seeds)
                    task_status.started()
                    for sub in listener.listeners:  # one per address `host` resolved to
                        assert isinstance(sub, anyio.abc.SocketListener)
                        tg.start_soon(self._accept, sub, tg)
        finally:
            self._stopped.set()

    async def _accept(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        await accept_loop(
            listener,
            tg,
            self._serve_counted,
            caps=self.caps,
            stats=self.stats,
            name=lambda: self.address,
        )

    async def _serve_counted(self, stream: anyio.abc.SocketStream, host: str) -> None:
        handshaking = [True]
        try:
            await self._serve_connection(stream, handshaking)
        finally:
            self.caps.closed(host, handshaking[0])

    # --- receiving --------------------------------------------------------------------------

    async def receive(self) -> Envelope:
        """The next inbound message.  One already waiting is taken without a yield (at most
        `_RECEIVE_BURST` in a row, then one checkpoint; `send` yields once per `_SEND_BURST`),
        and a receiver that finds the inbox empty waits without a checkpoint first."""
        inbox = self._inbox
        if inbox and self._burst < _RECEIVE_BURST:
            self._burst += 1
        else:
            self._burst = 0
            if inbox:
                await anyio.lowlevel.checkpoint()
            while not inbox and not self._closed:  # (a second receiver shares the event)
                wake = self._inbox_wake = self._inbox_wake or anyio.Event()
                await wake.wait()
        if self._closed:
            raise anyio.ClosedResourceError
        envelope, size = inbox.popleft()
        self._inbox_bytes -= size
        self.budget.give(size)
        self._inbox_space.set()
        return envelope

    def _deliver(self, envelope: Envelope, size: int) -> None:
        """Put a read frame in the inbox and wake the receiver waiting for one."""
        self._inbox.append((envelope, size))
        wake = self._inbox_wake
        if wake is not None:
            self._inbox_wake = None
            wake.set()

    def _inbox_full(self) -> bool:
        return self._inbox_bytes >= self.limits.inbox_bytes or len(self._inbox) >= self._inbox_size

    async def _inbox_room(self) -> None:
        """Wait (not reading this connection) while the inbox is full (`_inbox_full`); the next
        frame is then read whatever its size, so the inbox exceeds its bytes by one frame at most."""
        while self._inbox_full():
            if self._inbox_space.is_set():
                self._inbox_space = anyio.Event()
            await self._inbox_space.wait()

    def _reject(self, remote: str, reason: object) -> None:
        self.stats.rejected_connections += 1
        logger.warning("%s: closing connection from %s: %s", self.address, remote, reason)

    async def _accept_handshake(self, stream: anyio.abc.SocketStream, remote: str) -> FramedStream:
        """The handshake as responder; raises on failure (the caller logs and closes)."""
        return await FramedStream.accept(
            stream,
            replace(self._server_link, advertise=self.address),
            handshake_timeout=self.handshake_timeout,
            confirmer=self.dialer.initiated,
        )

    async def _confirm_claim(self, fs: FramedStream, remote: str) -> str:
        """Rule 3: "" when the connection's claimed address is confirmed, else why not."""
        peer = fs.peer
        assert peer is not None
        if not peer.address:
            return ""  # it claims no address: nothing will be sent to it
        if peer.role == "origin" and self.role != "origin" and peer.address not in self.origins:
            return "it claims the role origin from an address that is not one"
        if peer.node_id == self.node_id:
            return ""
        configured = peer.address in self.origins or peer.address in self.seeds
        source = remote.rpartition(":")[0].strip("[]")
        return await self.dialer.confirm(
            peer.address, peer.node_id, fs.transcript, source, configured=configured
        )

    async def _serve_connection(
        self, stream: anyio.abc.SocketStream, handshaking: list[bool] | None = None
    ) -> None:
        """Serve one inbound connection; `handshaking[0]` is cleared once it is authenticated."""
        try:
            remote = format_address(*stream.extra(anyio.abc.SocketAttribute.remote_address)[:2])
        except Exception:
            remote = "?"
        async with stream:
            try:
                fs = await self._accept_handshake(stream, remote)
                assert fs.peer is not None
                peer = fs.peer
            except TimeoutError:
                self._reject(remote, "handshake timed out")
                return
            except Exception as exc:  # protocol violation, bad auth, reset: close this one only
                self._reject(remote, f"handshake failed: {exc!r}")
                return
            if handshaking is not None:
                handshaking[0] = False
                self.caps.authenticated()
            if fs.asked_to_confirm:
                return  # it only came to ask whether we opened a connection (wire.py rule 6)
            if peer.role == "client" and self.on_client is not None:
                await self.on_client(peer, fs)
                return
            why = await self._confirm_claim(fs, remote)
            if why:
                reason = "unconfirmed_origin_claim" if "origin" in why else "unconfirmed_address"
                if peer.address in self.origins:
                    reason = "unconfirmed_origin_claim"
                self.stats.refuse_claim(remote.rpartition(":")[0], reason)
                self._reject(remote, f"claims to be at {peer.address}: {why}")
                return
            if self._cut_off and self._cut_off.active(peer.address, anyio.current_time()):
                self.stats.refused_connections += 1
                self._reject(f"{peer.address} ({remote})", "cut off: in its back-off")
                return
            self._note_peer(peer, None)
            fs.budget = self.budget
            fs.room_timeout = self.handshake_timeout
            try:
                await self._read_frames(fs, peer, remote)
            finally:
                fs.release()

    async def _read_frames(self, fs: FramedStream, peer: PeerIdentity, remote: str) -> None:
        """Deliver the frames of one confirmed inbound connection until it ends (rule 2, 5)."""
        idle = self.limits.idle_timeout
        dropper = anyio.CancelScope()  # `drop_inbound(peer)` cancels it
        self._inbound.setdefault(peer.address, set()).add(dropper)
        # The idle deadline moves on with the frames, but only every `slack` seconds (a
        # deadline change costs trio a heap update; the connection may be closed up to
        # 1/256 of `idle` early).  A frame goes into the inbox without a yield when it has
        # room (the next read of the socket waits anyway).
        moved, slack = -math.inf, idle / 256
        budget = self.budget
        try:
            with dropper, anyio.CancelScope(deadline=anyio.current_time() + idle) as scope:
                while True:
                    partial = fs.partial  # (holding part of a frame, it waits boundedly)
                    if self._inbox_full() or (not partial and budget.full):
                        if not partial:
                            scope.deadline = math.inf  # waiting for memory is not idling
                        await self._inbox_room()
                        if not partial:
                            await budget.room()
                            moved = -math.inf
                    now = anyio.current_time()
                    if now - moved >= slack:
                        moved = now
                        scope.deadline = now + idle
                    msg, size = await fs.receive_sized()
                    self.stats.record_received(type_name(msg["t"]), size)
                    self._inbox_bytes += size
                    budget.take(size)
                    self._deliver(Envelope(peer.address, msg), size)
            if scope.cancelled_caught:
                logger.info("%s: closing idle connection from %s", self.address, remote)
                self.stats.idle_closed += 1
            if dropper.cancelled_caught:
                self._reject(f"{peer.address} ({remote})", "it sent a bad message")
        except anyio.EndOfStream:
            logger.debug("%s: %s closed its connection", self.address, peer.address)
        except TimeoutError as exc:  # framed.py: holding part of a frame, no memory came
            self._reject(f"{peer.address} ({remote})", exc)
        except RemoteProtocolError as exc:
            self._reject(f"{peer.address} ({remote})", exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            logger.debug("%s: connection from %s lost: %r", self.address, peer.address, exc)
        except Exception:  # never let one connection take the transport down
            logger.exception("%s: error on connection from %s", self.address, peer.address)
        finally:
            scopes = self._inbound.get(peer.address)
            if scopes is not None:
                scopes.discard(dropper)
                if not scopes:
                    del self._inbound[peer.address]

    def drop_inbound(self, peer: str) -> None:
        """Close the connections `peer` sends on (its message was bad): what it sends next is
        not even read (it reconnects if it is a real node; its next good message is served)."""
        for scope in self._inbound.get(peer, ()):
            scope.cancel()

    def disconnect(self, peer: str, backoff: float = 0.0) -> None:
        """Cut `peer` off (it sent what the origin never signed): close its connections, ours to
        it included; for `backoff` seconds a connection it opens is closed right after its
        handshake and nothing is sent to it."""
        self.drop_inbound(peer)
        until = anyio.current_time() + backoff
        if backoff > 0:
            self._cut_off.start(peer, until)
        self._senders.disconnect(peer, until)

    def _note_peer(self, peer: PeerIdentity | None, dialled: str | None) -> None:
        """A handshake told us where node `peer.node_id` is: report a move when that differs
        from the address we dialled or from where the same node id was before."""
        if peer is None:
            return
        new = peer.address
        if not new or peer.node_id == self.node_id:
            return
        moved = []
        if dialled is not None and dialled != new:
            moved.append(dialled)
        old = self._where.get(peer.node_id)
        if old is not None and old != new:
            if old in self.origins and new not in self.origins and dialled is None:
                # an inbound claim cannot move the origin; only its own address answering
                # under another one (a connection we dialled) can
                self.stats.refuse_claim(new.rpartition(":")[0], "origin_node_id_claim")
                return
            moved.append(old)
        if dialled is not None and dialled in self.origins and new not in self.origins:
            self.origins = self.origins | {new}  # the origin itself answered as `new`
        if dialled is not None and dialled != new and dialled in self.seeds | self.origins:
            self.dialer.confirmed[new] = peer.node_id  # a configured node vouches for itself
        if len(self._where) >= _MAX_WHERE and peer.node_id not in self._where:
            self._where.clear()  # bounded: only a hint for forgetting stale rows
        self._where[peer.node_id] = new
        for gone in moved:
            logger.info("%s: node %s is now at %s, not %s", self.address, peer.node_id, new, gone)
            for hook in self.on_moved:
                hook(gone, new)

    # --- sending ----------------------------------------------------------------------------

    def dialable(self, peer: str) -> bool:
        """Rule 4: configured, confirmed, or allowed by the driver."""
        return (
            self.may_dial is None
            or peer in self.origins
            or peer in self.seeds
            or peer in self.dialer.confirmed
            or self.may_dial(peer)
        )

    async def send(self, peer: str, message: Message) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if message is self._last_message:  # one push for many peers: encoded once
            frame = self._last_frame
        else:
            frame = encode_frame(message, self.max_frame_size)
            self._last_message, self._last_frame = message, frame
        # the frames go to queues, not the socket: a checkpoint each was a scheduler step per
        # peer per push; large frames still yield each, so the peers' writers drain the queues
        self._unyielded += 1
        self._unyielded_bytes += len(frame)
        if self._unyielded >= _SEND_BURST or self._unyielded_bytes >= _SEND_BURST_BYTES:
            self._unyielded = self._unyielded_bytes = 0
            await anyio.lowlevel.checkpoint()
        self.stats.record_sent(type_name(message["t"]), len(frame))
        if self.faults is None:
            self._enqueue(peer, frame)
            return
        delays = self.faults.route(self.address, peer, anyio.current_time())
        if not delays:
            self.stats.dropped += 1
        for delay in delays:
            if delay <= 0:
                self._enqueue(peer, frame)
            elif self._tg is not None:
                self._tg.start_soon(self._send_later, peer, frame, delay)

    def link_rtts(self) -> dict[str, float]:
        """Each connected peer's lowest TCP round trip (senders.py rule 5); none while faults
        delay the links (the kernel does not see the delays they add)."""
        return {} if self.faults is not None else self._senders.link_rtts()

    async def _send_later(self, peer: str, frame: bytes, delay: float) -> None:
        await anyio.sleep(delay)
        if not self._closed:
            self._enqueue(peer, frame)

    def _enqueue(self, peer: str, frame: bytes) -> None:
        if not self.dialable(peer):
            self.stats.undialled += 1
            return
        if self._cut_off and self._cut_off.active(peer, anyio.current_time()):
            self.stats.dropped += 1  # its sender may have idled away with its back-off
            return
        self._senders.enqueue(peer, frame)

    # --- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening, close every connection, and wake pending receivers."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        wake, self._inbox_wake = self._inbox_wake, None
        if wake is not None:
            wake.set()
        self._senders.close()
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
        else:
            await anyio.lowlevel.checkpoint()
