"""One client connection at the origin: framed CBOR requests in, responses out.

Theory of operation
1. The connection arrives already authenticated by the handshake (role "client").  Every
   frame after it must be REQUEST {"t": 50, "id": int, "op": ..., ...}; anything else (or a
   frame the decoder rejects) closes this connection with a logged reason, nothing more.
2. One path for requests: bytes from the socket go to `_receive`, which decodes every complete
   frame and handles it at once (`Origin.prepare`): a read is answered on the spot, a write
   goes to the sequencer with a callback (`submit_nowait`) and is answered once durable.  No
   task per request, so one client may pipeline many requests (its writes then share group
   commits).  Where the bytes come from is the only variant: under trio on a plain socket the
   origin's `ClientPoller` (poller.py) calls `on_readable` from one epoll for every client (a
   task per connection waiting on its socket cost half the origin's CPU per write with 64
   connections); on any other stream (TLS, asyncio) one reader task per connection receives
   and calls the same `_receive`.
3. One back-pressure rule: `held` counts the bytes this connection makes the origin hold, that
   is the requests of its writes in flight plus its answers not yet taken by the socket.  While
   `held` is at least `NetLimits.client_unsent_bytes`, the connection is not read (the poller
   stops watching it, the reader task waits); it is read again once answers leave or writes
   complete.  A client that never reads its answers therefore costs at most that much.  The
   same bytes, and those of a request still arriving, are charged to the node's `ByteBudget`
   (node/limits.py; the clients' half of `NetLimits.node_bytes`, the gossip transport has the
   other half): while it is full, a connection that holds anything is not read either.  So a
   thousand clients cannot add up their `client_unsent_bytes` (they hold the budget plus one
   answer each at most), gossip is never starved by clients, and a client with nothing in
   flight is still served.
4. One path for answers: they are appended to `out` and leave through `flush`, after each batch
   of requests read and after each commit group (the sequencer calls `flush_answers`), one
   system call per connection.  `flush` writes straight to a plain non-blocking socket under
   trio (`sockio.direct_socket`) when the writer task is idle; whatever the socket does not
   take at once, and everything on other streams, goes to the connection's writer task, which
   sends all that has accumulated in one `send`.
5. The answer is RESPONSE {"t": 51, "id", ...fields} or, for an EdgeKVError, ERROR {"t": 52,
   "id", "code", "message"}: a bad request costs the client one typed error, the connection
   and the origin keep serving.  Write acks are built here from plain ints and lists, so they
   are encoded without the generic wire check; anything else goes through `encode_frame`.
6. A connection that neither sends a byte nor takes one of its answers for
   `NetLimits.idle_timeout`, with no write of it in flight, is closed (a client reconnects on
   its next request; one that stopped reading its answers is dropped with them).
"""

from __future__ import annotations

import logging
import struct
from functools import partial
from typing import TYPE_CHECKING

import anyio
import cbor2

from ..errors import EdgeKVError, LocalProtocolError, RemoteProtocolError
from ..gossip.wire import Message, MsgType, encode_frame
from ..node.limits import ByteBudget
from ..node.sockio import direct_socket, send_now
from .writer import BatchCommand, StoreCommand

if TYPE_CHECKING:
    from ..gossip.wire import PeerIdentity
    from ..node.tcp import FramedStream
    from .poller import ClientPoller
    from .sequencer import Ticket
    from .server import Origin

logger = logging.getLogger("edgekv.origin")

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
    """Send the answers queued on each of `connections` (rule 4), then forget them."""
    for conn in connections:
        conn.flush()
    connections.clear()


