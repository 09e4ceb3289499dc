"""OriginClient: the anyio client of the origin's framed CBOR protocol.

Theory of operation
1. One TCP connection with the handshake role "client"; requests are pipelined on it, each
   with a fresh id, and a reader task completes them from RESPONSE/ERROR frames by id.  So one
   client shared by many tasks keeps one connection and its writes share group commits.
   Sends are combined: a request whose connection is already sending queues its frame, and
   the task that is sending yields once (so that the other runnable tasks queue theirs), then
   writes everything queued in one `send` before it returns (straight to the non-blocking
   socket when `sockio.write_socket` allows, on trio and on asyncio), so many tasks' requests
   cost one system call (and the origin reads them with one).  A request that is the only one
   awaiting an answer does not yield: nothing is likely to join it, and a lone client (a
   poller reading one key in a loop) saves a trip through the event loop per request.
2. Reconnection is transparent: the next request after a lost connection connects again
   (retrying with backoff until its timeout).  A read in flight when the connection drops is
   retried; a write is not (it may or may not have been applied), it raises OriginUnavailable.
3. ERROR frames become the typed exception they name (`errors.error_from_code`); no answer
   within `timeout` seconds raises OriginUnavailable.  Timeouts cost no cancel scope per
   request: each request joins a deque of its timeout (deadlines ascend within one), and one
   watchdog task sleeps until the earliest deadline among the deques' heads (a request wakes
   it only if its own deadline is earlier); it wakes an expired request (and closes its
   connection if the request is still stuck sending).  So under steady load the watchdog
   runs about once per `timeout`, whatever the request rate.
4. After the handshake the reader feeds what it reads to a `FrameDecoder` whose bodies are
   checked by `decode_answer`: one read may hold many answers, each decoded by one
   `cbor2.loads` (tags refused); `node/pending.py` matches them to their requests.  On a
   plain socket under trio it waits until the socket is readable and then reads it
   directly (a stream `receive` first tries a read that fails, then waits: one system call
   more per answer).  The origin sends
   nothing unasked after the handshake, so nothing is left in the handshake's decoder.  An
   oversize or undecodable frame, or an answer that is not a map with an int "t", closes the
   connection (the requests waiting on it then fail or retry as in rule 2).
5. Several origin addresses (a leader and its followers on one PostgreSQL log): the client
   talks to one; on `not_leader` or a failed connect it moves on to the next.  A write then
   carries a random request id (`rid`) and is retried under it when its connection is lost
   before the answer: the log applies it at most once (sequencer rule 7), or the retries run
   out of time and it fails with OriginUnavailable.  With one address, writes are never retried.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import cbor2
import sniffio

from ..errors import (
    EdgeKVError,
    InvalidInput,
    LocalProtocolError,
    OriginUnavailable,
    RemoteProtocolError,
    Unauthorized,
)
from ..gossip.wire import FrameDecoder, Message, MsgType, encode_frame
from ..node.framed import FramedStream, LinkOptions
from ..node.pending import Event, PendingRequests, Waiter, outcome
from ..node.sockio import direct_socket, receive_ready, write_socket
from ..node.tlsconfig import TlsConfig
from .api import StoreApi

__all__ = ["OriginClient"]

_REQUEST, _RESPONSE, _ERROR = int(MsgType.REQUEST), int(MsgType.RESPONSE), int(MsgType.ERROR)
_BACKOFF_MIN, _BACKOFF_MAX = 0.02, 0.5
_HEADER = struct.Struct(">I")
_PLAIN = frozenset((str, bytes, int, float, bool, type(None)))


def request_frame(msg: dict[str, Any], max_frame_size: int) -> bytes:
    """The frame of a request.  A flat map of plain scalars (a put, a delete, a get) is
    encoded directly; anything else is checked by `encode_frame`.  A request that is not
    wire-valid or is larger than a frame raises InvalidInput: it never reaches the origin."""
    try:
        return _request_frame(msg, max_frame_size)
    except LocalProtocolError as exc:
        raise InvalidInput(f"cannot send this request: {exc}") from None


def _request_frame(msg: dict[str, Any], max_frame_size: int) -> bytes:
    values = msg.values()
    if not _PLAIN.issuperset(map(type, values)):
        return encode_frame(msg, max_frame_size)
    for v in values:
        if v.__class__ is int and not -(2**63) <= v < 2**64:
            return encode_frame(msg, max_frame_size)
    body = cbor2.dumps(msg)
    if len(body) > max_frame_size:
        return encode_frame(msg, max_frame_size)  # raises with the usual message
    return _HEADER.pack(len(body)) + body


def _native() -> tuple[Callable[[], float], Callable[[], Event]]:
    """The running backend's own clock and event class: what anyio's `current_time` and
    `Event` wrap, without the look-up of the backend at every call (a few us each on asyncio,
    paid at every request)."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        return asyncio.get_running_loop().time, asyncio.Event
    if library == "trio":
        import trio

        return trio.current_time, trio.Event
    return anyio.current_time, anyio.Event


