"""One client connection at the origin: framed CBOR requests in, responses out.

Theory of operation
1. The connection arrives already authenticated by the handshake (role "client").  Every
   frame after it must be REQUEST {"t": 50, "id": int, "op": ..., ...}; anything else (or a
   frame the decoder rejects) closes this connection with a logged reason, nothing more.
2. No task per request: the reader checks each request (`Origin.prepare`), answers a read at
   once and hands a write to the sequencer with a callback (`submit_nowait`), then reads on.
   So one client may pipeline many requests (they then share group commits); at most
   `MAX_INFLIGHT` writes are outstanding per connection, after which reading pauses.  Under
   trio the reader is not even a task: the origin's `ClientPoller` (poller.py) watches every
   client socket through one epoll and calls `on_readable`, which reads and handles what
   arrived (half the origin's CPU per write with 64 connections went to per-task socket
   waits); under asyncio, or on a wrapped stream, a reader task per connection does the same.
3. Answers are encoded into `out` (a write's answer by its sequencer callback, once durable)
   and leave in one system call per connection: after the callbacks of a commit group, the
   sequencer calls `flush_answers`, which writes each touched connection's answers straight
   to its non-blocking socket (under trio, where anyio's socket stream buffers nothing, and
   only while this connection's writer task is idle, so bytes never interleave); whatever
   the socket does not take at once, and every answer under asyncio or to a read, goes
   through the connection's writer task, which sends all that has accumulated in one `send`.
4. The answer is RESPONSE {"t": 51, "id", ...fields} or, for an EdgeKVError, ERROR {"t": 52,
   "id", "code", "message"}: a bad request costs the client one typed error, the connection
   and the origin keep serving.  Write acks are built here from plain ints and lists, so they
   are encoded without the generic wire check; anything else goes through `encode_frame`.
"""

from __future__ import annotations

import logging
import struct
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import cbor2

from ..errors import EdgeKVError, LocalProtocolError, RemoteProtocolError
from ..gossip.wire import Message, MsgType, encode_frame
from .sockio import direct_socket
from .writer import BatchCommand, StoreCommand

if TYPE_CHECKING:
    from ..gossip.wire import FrameDecoder, PeerInfo
    from ..node.tcp import FramedStream
    from .poller import ClientPoller
    from .sequencer import Ticket
    from .server import Origin

logger = logging.getLogger("edgekv.origin")

MAX_INFLIGHT = 256
_READ_SIZE = 1 << 16
_REQUEST, _RESPONSE, _ERROR = int(MsgType.REQUEST), int(MsgType.RESPONSE), int(MsgType.ERROR)
_HEADER = struct.Struct(">I")


# The answer to a single-op write that took a seq, as CBOR with every int in its 8-byte form
# (valid CBOR, not the shortest): one struct.pack instead of a generic encode, a tenth of the
# cost.  The map is {"t": 51, "id", "seq", "written_at", "seqs": [seq], "covers": [[seq, seq]]}.
_U64 = b"\x1b"  # CBOR: unsigned int, 8 bytes follow
_ACK_PARTS = (
    b"\xa6\x61t\x18" + bytes([_RESPONSE]) + b"\x62id" + _U64,
    b"\x63seq" + _U64,
    b"\x6awritten_at" + _U64,
    b"\x64seqs\x81" + _U64,
    b"\x66covers\x81\x82" + _U64,
    _U64,
)
_ACK_FIELDS = "".join(f"{len(part)}sQ" for part in _ACK_PARTS)
_ACK_BODY_SIZE = struct.calcsize(">" + _ACK_FIELDS)
_ACK = struct.Struct(">I" + _ACK_FIELDS)
_U64_LIMIT = 1 << 64


def _single_ack(req_id: int, seq: int, written_at: int) -> bytes:
    a, b, c, d, e, f = _ACK_PARTS
    return _ACK.pack(_ACK_BODY_SIZE, a, req_id, b, seq, c, written_at, d, seq, e, seq, f, seq)