class ClientConnection:
    """The state of one served client connection (see the module docstring)."""

    def __init__(self, origin: Origin, peer: PeerIdentity, stream: FramedStream) -> None:
        self.origin = origin
        self.peer = peer
        self.stream = stream
        self.max_frame_size = stream.max_frame_size
        limits = origin.net_limits
        self.budget = limits.client_unsent_bytes
        node_budget = getattr(origin.transport, "client_budget", None)
        self.node_budget = (
            node_budget
            if isinstance(node_budget, ByteBudget)
            else ByteBudget(limits.node_bytes // 2)
        )
        self._held = 0
        self._buffered = 0  # bytes of requests still arriving, charged to `node_budget`
        self._released = False
        self._room_asked = False  # a callback waits for room in `node_budget`
        self.idle_timeout = limits.idle_timeout
        self.out: list[bytes] = []
        self.inflight = 0  # writes at the sequencer
        self.closed = False
        self._decoder = stream.detach_decoder()
        self._socket = direct_socket(stream.stream)
        self._writer_busy = True  # until the writer task starts and waits
        self._wake = anyio.Event()
        self._dirty = False  # on the origin's list of connections to flush
        self._paused = False
        self._resumed = anyio.Event()
        self._poller: ClientPoller | None = None
        self._fd = -1
        self._done = anyio.Event()
        self._last_active = anyio.current_time()  # last bytes read or answers sent

    @property
    def held(self) -> int:
        """Rule 3: requests of writes in flight + answers not yet sent, in bytes."""
        return self._held

    @held.setter
    def held(self, value: int) -> None:
        if not self._released:
            self.node_budget.take(value - self._held)
        self._held = value

    def _settle(self) -> None:
        """Charge the node's budget with what the decoder holds now (rule 3)."""
        buffered = self._decoder.buffered
        if not self._released:
            self.node_budget.take(buffered - self._buffered)
        self._buffered = buffered

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.node_budget.give(self._held + self._buffered)

    # -- requests (rule 2) ---------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        """Bytes from the client: handle every complete request they finish."""
        self._last_active = anyio.current_time()
        try:
            self._decoder.receive_data(data)
        except RemoteProtocolError as exc:
            self._close(str(exc), logging.WARNING)
            return
        self._handle_frames()

    def _handle_frames(self) -> None:
        decoder = self._decoder
        try:
            while not self.closed:
                if self._over_budget():
                    self._pause()
                    break
                frame = decoder.next_frame()
                if frame is None:
                    break
                self._dispatch(*frame)
        except RemoteProtocolError as exc:
            self._close(str(exc), logging.WARNING)
        self._settle()
        self.flush()

    def _dispatch(self, msg: Message, size: int) -> None:
        """Answer a read now, or hand a write to the sequencer.  RemoteProtocolError (the
        caller closes the connection) for anything but a REQUEST with an int id."""
        req_id = msg.get("id")
        if msg.get("t") != _REQUEST or type(req_id) is not int:
            raise RemoteProtocolError(f"expected REQUEST with an int id, got {msg!r:.80}")
        origin = self.origin
        try:
            prepared = origin.prepare(msg)
            if isinstance(prepared, (BatchCommand, StoreCommand)):
                origin.sequencer.submit_nowait(prepared, partial(self._write_done, req_id, size))
                self.inflight += 1
                self.held += size
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
        if not self.closed:
            self.out.append(frame)
            self.held += len(frame)

    def _write_done(self, req_id: int, size: int, ticket: Ticket) -> None:
        """Sequencer callback: the write is durable (or failed).  The answer waits in `out`
        for `flush`, which the sequencer triggers once the whole group is answered."""
        self.inflight -= 1
        self.held -= size
        if self.closed:
            return
        frame = ack_frame(req_id, ticket, self.max_frame_size)
        self.out.append(frame)
        self.held += len(frame)
        if not self._dirty:
            self._dirty = True
            self.origin.answered.append(self)

    # -- back-pressure (rule 3) ----------------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.origin.client_pauses += 1
            self._resumed = anyio.Event()
            if self._poller is not None:
                self._poller.pause(self._fd)
            if self.held < self.budget:  # paused for the node's budget: woken when it frees
                self._wait_room()

    def _wait_room(self) -> None:
        if not self._room_asked:
            self._room_asked = True
            self.node_budget.on_room(self._room)

    def _room(self) -> None:
        self._room_asked = False
        self._maybe_resume()

    def _over_budget(self) -> bool:
        held = self.held
        return held >= self.budget or (held > 0 and self.node_budget.full)

    def _maybe_resume(self) -> None:
        if self._paused and self.held < self.budget and self._over_budget():
            self._wait_room()  # still over the node's budget
            return
        if self._paused and self.held < self.budget and not self.closed:
            self._paused = False
            self._resumed.set()
            if self._poller is not None:
                self._poller.resume(self._fd)
            self._handle_frames()  # requests already buffered do not wait for more bytes

    # -- answers (rule 4) ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write `out` to the socket now if possible, else leave it to the writer task."""
        self._dirty = False
        out = self.out
        if not out or self.closed or self._writer_busy:
            return  # a busy writer takes `out` when its send returns
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        sock = self._socket
        if sock is not None:
            try:
                sent = send_now(sock, data)
            except OSError as exc:  # the client went away
                self._close(f"cannot answer: {exc!r}", logging.DEBUG)
                return
            if sent < len(data):  # the rest goes to the writer task, ahead of later answers
                self.out = [data[sent:]]
                self._writer_busy = True
                self._wake.set()
            if sent:
                self._sent(sent)  # last: it may resume reading, which may answer more
            return
        self.out = [data]
        self._writer_busy = True
        self._wake.set()

    def _sent(self, n: int) -> None:
        self.held -= n
        self._last_active = anyio.current_time()
        if self._paused:
            self._maybe_resume()

    async def _writer(self) -> None:
        send = self.stream.send_frame
        while True:
            if not self.out:
                self._wake = anyio.Event()
                self._writer_busy = False
                self.flush()  # nothing to send now; answers queued meanwhile go directly
                if not self._writer_busy:
                    await self._wake.wait()
                continue
            out, self.out = self.out, []
            data = out[0] if len(out) == 1 else b"".join(out)
            await send(data)
            self._sent(len(data))

    # -- serving -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the client closes, misbehaves or idles.  Never raises."""
        poller = self.origin.client_poller
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_writer)
                if poller is not None and self._socket is not None:
                    self._poller, self._fd = poller, self._socket.fileno()
                    poller.add(self._fd, self.on_readable)
                else:
                    tg.start_soon(self._read_stream)
                self._handle_frames()  # whatever arrived with the handshake
                await self._wait_done()
                tg.cancel_scope.cancel()
        finally:
            if self._poller is not None:
                self._poller.remove(self._fd)
            self.closed = True
            self._release()

    async def _wait_done(self) -> None:
        idle = self.idle_timeout
        while not self._done.is_set():
            with anyio.move_on_after(idle):
                await self._done.wait()
            quiet = anyio.current_time() - self._last_active
            if quiet >= idle and not self.inflight and not self._done.is_set():
                self.origin.idle_closed_clients += 1
                self._close(f"idle for {quiet:.0f} s", logging.INFO)

    def on_readable(self) -> None:
        """Poller callback: read what the socket has and handle every complete request."""
        if self.closed or self._paused:
            return
        assert self._socket is not None
        try:
            data = self._socket.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(f"connection lost: {exc!r}", logging.DEBUG)
            return
        if data:
            self._receive(data)
        else:
            self._eof()

    async def _read_stream(self) -> None:
        """The reader task for streams the poller cannot watch (TLS, asyncio)."""
        receive = self.stream.stream.receive
        try:
            while not self.closed:
                if self._paused:
                    await self._resumed.wait()
                    continue
                self._receive(await receive(_READ_SIZE))
        except anyio.EndOfStream:
            self._eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._close(f"connection lost: {exc!r}", logging.DEBUG)

    def _eof(self) -> None:
        if self._decoder.buffered:
            self._close("connection closed inside a frame", logging.WARNING)
        else:
            self._close("closed its connection", logging.DEBUG)

    def _close(self, reason: str, level: int) -> None:
        logger.log(level, "client %s: %s", self.peer.node_id, reason)
        self.closed = True
        self._resumed.set()
        self._done.set()

    async def _run_writer(self) -> None:
        try:
            await self._writer()
        except Exception as exc:  # the client went away: nothing to tell it
            self._close(f"cannot answer: {exc!r}", logging.DEBUG)


async def serve_client(origin: Origin, peer: PeerIdentity, stream: FramedStream) -> None:
    """Serve one client connection until it closes or misbehaves.  Never raises."""
    origin.clients += 1
    try:
        await ClientConnection(origin, peer, stream).run()
    finally:
        origin.clients -= 1
