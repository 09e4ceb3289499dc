"""TCP transport (anyio: runs under trio and asyncio) and the framed, authenticated stream.

`FramedStream` wraps an anyio byte stream with the sans-IO `FrameDecoder` and `Handshake`; the
origin's client protocol reuses it.  `TcpTransport` implements `Transport` on top of it.

Connection model (simple and symmetric): every node listens; messages to a peer go over one
persistent *outbound* connection to the peer's advertised address, opened lazily by a writer task
that owns that peer's queue (so sends to one peer keep their order).  Inbound connections only
carry messages in; replies travel over the replier's own outbound connection.  A send never waits
for the network: it queues the frame; a dead peer costs a failed connect then a backoff during
which its frames are dropped (counted).  One connection's garbage, truncation, oversize frame or
failed authentication closes that connection with a logged reason; nothing else is affected.

Who is the origin.  A cluster key proves membership, not identity, so an inbound connection
whose handshake claims one of `origins` (the addresses this node was configured with) or the
role "origin" is confirmed before any of its frames is read: this node dials that configured
address and asks, in the handshake, whether it initiated the connection (wire.py rule 6).  A
connection that is not confirmed is closed and counted per remote host in `refused`; so a
message whose envelope names an origin came from the process at the origin's address.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.tls import TLSAttribute, TLSStream

from edgekv.errors import RemoteProtocolError, Unauthorized
from edgekv.gossip.transport import Envelope, TransportStats
from edgekv.gossip.wire import (
    MAX_FRAME_SIZE,
    FrameDecoder,
    Handshake,
    Message,
    MsgType,
    PeerInfo,
    encode_frame,
    type_name,
)
from edgekv.node.faults import LinkFaults
from edgekv.node.identity import advertised_address
from edgekv.node.limits import DEFAULT_NET_LIMITS, NetLimits
from edgekv.node.tlsconfig import TlsConfig

__all__ = ["FramedStream", "TcpTransport", "format_address", "parse_address"]

logger = logging.getLogger("edgekv.tcp")

HANDSHAKE_TIMEOUT = DEFAULT_NET_LIMITS.handshake_timeout
CONNECT_TIMEOUT = 5.0
HANDSHAKE_MAX_FRAME = 4096  # an unauthenticated peer cannot make us buffer more than this
INITIATED_KEPT = 1024  # transcripts of recent outbound handshakes, for confirming them
MAX_CUT_OFF = 1024  # peers in a back-off after sending unsigned data (`disconnect`)
MAX_REFUSED_HOSTS = 1024
_READ_SIZE = 65536
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
_MAX_WHERE = 65536  # node ids remembered with their address
_ACCEPT_BACKOFF_MAX = 1.0
# accept() failures that say "not now" (out of descriptors, buffers or memory; a connection
# aborted before it was accepted): the listener counts them, backs off and keeps listening
_TRANSIENT_ACCEPT = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "ECONNABORTED", "EPROTO", "EPERM")
    if hasattr(errno, name)
)


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {address!r}, expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FramedStream:
    """Frames over an anyio `ByteStream`: `send(msg)`, `receive() -> msg`, plus the handshake.

    `receive` raises `RemoteProtocolError` for a bad frame or a connection closed inside a frame
    and `anyio.EndOfStream` on a clean close between frames.
    """

    def __init__(self, stream: anyio.abc.ByteStream, *, max_frame_size: int = MAX_FRAME_SIZE):
        self.stream = stream
        self.max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self.peer: PeerInfo | None = None
        self.transcript = b""  # both handshake nonces (see `Handshake.transcript`)
        self.confirmed: bool | None = None  # the answer to `connect(confirm=...)`
        self.asked_to_confirm = False  # an accepted peer that only came to confirm

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        cluster_id: str,
        node_id: str,
        role: str,
        advertise: str = "",
        key: bytes | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        confirm: bytes | None = None,
    ) -> FramedStream:
        """Connect to `address` and run the handshake as initiator (within `connect_timeout` s).

        With `ssl_context` the connection is TLS first (see `tlsconfig`): the peer's
        certificate is verified against the context's CA before any frame is sent.  With
        `confirm`, ask the peer whether it initiated that transcript (`confirmed`)."""
        host, port = parse_address(address)
        with anyio.fail_after(connect_timeout):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
            if ssl_context is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream, hostname=host, ssl_context=ssl_context, standard_compatible=False
                    )
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
            fs = cls(stream, max_frame_size=max_frame_size)
            try:
                hs = Handshake(
                    cluster_id, node_id, role, advertise, key, True, os.urandom(16), confirm=confirm
                )
                await fs.handshake(hs)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        return fs

    @classmethod
    async def accept(
        cls,
        stream: anyio.abc.ByteStream,
        *,
        cluster_id: str,
        node_id: str,
        role: str,
        advertise: str = "",
        key: bytes | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        confirmer: Callable[[bytes], bool] | None = None,
    ) -> FramedStream:
        """Run the handshake as responder on an accepted stream (the caller still owns it).

        With `ssl_context`, TLS comes first (the returned stream wraps `stream`), and a peer
        that declares any role but "client" must have presented a certificate the context
        verified: one without is refused before it is answered (tlsconfig, rule 2).
        Raises `TimeoutError`, `Unauthorized`, `RemoteProtocolError`, `ssl.SSLError` or a
        connection error; the caller logs the reason and closes the stream.
        """
        with anyio.fail_after(handshake_timeout):
            check = None
            if ssl_context is not None:
                stream = await TLSStream.wrap(
                    stream, server_side=True, ssl_context=ssl_context, standard_compatible=False
                )
                check = partial(_require_node_cert, stream)
            fs = cls(stream, max_frame_size=max_frame_size)
            hs = Handshake(
                cluster_id,
                node_id,
                role,
                advertise,
                key,
                False,
                os.urandom(16),
                confirmer=confirmer,
            )
            await fs.handshake(hs, check_hello=check)
        return fs

    async def handshake(
        self, hs: Handshake, *, check_hello: Callable[[Message], None] | None = None
    ) -> PeerInfo:
        """Run `hs` to completion over this stream; frames are capped small until it is done.
        `check_hello(msg)` may refuse the peer's HELLO (by raising) before it is answered."""
        decoder = self._decoder
        decoder.max_frame_size = min(self.max_frame_size, HANDSHAKE_MAX_FRAME)
        try:
            if hs.initiator:
                for msg in hs.start():
                    await self.send(msg)
            while not hs.done:
                try:
                    msg = await self.receive()
                except anyio.EndOfStream:
                    raise RemoteProtocolError(
                        "peer closed the connection during handshake"
                    ) from None
                if check_hello is not None and msg.get("t") == _HELLO:
                    check_hello(msg)
                for reply in hs.receive(msg):
                    await self.send(reply)
        finally:
            decoder.max_frame_size = self.max_frame_size
        self.peer = hs.peer
        self.transcript = hs.transcript
        self.confirmed = hs.confirmed
        self.asked_to_confirm = hs.asked_to_confirm
        return hs.peer

    async def send(self, msg: Message) -> int:
        """Send one message; returns the frame size.  LocalProtocolError if not wire-valid."""
        frame = encode_frame(msg, self.max_frame_size)
        await self.stream.send(frame)
        return len(frame)

    async def send_frame(self, frame: bytes) -> None:
        """Send an already encoded frame."""
        await self.stream.send(frame)

    async def receive_sized(self) -> tuple[Message, int]:
        """The next message and its frame size."""
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            try:
                data = await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                if self._decoder.buffered:
                    raise RemoteProtocolError("connection closed inside a frame") from None
                raise
            self._decoder.receive_data(data)

    async def receive(self) -> Message:
        return (await self.receive_sized())[0]

    def detach_decoder(self) -> FrameDecoder:
        """The frame decoder, with whatever bytes it holds past the handshake, for a caller
        that reads the socket itself from now on (the origin's client poller)."""
        return self._decoder

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> FramedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_HELLO = int(MsgType.HELLO)