class _Waiter(Waiter):
    __slots__ = ("conn", "deadline", "done", "expired", "sent")

    def __init__(self, conn: _Connection, deadline: float, event: Event) -> None:
        super().__init__(event)
        self.conn = conn
        self.deadline = deadline
        self.sent = False
        self.expired = False
        self.done = False


def _no_tags(*_args: object) -> None:
    raise RemoteProtocolError("CBOR tags are not allowed")


def decode_answer(body: bytes) -> Message:
    """One answer frame's body; RemoteProtocolError if it is not a map with an int "t"."""
    try:
        msg = cbor2.loads(body, tag_hook=_no_tags)
    except Exception as exc:
        raise RemoteProtocolError(f"undecodable answer: {exc!r:.200}") from None
    if type(msg) is not dict or type(msg.get("t")) is not int:
        raise RemoteProtocolError("an answer must be a map with an int type")
    return msg


class _Connection:
    __slots__ = ("alive", "out", "sending", "socket", "stays", "stream", "writes")

    def __init__(self, stream: FramedStream) -> None:
        self.stream = stream
        self.socket = direct_socket(stream.stream)  # the reader's (trio only)
        # written directly (`os.write`) on trio and asyncio; on asyncio only until the
        # stream's own send is used (node/sockio.py).  The handshake's frames went through
        # the stream, but the kernel took them whole (a fresh connection, a few hundred bytes)
        self.writes, self.stays = write_socket(stream.stream)
        self.alive = True
        self.out: list[bytes] = []
        self.sending = False

    async def send(self, frame: bytes, alone: bool = False) -> None:
        """Queue `frame`; if no task is sending, send everything queued (see rule 1).  `alone`:
        no other request awaits an answer, so none is likely to join: send at once."""
        self.out.append(frame)
        if self.sending:
            return
        self.sending = True
        try:
            if not alone:
                # let the other runnable tasks queue their requests first (not a cancellation
                # point: a cancelled sender would take the connection down for everyone)
                await anyio.lowlevel.cancel_shielded_checkpoint()
            while self.out:
                out, self.out = self.out, []
                data = out[0] if len(out) == 1 else b"".join(out)
                sock = self.writes
                if sock is not None:
                    fd = sock.fileno()  # -1 once closed: then the stream's send raises
                    try:
                        sent = os.write(fd, data) if fd >= 0 else 0
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent == len(data):
                        continue
                    data = data[sent:]
                    if not self.stays:
                        self.writes = None  # the transport may keep the rest: it writes next
                await self.stream.send_frame(data)
        except BaseException:
            # a frame may be half sent: this connection is done; closing it ends the reader,
            # which wakes every request waiting on it (queued frames included)
            self.alive = False
            self.out = []
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.stream.stream)
            raise
        finally:
            self.sending = False


_MOVED = frozenset({"not_leader"})  # this origin does not lead: try the next one
_MAYBE = frozenset({"log_error", "fenced"})  # the leader failed mid-commit: retry under the rid