def ack_frame(req_id: int, ticket: Ticket, max_frame_size: int) -> bytes:
    """The RESPONSE (or ERROR) frame answering a write."""
    planned = ticket.planned
    if ticket.error is not None or planned is None:
        return error_frame(req_id, ticket.error or EdgeKVError("write failed"))
    seqs = planned.seqs
    if len(seqs) == 1:  # the common single op: no min/max scans
        last = first = seqs[0] or 0
        if last and 0 <= req_id < _U64_LIMIT and _ACK.size <= max_frame_size:
            return _single_ack(req_id, last, ticket.written_at)
    else:
        first, last = planned.first, planned.last
    body = cbor2.dumps(
        {
            "t": _RESPONSE,
            "id": req_id,
            "seq": last,
            "written_at": ticket.written_at,
            "seqs": seqs,
            "covers": [[first, last]] if planned.items else [],
        }
    )
    if len(body) > max_frame_size:
        return error_frame(req_id, LocalProtocolError("the answer exceeds the frame limit"))
    return _HEADER.pack(len(body)) + body


def error_frame(req_id: int, exc: BaseException) -> bytes:
    if isinstance(exc, EdgeKVError):
        code, message = exc.code, str(exc)
    else:
        code, message = "error", f"internal: {exc!r}"
    return encode_frame({"t": _ERROR, "id": req_id, "code": code, "message": message[:4096]})


def flush_answers(connections: list[ClientConnection]) -> None:
    """Send the answers queued on each of `connections` (rule 3), then forget them."""
    for conn in connections:
        conn.flush()
    connections.clear()