def _require_node_cert(stream: TLSStream, hello: Message) -> None:
    """Over TLS, only a client may come without a certificate signed by the cluster CA."""
    if hello.get("role") != "client" and not stream.extra(TLSAttribute.peer_certificate, None):
        raise Unauthorized(
            f"a node (role {hello.get('role')!r}) must present a certificate signed by the "
            "cluster CA"
        )


@dataclass(eq=False)
class _Outbound:
    """One peer's send queue and its (lazily opened) connection."""

    address: str
    queue_send: MemoryObjectSendStream[bytes]
    queue_recv: MemoryObjectReceiveStream[bytes]
    conn: FramedStream | None = None
    retry_at: float = -math.inf
    backoff: float = 0.0
    queued_bytes: int = 0


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
        on_client: Callable[[PeerInfo, FramedStream], Awaitable[None]] | None = None,
        limits: NetLimits = DEFAULT_NET_LIMITS,
        tls: TlsConfig | None = None,
        origins: Iterable[str] = (),
    ) -> None:
        self.cluster_id = cluster_id
        # claims of these addresses (or of the role "origin") are confirmed (module docstring)
        self.origins = frozenset(origins)
        self._initiated: OrderedDict[bytes, None] = OrderedDict()  # our outbound transcripts
        self.node_id = node_id
        self.role = role
        self.faults = faults
        self.max_frame_size = max_frame_size
        self.limits = limits
        self.handshake_timeout = (
            limits.handshake_timeout if handshake_timeout is None else handshake_timeout
        )
        self.connect_timeout = connect_timeout
        self.queue_size = queue_size
        self.stats = TransportStats()
        self._key = key
        self.tls = tls
        # a port that serves clients (the origin's) lets them come without a certificate
        self._server_ssl = (
            None if tls is None else tls.server_context(require_client_cert=on_client is None)
        )
        self._client_ssl = None if tls is None else tls.client_context()
        self._address = ""
        self._inbox_send, self._inbox_recv = anyio.create_memory_object_stream[
            tuple[Envelope, int]
        ](inbox_size)
        self._inbox_bytes = 0
        self._inbox_space = anyio.Event()
        # inbound connections: open, open per source address, still in their handshake
        self.connections = 0
        self.handshaking = 0
        self._per_address: dict[str, int] = {}
        self._inbound: dict[str, set[anyio.CancelScope]] = {}  # peer address -> its readers
        self._cut_off: dict[str, float] = {}  # peer address -> end of its back-off (`disconnect`)
        self._peers: dict[str, _Outbound] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._closed = False
        # Connections whose handshake role is "client" (they have no listen address, so replies
        # must go back over their own connection) are handed whole to this callback.
        self.on_client = on_client
        # (old, new): a peer is no longer at `old` (it came back elsewhere under its node id,
        # or a seed address we dialled answered as `new`); see `_note_peer`
        self.on_moved: list[Callable[[str, str], None]] = []
        self._where: dict[str, str] = {}  # node id -> the address it last advertised

    @property
    def address(self) -> str:
        return self._address

    @classmethod
    async def create(
        cls,
        listen: str = "127.0.0.1:0",
        *,
        task_group: anyio.abc.TaskGroup,
        cluster_id: str,
        node_id: str,
        role: str = "edge",
        key: bytes | None = None,
        faults: LinkFaults | None = None,
        advertise: str | None = None,
        seeds: Sequence[str] = (),
        max_frame_size: int = MAX_FRAME_SIZE,
        handshake_timeout: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        queue_size: int = 4096,
        inbox_size: int = 4096,
        on_client: Callable[[PeerInfo, FramedStream], Awaitable[None]] | None = None,
        limits: NetLimits = DEFAULT_NET_LIMITS,
        tls: TlsConfig | None = None,
        origins: Iterable[str] = (),
    ) -> TcpTransport:
        """Bind `listen` and serve inside `task_group` until `aclose()`.

        `address` is what peers dial: `advertise`, else the bound "host:port", else for a
        wildcard bind the interface routing to the first of `seeds` (`identity.advertised_address`).
        """
        transport = cls(
            cluster_id=cluster_id,
            node_id=node_id,
            role=role,
            key=key,
            faults=faults,
            max_frame_size=max_frame_size,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            queue_size=queue_size,
            inbox_size=inbox_size,
            on_client=on_client,
            limits=limits,
            tls=tls,
            origins=origins,
        )
        await task_group.start(transport._run, listen, advertise, list(seeds))
        return transport

    @classmethod
    @asynccontextmanager
    async def serve(
        cls,
        listen: str = "127.0.0.1:0",
        *,
        cluster_id: str,
        node_id: str,
        role: str = "edge",
        key: bytes | None = None,
        faults: LinkFaults | None = None,
        advertise: str | None = None,
        seeds: Sequence[str] = (),
        max_frame_size: int = MAX_FRAME_SIZE,
        handshake_timeout: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        queue_size: int = 4096,
        inbox_size: int = 4096,
        on_client: Callable[[PeerInfo, FramedStream], Awaitable[None]] | None = None,
        limits: NetLimits = DEFAULT_NET_LIMITS,
        tls: TlsConfig | None = None,
        origins: Iterable[str] = (),
    ) -> AsyncIterator[TcpTransport]:
        """Context manager: a transport serving in its own task group, closed on exit."""
        async with anyio.create_task_group() as tg:
            transport = await cls.create(
                listen,
                task_group=tg,
                advertise=advertise,
                seeds=seeds,
                cluster_id=cluster_id,
                node_id=node_id,
                role=role,
                key=key,
                faults=faults,
                max_frame_size=max_frame_size,
                handshake_timeout=handshake_timeout,
                connect_timeout=connect_timeout,
                queue_size=queue_size,
                inbox_size=inbox_size,
                on_client=on_client,
                limits=limits,
                tls=tls,
                origins=origins,
            )
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
                    self._tg = tg
                    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
                    self._address = advertised_address(host, bound, advertise, seeds)
                    task_status.started()
                    for sub in listener.listeners:  # one per address `host` resolved to
                        assert isinstance(sub, anyio.abc.SocketListener)
                        tg.start_soon(self._accept_loop, sub, tg)
        finally:
            self._stopped.set()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        """Accept until closed.  A transient accept error (out of descriptors, ...) is counted
        and retried after a growing back-off; a connection over a cap is closed at once."""
        limits = self.limits
        backoff = 0.0
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (anyio.BrokenResourceError, OSError) as exc:
                cause = exc if isinstance(exc, OSError) else exc.__cause__
                code = getattr(cause, "errno", None)
                self.stats.accept_errors += 1
                backoff = min(max(backoff * 2, limits.accept_backoff), _ACCEPT_BACKOFF_MAX)
                if code not in _TRANSIENT_ACCEPT:
                    logger.error("%s: accept failed: %r", self._address, cause or exc)
                else:
                    logger.warning(
                        "%s: accept failed (%s), retrying in %.2f s",
                        self._address,
                        errno.errorcode.get(code or 0, code),
                        backoff,
                    )
                await anyio.sleep(backoff)
                continue
            backoff = 0.0
            try:
                host = str(stream.extra(anyio.abc.SocketAttribute.remote_address)[0])
            except Exception:
                host = "?"
            reason = self._over_cap(host)
            if reason:
                self.stats.refused_connections += 1
                logger.info("%s: refusing a connection from %s: %s", self._address, host, reason)
                await anyio.aclose_forcefully(stream)
                continue
            self.connections += 1
            self.handshaking += 1
            self._per_address[host] = self._per_address.get(host, 0) + 1
            tg.start_soon(self._serve_counted, stream, host)

    def _over_cap(self, host: str) -> str:
        limits = self.limits
        if self.connections >= limits.connection_cap():
            return f"{self.connections} connections open"
        if self.handshaking >= limits.max_handshaking:
            return f"{self.handshaking} connections in their handshake"
        if self._per_address.get(host, 0) >= limits.max_per_address:
            return f"{limits.max_per_address} connections from that address"
        return ""

    async def _serve_counted(self, stream: anyio.abc.SocketStream, host: str) -> None:
        handshaking = [True]
        try:
            await self._serve_connection(stream, handshaking)
        finally:
            self.connections -= 1
            if handshaking[0]:
                self.handshaking -= 1
            left = self._per_address.get(host, 1) - 1
            if left > 0:
                self._per_address[host] = left
            else:
                self._per_address.pop(host, None)

    # --- receiving --------------------------------------------------------------------------

    async def receive(self) -> Envelope:
        try:
            envelope, size = await self._inbox_recv.receive()
        except anyio.EndOfStream:
            raise anyio.ClosedResourceError from None
        self._inbox_bytes -= size
        self._inbox_space.set()
        return envelope

    async def _inbox_room(self) -> None:
        """Wait (not reading this connection) while the inbox holds `limits.inbox_bytes`; the
        next frame is then read whatever its size, so the inbox exceeds it by one frame at most."""
        while self._inbox_bytes >= self.limits.inbox_bytes:
            if self._inbox_space.is_set():
                self._inbox_space = anyio.Event()
            await self._inbox_space.wait()

    def _reject(self, remote: str, reason: object) -> None:
        self.stats.rejected_connections += 1
        logger.warning("%s: closing connection from %s: %s", self._address, remote, reason)

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
                fs = await FramedStream.accept(
                    stream,
                    cluster_id=self.cluster_id,
                    node_id=self.node_id,
                    role=self.role,
                    advertise=self._address,
                    key=self._key,
                    max_frame_size=self.max_frame_size,
                    handshake_timeout=self.handshake_timeout,
                    ssl_context=self._server_ssl,
                    confirmer=self._initiated.__contains__,
                )
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
                self.handshaking -= 1
            if fs.asked_to_confirm:
                return  # it only came to ask whether we opened a connection (wire.py rule 6)
            if peer.role == "client" and self.on_client is not None:
                await self.on_client(peer, fs)
                return
            # (an origin's transport checks claims of its own address; another origin, e.g. a
            # follower on the same log, may speak to it: roles mean nothing to an origin)
            claims_origin = peer.address in self.origins or (
                peer.role == "origin" and self.role != "origin"
            )
            if (
                claims_origin
                and self.origins
                and not await self._confirm(peer.address, fs.transcript)
            ):
                self.stats.refuse_claim(remote.rpartition(":")[0], "unconfirmed_origin_claim")
                self._reject(remote, f"claims to be the origin at {peer.address}: unconfirmed")
                return
            if self._cut_off and self._is_cut_off(peer.address):
                self.stats.refused_connections += 1
                self._reject(f"{peer.address} ({remote})", "cut off: in its back-off")
                return
            self._note_peer(peer, None)
            idle = self.limits.idle_timeout
            dropper = anyio.CancelScope()  # `drop_inbound(peer)` cancels it
            self._inbound.setdefault(peer.address, set()).add(dropper)
            try:
                with dropper, anyio.CancelScope(deadline=anyio.current_time() + idle) as scope:
                    while True:
                        scope.deadline = math.inf  # waiting for inbox space is not idling
                        await self._inbox_room()
                        scope.deadline = anyio.current_time() + idle
                        msg, size = await fs.receive_sized()
                        self.stats.record_received(type_name(msg["t"]), size)
                        self._inbox_bytes += size
                        await self._inbox_send.send((Envelope(peer.address, msg), size))
                if scope.cancelled_caught:
                    logger.info("%s: closing idle connection from %s", self._address, remote)
                    self.stats.idle_closed += 1
                if dropper.cancelled_caught:
                    self._reject(f"{peer.address} ({remote})", "it sent a bad message")
            except anyio.EndOfStream:
                logger.debug("%s: %s closed its connection", self._address, peer.address)
            except RemoteProtocolError as exc:
                self._reject(f"{peer.address} ({remote})", exc)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                logger.debug("%s: connection from %s lost: %r", self._address, peer.address, exc)
            except Exception:  # never let one connection take the transport down
                logger.exception("%s: error on connection from %s", self._address, peer.address)
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
            self._cut_off.pop(peer, None)
            self._cut_off[peer] = until
            if len(self._cut_off) > MAX_CUT_OFF:  # bounded: the oldest back-off ends early
                del self._cut_off[next(iter(self._cut_off))]
        out = self._peers.get(peer)
        if out is not None:
            out.retry_at = max(out.retry_at, until)
            conn, out.conn = out.conn, None
            if conn is not None and self._tg is not None:
                self._tg.start_soon(anyio.aclose_forcefully, conn.stream)

    def _is_cut_off(self, peer: str) -> bool:
        until = self._cut_off.get(peer)
        if until is None:
            return False
        if anyio.current_time() < until:
            return True
        del self._cut_off[peer]
        return False

    async def _confirm(self, claimed: str, transcript: bytes) -> bool:
        """Whether the process at `claimed`, a configured origin address, says it initiated
        the connection with `transcript` (it dials that address: only the origin can say yes)."""
        if claimed not in self.origins:
            return False  # the role "origin" from an address that is not one
        try:
            conn = await FramedStream.connect(
                claimed,
                cluster_id=self.cluster_id,
                node_id=self.node_id,
                role=self.role,
                advertise=self._address,
                key=self._key,
                connect_timeout=self.connect_timeout,
                ssl_context=self._client_ssl,
                confirm=transcript,
            )
        except Exception as exc:
            logger.info("%s: cannot confirm the origin at %s: %r", self._address, claimed, exc)
            return False
        await anyio.aclose_forcefully(conn.stream)
        return conn.confirmed is True

    def _note_peer(self, peer: PeerInfo, dialled: str | None) -> None:
        """A handshake told us where node `peer.node_id` is: report a move when that differs
        from the address we dialled or from where the same node id was before."""
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
        if len(self._where) >= _MAX_WHERE and peer.node_id not in self._where:
            self._where.clear()  # bounded: only a hint for forgetting stale rows
        self._where[peer.node_id] = new
        for gone in moved:
            logger.info("%s: node %s is now at %s, not %s", self._address, peer.node_id, new, gone)
            for hook in self.on_moved:
                hook(gone, new)

    # --- sending ----------------------------------------------------------------------------

    async def send(self, peer: str, message: Message) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        frame = encode_frame(message, self.max_frame_size)
        await anyio.lowlevel.checkpoint()
        self.stats.record_sent(type_name(message["t"]), len(frame))
        if self.faults is None:
            self._enqueue(peer, frame)
            return
        delays = self.faults.route(self._address, peer, anyio.current_time())
        if not delays:
            self.stats.dropped += 1
        for delay in delays:
            if delay <= 0:
                self._enqueue(peer, frame)
            elif self._tg is not None:
                self._tg.start_soon(self._send_later, peer, frame, delay)

    async def _send_later(self, peer: str, frame: bytes, delay: float) -> None:
        await anyio.sleep(delay)
        if not self._closed:
            self._enqueue(peer, frame)

    def _enqueue(self, peer: str, frame: bytes) -> None:
        out = self._peers.get(peer)
        if out is None:
            if self._tg is None:
                self.stats.dropped += 1
                return
            send, recv = anyio.create_memory_object_stream[bytes](self.queue_size)
            out = self._peers[peer] = _Outbound(peer, send, recv)
            self._tg.start_soon(self._writer, out)
        if out.queued_bytes and out.queued_bytes + len(frame) > self.limits.send_queue_bytes:
            self.stats.dropped += 1
            return
        try:
            out.queue_send.send_nowait(frame)
            out.queued_bytes += len(frame)
        except anyio.WouldBlock:
            self.stats.dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.stats.dropped += 1

    async def _connect(self, out: _Outbound) -> FramedStream | None:
        now = anyio.current_time()
        if now < out.retry_at:
            return None
        try:
            conn = await FramedStream.connect(
                out.address,
                cluster_id=self.cluster_id,
                node_id=self.node_id,
                role=self.role,
                advertise=self._address,
                key=self._key,
                max_frame_size=self.max_frame_size,
                connect_timeout=self.connect_timeout,
                ssl_context=self._client_ssl,
            )
        except Exception as exc:
            out.backoff = min(max(out.backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
            out.retry_at = anyio.current_time() + out.backoff
            logger.info("%s: cannot reach %s: %r", self._address, out.address, exc)
            return None
        out.backoff = 0.0
        out.conn = conn
        self._initiated[conn.transcript] = None  # so the peer can confirm it was us
        if len(self._initiated) > INITIATED_KEPT:
            self._initiated.popitem(last=False)
        if conn.peer is not None:
            self._note_peer(conn.peer, out.address)
        assert self._tg is not None
        self._tg.start_soon(self._watch, out, conn)
        return conn

    async def _watch(self, out: _Outbound, conn: FramedStream) -> None:
        """Notice at once when the peer closes our outbound connection (it never sends on it)."""
        try:
            await conn.stream.receive(1)
            logger.warning("%s: %s sent data on a send-only connection", self._address, out.address)
        except Exception:
            pass
        if out.conn is conn:
            out.conn = None
        await anyio.aclose_forcefully(conn.stream)

    async def _writer(self, out: _Outbound) -> None:
        try:
            async with out.queue_recv:
                async for frame in out.queue_recv:
                    out.queued_bytes -= len(frame)
                    conn = out.conn or await self._connect(out)
                    if conn is None:
                        self.stats.dropped += 1
                        continue
                    try:
                        await conn.send_frame(frame)
                    except Exception as exc:
                        self.stats.dropped += 1
                        logger.info("%s: send to %s failed: %r", self._address, out.address, exc)
                        if out.conn is conn:
                            out.conn = None
                        await anyio.aclose_forcefully(conn.stream)
        finally:
            if out.conn is not None:
                await anyio.aclose_forcefully(out.conn.stream)

    # --- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening, close every connection, and wake pending receivers."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        self._inbox_send.close()
        self._inbox_recv.close()
        for out in self._peers.values():
            out.queue_send.close()
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
        else:
            await anyio.lowlevel.checkpoint()
