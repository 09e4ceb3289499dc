"""Framed, authenticated streams: length-prefixed CBOR frames over an anyio byte stream.

`FramedStream` wraps an anyio byte stream with the sans-IO `FrameDecoder` and `Handshake`
(gossip/wire.py): `connect` runs the handshake as initiator, `accept` as responder (TLS first
when configured), then `send`/`receive` carry one message per frame.  Until the handshake is
done frames are capped at `HANDSHAKE_MAX_FRAME`, so an unauthenticated peer cannot make us
buffer more.  The TCP transport (tcp.py) and the origin's client protocol both use it.
Past the handshake, a plain socket under trio is read directly (`sockio.receive_ready`: one
trip through the scheduler per read, no read that fails first); TLS and asyncio go through the
stream.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from edgekv.errors import RemoteProtocolError, Unauthorized
from edgekv.gossip.wire import (
    MAX_FRAME_SIZE,
    FrameDecoder,
    Handshake,
    Message,
    MsgType,
    PeerIdentity,
    encode_frame,
)
from edgekv.node.limits import DEFAULT_NET_LIMITS, ByteBudget
from edgekv.node.sockio import direct_socket, receive_ready

__all__ = [
    "CONNECT_TIMEOUT",
    "HANDSHAKE_MAX_FRAME",
    "HANDSHAKE_TIMEOUT",
    "FramedStream",
    "LinkOptions",
    "format_address",
    "parse_address",
]

HANDSHAKE_TIMEOUT = DEFAULT_NET_LIMITS.handshake_timeout
CONNECT_TIMEOUT = 5.0
HANDSHAKE_MAX_FRAME = 4096  # an unauthenticated peer cannot make us buffer more than this
_READ_SIZE = 65536


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


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """What one end of a connection says in its handshake (wire.py) and how it frames and
    encrypts: the options `FramedStream.connect` and `FramedStream.accept` share."""

    cluster_id: str
    node_id: str
    role: str
    advertise: str = ""  # the address this end listens at ("" for none)
    key: bytes | None = None  # the cluster key (None: no authentication)
    max_frame_size: int = MAX_FRAME_SIZE
    ssl_context: ssl.SSLContext | None = None  # TLS first when set (tlsconfig)

    def handshake(
        self,
        initiator: bool,
        *,
        confirm: bytes | None = None,
        confirmer: Callable[[bytes], bool] | None = None,
    ) -> Handshake:
        """A fresh handshake as this end, with a new nonce."""
        return Handshake(
            self.cluster_id,
            self.node_id,
            self.role,
            self.advertise,
            self.key,
            initiator,
            os.urandom(16),
            confirm=confirm,
            confirmer=confirmer,
        )


class FramedStream(anyio.abc.AsyncResource):
    """Frames over an anyio `ByteStream`: `send(msg)`, `receive() -> msg`, plus the handshake.

    `receive` raises `RemoteProtocolError` for a bad frame or a connection closed inside a frame
    and `anyio.EndOfStream` on a clean close between frames.
    """

    def __init__(self, stream: anyio.abc.ByteStream, *, max_frame_size: int = MAX_FRAME_SIZE):
        self.stream = stream
        self.max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self.peer: PeerIdentity | None = None
        self.transcript = b""  # both handshake nonces (see `Handshake.transcript`)
        self.confirmed: bool | None = None  # the answer to `connect(confirm=...)`
        self.asked_to_confirm = False  # an accepted peer that only came to confirm
        # bytes of frames still arriving are charged to `budget` (the node's, see limits.py),
        # and reading waits while it is full
        self.budget: ByteBudget | None = None
        self.room_timeout = HANDSHAKE_TIMEOUT
        self._charged = 0
        # called once when `abort` closes it (an outbound connection's descriptor given back
        # to the node's FdBudget, fdbudget.py)
        self.on_close: Callable[[], None] | None = None
        self._sock: socket.socket | None = None  # read directly once authenticated (`_read`)
        self._sock_checked = False

    @classmethod
    async def connect(
        cls,
        address: str,
        link: LinkOptions,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        confirm: bytes | None = None,
    ) -> FramedStream:
        """Connect to `address` and run the handshake as initiator (within `connect_timeout` s).

        With `link.ssl_context` the connection is TLS first (see `tlsconfig`): the peer's
        certificate is verified against the context's CA before any frame is sent.  With
        `confirm`, ask the peer whether it initiated that transcript (`confirmed`)."""
        host, port = parse_address(address)
        with anyio.fail_after(connect_timeout):
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
            try:
                if link.ssl_context is not None:
                    stream = await TLSStream.wrap(
                        stream,
                        hostname=host,
                        ssl_context=link.ssl_context,
                        standard_compatible=False,
                    )
                return await cls._handshaken(stream, link, link.handshake(True, confirm=confirm))
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise

    @classmethod
    async def accept(
        cls,
        stream: anyio.abc.ByteStream,
        link: LinkOptions,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        confirmer: Callable[[bytes], bool] | None = None,
    ) -> FramedStream:
        """Run the handshake as responder on an accepted stream (the caller still owns it).

        With `link.ssl_context`, TLS comes first (the returned stream wraps `stream`), and a
        peer that declares any role but "client" must have presented a certificate the context
        verified: one without is refused before it is answered (tlsconfig, rule 2).
        Raises `TimeoutError`, `Unauthorized`, `RemoteProtocolError`, `ssl.SSLError` or a
        connection error; the caller logs the reason and closes the stream.
        """
        with anyio.fail_after(handshake_timeout):
            check = None
            if link.ssl_context is not None:
                stream = await TLSStream.wrap(
                    stream,
                    server_side=True,
                    ssl_context=link.ssl_context,
                    standard_compatible=False,
                )
                check = partial(_require_node_cert, stream)
            hs = link.handshake(False, confirmer=confirmer)
            return await cls._handshaken(stream, link, hs, check)

    @classmethod
    async def _handshaken(
        cls,
        stream: anyio.abc.ByteStream,
        link: LinkOptions,
        hs: Handshake,
        check_hello: Callable[[Message], None] | None = None,
    ) -> FramedStream:
        fs = cls(stream, max_frame_size=link.max_frame_size)
        await fs.handshake(hs, check_hello=check_hello)
        return fs

    async def handshake(
        self, hs: Handshake, *, check_hello: Callable[[Message], None] | None = None
    ) -> PeerIdentity:
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
        budget = self.budget
        decoder = self._decoder
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                if budget is not None:
                    self._settle(budget)
                return frame
            if budget is not None and budget.full:
                await self._room(budget)
            try:
                data = await self._read()
            except anyio.EndOfStream:
                if decoder.buffered:
                    raise RemoteProtocolError("connection closed inside a frame") from None
                raise
            decoder.receive_data(data)
            if budget is not None:
                self._settle(budget)

    async def _read(self) -> bytes:
        """The next bytes of the stream.  Past the handshake, on a plain socket under trio
        (`sockio.direct_socket`), by waiting until the socket is readable and reading it: one
        trip through the scheduler per read, where the stream's `receive` first tries a read
        that fails, then waits, then yields once more after reading."""
        sock = self._sock
        if sock is None:
            if self.peer is None or self._sock_checked:
                return await self.stream.receive(_READ_SIZE)
            self._sock_checked = True
            sock = self._sock = direct_socket(self.stream)
            if sock is None:
                return await self.stream.receive(_READ_SIZE)
        try:
            return await receive_ready(sock, _READ_SIZE)
        except OSError as exc:  # as the stream's `receive` says it (a reset connection)
            raise anyio.BrokenResourceError from exc

    async def _room(self, budget: ByteBudget) -> None:
        """Wait until `budget` has room.  Holding part of a frame, wait `room_timeout` at most,
        then raise `TimeoutError`: connections that hold memory while they wait must not
        deadlock each other (nor keep a closed connection's bytes charged)."""
        if not self._decoder.buffered:
            await budget.room()
            return
        with anyio.move_on_after(self.room_timeout):
            await budget.room()
            return
        raise TimeoutError(f"no memory for the rest of a frame within {self.room_timeout} s")

    def _settle(self, budget: ByteBudget) -> None:
        """Charge `budget` with what the decoder holds now."""
        held = self._decoder.buffered
        budget.take(held - self._charged)
        self._charged = held

    @property
    def partial(self) -> bool:
        """Whether part of a frame has arrived and waits for the rest."""
        return self._decoder.buffered > 0

    async def receive(self) -> Message:
        return (await self.receive_sized())[0]

    def detach_decoder(self) -> FrameDecoder:
        """The frame decoder, with whatever bytes it holds past the handshake, for a caller
        that reads the socket itself from now on (the origin's client poller)."""
        return self._decoder

    def release(self) -> None:
        """Give back to the budget what this stream's decoder was charged for."""
        if self.budget is not None:
            self.budget.give(self._charged)
            self._charged = 0

    async def aclose(self) -> None:
        self._closed()
        self.release()
        await self.stream.aclose()

    async def abort(self) -> None:
        """Close it now, without a goodbye (`anyio.aclose_forcefully`)."""
        self._closed()
        await anyio.aclose_forcefully(self.stream)

    def _closed(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


_HELLO = int(MsgType.HELLO)


def _require_node_cert(stream: TLSStream, hello: Message) -> None:
    """Over TLS, only a client may come without a certificate signed by the cluster CA."""
    if hello.get("role") != "client" and not stream.extra(TLSAttribute.peer_certificate, None):
        raise Unauthorized(
            f"a node (role {hello.get('role')!r}) must present a certificate signed by the "
            "cluster CA"
        )