class OriginClient(StoreApi):
    """`async with OriginClient("127.0.0.1:7300", token=None) as client:` (see module docstring)."""

    def __init__(
        self,
        address: str | Sequence[str],
        token: str | None = None,
        *,
        cluster_id: str = "edgekv",
        cluster_key: bytes | str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        tls: TlsConfig | None = None,
    ) -> None:
        # several origins (a leader and its followers): "a,b" or ["a", "b"]; see rule 5
        self.addresses = address.split(",") if isinstance(address, str) else list(address)
        if not self.addresses or not all(isinstance(a, str) and a for a in self.addresses):
            raise InvalidInput("OriginClient needs an origin address ('host:port', or several)")
        self.address = self.addresses[0]  # the one this client talks to now
        self.token = token
        self.cluster_id = cluster_id
        self.cluster_key = cluster_key.encode() if isinstance(cluster_key, str) else cluster_key
        self.timeout = timeout
        # TLS: verify the origin against `tls.ca`, present `tls.cert` if any (tlsconfig.py)
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.node_id = f"client-{os.urandom(6).hex()}"
        self._pending: PendingRequests[_Waiter] = PendingRequests()
        self._timeouts: dict[float, deque[_Waiter]] = {}
        self._watch_wake: anyio.Event | None = None
        self._now: Callable[[], float] = anyio.current_time  # the backend's own, once entered
        self._event: Callable[[], Event] = anyio.Event
        self._watch_until = -math.inf  # the deadline the watchdog sleeps until
        self._conn: _Connection | None = None
        self._connect_lock: anyio.Lock | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.reconnects = 0

    async def __aenter__(self) -> OriginClient:
        self._now, self._event = _native()
        self._connect_lock = anyio.Lock()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._watchdog)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if self._conn is not None:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._conn.stream.stream)
        if tg is None:
            return None
        tg.cancel_scope.cancel()
        # the reader tasks never raise: exit the group without the body's exception, so that it
        # propagates as itself (not wrapped in an ExceptionGroup)
        await tg.__aexit__(None, None, None)
        return None

    # -- connection ------------------------------------------------------------------------------

    async def _connection(self, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if self._tg is None or self._connect_lock is None:
            raise EdgeKVError("use `async with OriginClient(...)`")
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            backoff = _BACKOFF_MIN
            while True:
                left = deadline - anyio.current_time()
                try:
                    stream = await FramedStream.connect(
                        self.address,
                        LinkOptions(
                            self.cluster_id,
                            self.node_id,
                            "client",
                            key=self.cluster_key,
                            ssl_context=None if self.tls is None else self.tls.client_context(),
                        ),
                        connect_timeout=max(0.001, min(self.connect_timeout, left)),
                    )
                    break
                except Unauthorized:
                    raise
                except (
                    OSError,
                    TimeoutError,
                    RemoteProtocolError,
                    ValueError,
                    anyio.BrokenResourceError,  # reset in the handshake (an origin at its cap)
                ) as exc:
                    if self._next_address():
                        continue  # try the other origins before backing off
                    if anyio.current_time() + backoff >= deadline:
                        raise OriginUnavailable(
                            f"cannot reach the origin at {self.address}: {exc}"
                        ) from None
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
            if self._conn is not None:
                self.reconnects += 1
            conn = self._conn = _Connection(stream)
            self._tg.start_soon(self._reader, conn)
            return conn

    def _next_address(self) -> bool:
        """Move to the next origin address; False when that starts a new round (or there is
        only one address)."""
        addresses = self.addresses
        i = addresses.index(self.address) if self.address in addresses else -1
        self.address = addresses[(i + 1) % len(addresses)]
        return self.address != addresses[0]

    async def _leave(self, conn: _Connection) -> None:
        """This origin does not lead: drop its connection and move to the next one."""
        if conn.alive:
            conn.alive = False
            await anyio.aclose_forcefully(conn.stream.stream)
        if not self._next_address():
            await anyio.sleep(0.05)  # a round of followers: the takeover is under way

    async def _reader(self, conn: _Connection) -> None:
        """Complete waiters from the answers on `conn` (rule 4)."""
        pending = self._pending
        sock = conn.stream.stream
        frames = FrameDecoder(conn.stream.max_frame_size, decode=decode_answer)
        raw = conn.socket  # a plain socket under trio: wait, then recv (no recv that fails)
        try:
            while True:
                if raw is not None:
                    data = await receive_ready(raw, 65536)
                else:
                    data = await sock.receive(65536)
                for msg in frames.feed(data):
                    pending.complete(msg)
        except Exception:
            pass  # closed, reset or garbage: this connection is done
        finally:
            conn.alive = False
            pending.wake(lambda waiter: waiter.conn is conn)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(sock)

    async def _watchdog(self) -> None:
        """Expire requests past their deadline (rule 3)."""
        timeouts = self._timeouts
        while True:
            soonest: deque[_Waiter] | None = None
            for timeout, q in list(timeouts.items()):
                while q and q[0].done:
                    q.popleft()
                if not q:
                    del timeouts[timeout]  # a client may use many different timeouts
                elif soonest is None or q[0].deadline < soonest[0].deadline:
                    soonest = q
            if soonest is None:
                self._watch_until = math.inf
                self._watch_wake = wake = anyio.Event()
                await wake.wait()
                continue
            head = soonest[0]
            delay = head.deadline - self._now()
            if delay > 0:  # until then, or until a request with an earlier deadline comes
                self._watch_until = head.deadline
                self._watch_wake = wake = anyio.Event()
                with anyio.move_on_after(delay):
                    await wake.wait()
                continue
            soonest.popleft()
            head.expired = True
            head.event.set()
            if not head.sent:  # stuck in send: the connection is unusable
                head.conn.alive = False
                await anyio.aclose_forcefully(head.conn.stream.stream)

    # -- requests --------------------------------------------------------------------------------

    async def request(self, body: dict[str, Any], *, idempotent: bool = False) -> Message:
        """Send one request body and return the response fields (or raise its typed error)."""
        if self.token is not None:
            body["token"] = self.token
        timeout = self.timeout
        deadline = self._now() + timeout
        while True:
            conn = await self._connection(deadline)
            waiter = _Waiter(conn, deadline, self._event())
            req_id = self._pending.add(waiter)
            try:
                frame = request_frame(
                    {"t": _REQUEST, "id": req_id, **body}, conn.stream.max_frame_size
                )
            except BaseException:
                self._pending.discard(req_id)
                raise
            queue = self._timeouts.get(timeout)
            if queue is None:
                queue = self._timeouts[timeout] = deque()
            queue.append(waiter)
            if deadline < self._watch_until:  # the watchdog sleeps past this deadline
                wake = self._watch_wake
                if wake is not None:
                    self._watch_wake = None
                    self._watch_until = -math.inf
                    wake.set()
            try:
                try:
                    await conn.send(frame, len(self._pending) == 1)
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # conn.send closed the connection
                waiter.sent = True
                if conn.alive and not waiter.expired:
                    await waiter.event.wait()
            finally:
                self._pending.discard(req_id)
                waiter.done = True
                while queue and queue[0].done:
                    queue.popleft()
            reply = waiter.reply
            if reply is not None:
                if reply["t"] == _ERROR:
                    code = str(reply.get("code"))
                    retry = (code in _MOVED and len(self.addresses) > 1) or (
                        code in _MAYBE and "rid" in body
                    )
                    if retry and self._now() < deadline:
                        await self._leave(conn)  # rule 5: on to the next origin
                        continue
                return outcome(reply, "")
            if waiter.expired or self._now() >= deadline:
                raise OriginUnavailable(f"no answer from the origin within {self.timeout} s")
            if not idempotent and "rid" not in body:
                raise OriginUnavailable(
                    "connection to the origin lost before the answer; "
                    "the write may or may not have been applied"
                )

    def _with_rid(self, body: dict[str, Any]) -> dict[str, Any]:
        if len(self.addresses) > 1:  # rule 5: retried under its request id, applied once
            body["rid"] = os.urandom(16)
        return body

    async def _write(self, body: dict[str, Any]) -> Message:
        return await self.request(self._with_rid(body))

    async def _read(self, body: dict[str, Any]) -> Message:
        return await self.request(body, idempotent=True)