class ClientConnection:
    """The state of one served client connection (see the module docstring)."""

    def __init__(self, origin: Origin, peer: PeerInfo, stream: FramedStream) -> None:
        self.origin = origin
        self.peer = peer
        self.stream = stream
        self.max_frame_size = stream.max_frame_size
        self.out: list[bytes] = []
        self.inflight = 0
        self._writer_idle = False
        self._wake = anyio.Event()
        self._slot: anyio.Event | None = None
        self._socket = direct_socket(stream.stream)
        self._dirty = False  # on the origin's list of connections to flush
        self.closed = False
        # with the origin's poller (poller.py): reads without a reader task
        self._decoder: FrameDecoder | None = None
        self._poller: ClientPoller | None = None
        self._fd = -1
        self._paused = False
        self._done = anyio.Event()

    # -- answers -------------------------------------------------------------------------------

    def _queue(self, frame: bytes) -> None:
        if self.closed:
            return
        self.out.append(frame)
        if self._writer_idle:
            self._writer_idle = False
            self._wake.set()

    def _write_done(self, req_id: int, ticket: Ticket) -> None:
        """Sequencer callback: the write is durable (or failed).  The answer waits in `out`
        for `flush`, which the sequencer triggers once the whole group is answered."""
        self.inflight -= 1
        if self._slot is not None and self.inflight < MAX_INFLIGHT:
            self._slot.set()
            self._slot = None
        if self._paused and self.inflight < MAX_INFLIGHT:
            self._unpause()
        if self.closed:
            return
        self.out.append(ack_frame(req_id, ticket, self.max_frame_size))
        if not self._dirty:
            self._dirty = True
            self.origin.answered.append(self)

    def flush(self) -> None:
        """Write `out` to the socket now if possible, else leave it to the writer task."""
        self._dirty = False
        out = self.out
        if not out or self.closed:
            return
        sock = self._socket
        if sock is not None and self._writer_idle:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the client went away: the reader will notice
                logger.debug("cannot answer client %s: %r", self.peer.node_id, exc)
                self.closed = True
                out.clear()
                return
            if sent == len(data):
                out.clear()
                return
            self.out = [data[sent:]]
        if self._writer_idle:
            self._writer_idle = False
            self._wake.set()

    async def _writer(self) -> None:
        send = self.stream.send_frame
        while True:
            if not self.out:
                self._wake = anyio.Event()
                self._writer_idle = True
                await self._wake.wait()
            out, self.out = self.out, []
            await send(out[0] if len(out) == 1 else b"".join(out))

    # -- requests ------------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        """Answer a read now, or hand a write to the sequencer.  RemoteProtocolError (the
        caller closes the connection) for anything but a REQUEST with an int id."""
        req_id = msg.get("id")
        if msg.get("t") != _REQUEST or type(req_id) is not int:
            raise RemoteProtocolError(f"expected REQUEST with an int id, got {msg!r:.80}")
        origin = self.origin
        try:
            prepared = origin.prepare(msg)
            if isinstance(prepared, (BatchCommand, StoreCommand)):
                origin.sequencer.submit_nowait(prepared, partial(self._write_done, req_id))
                self.inflight += 1
                return
            reply: Message = {"t": _RESPONSE, "id": req_id, **prepared}
            try:
                frame = encode_frame(reply, self.max_frame_size)
            except EdgeKVError as exc:  # the reply itself is not sendable (too large, ...)
                frame = error_frame(req_id, exc)
        except EdgeKVError as exc:
            frame = error_frame(req_id, exc)
        except Exception as exc:  # a bug: report it to this client, keep serving
            logger.exception("request %r failed", msg.get("op"))
            frame = error_frame(req_id, exc)
        self._queue(frame)

    async def run(self) -> None:
        """Serve until the client closes or misbehaves.  Never raises."""
        poller = self.origin.client_poller
        if poller is not None and self._socket is not None:
            await self._run_polled(poller, self._socket.fileno())
            return
        peer, stream = self.peer, self.stream
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run_writer, tg.cancel_scope)
            try:
                while True:
                    msg: dict[str, Any] = await stream.receive()
                    while self.inflight >= MAX_INFLIGHT:
                        self._slot = slot = anyio.Event()
                        await slot.wait()
                    self._dispatch(msg)
            except anyio.EndOfStream:
                pass
            except RemoteProtocolError as exc:
                logger.warning("closing client %s: %s", peer.node_id, exc)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                logger.debug("client %s connection lost: %r", peer.node_id, exc)
            except Exception:
                logger.exception("error serving client %s", peer.node_id)
            self.closed = True
            tg.cancel_scope.cancel()

    # -- reads through the origin's poller (poller.py) ---------------------------------------------

    async def _run_polled(self, poller: ClientPoller, fd: int) -> None:
        self._decoder = self.stream.detach_decoder()
        self._poller, self._fd = poller, fd
        poller.add(fd, self.on_readable)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_writer, tg.cancel_scope)
                self._handle_frames()  # whatever arrived with the handshake
                await self._done.wait()
                tg.cancel_scope.cancel()
        finally:
            poller.remove(fd)
            self.closed = True

    def on_readable(self) -> None:
        """Poller callback: read what the socket has and handle every complete request."""
        if self.closed or self._paused:
            return
        assert self._socket is not None and self._decoder is not None
        try:
            data = self._socket.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(f"connection lost: {exc!r}", logging.DEBUG)
            return
        if not data:
            if self._decoder.buffered:
                self._close("connection closed inside a frame", logging.WARNING)
            else:
                self._close("closed its connection", logging.DEBUG)
            return
        self._decoder.receive_data(data)
        self._handle_frames()

    def _handle_frames(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        try:
            while not self.closed:
                if self.inflight >= MAX_INFLIGHT:
                    self._pause()
                    return
                frame = decoder.next_frame()
                if frame is None:
                    return
                self._dispatch(frame[0])
        except RemoteProtocolError as exc:
            self._close(str(exc), logging.WARNING)

    def _pause(self) -> None:
        if not self._paused and self._poller is not None:
            self._paused = True
            self._poller.pause(self._fd)

    def _unpause(self) -> None:
        self._paused = False
        if self._poller is not None:
            self._poller.resume(self._fd)
        self._handle_frames()  # requests already buffered do not wait for more bytes

    def _close(self, reason: str, level: int) -> None:
        logger.log(level, "client %s: %s", self.peer.node_id, reason)
        self.closed = True
        self._done.set()

    async def _run_writer(self, scope: anyio.CancelScope) -> None:
        try:
            await self._writer()
        except Exception as exc:  # the client went away: nothing to tell it
            logger.debug("cannot answer client %s: %r", self.peer.node_id, exc)
            self.closed = True
            scope.cancel()


async def serve_client(origin: Origin, peer: PeerInfo, stream: FramedStream) -> None:
    """Serve one client connection until it closes or misbehaves.  Never raises."""
    origin.clients += 1
    try:
        await ClientConnection(origin, peer, stream).run()
    finally:
        origin.clients -= 1
