"""NodeRuntime: the anyio driver of one sans-IO gossip core over one Transport.

Shared by the origin and every edge.  The gossip core (`edgekv.gossip.core.GossipNode`) never
touches a socket or a clock; this module owns both.

Theory of operation
1. Two loops run in one task group: the *receive loop* takes each inbound `Envelope` from the
   transport and dispatches it; the *timer loop* sleeps until `gossip.next_deadline`, then calls
   `gossip.tick(now)`.  Every gossip call returns `Send`s, which are written to the transport at
   once (sends are best effort: the transport drops silently to dead peers), one call's batch
   at a time under a lock: a transport yields inside `send`, and the timer loop's batch got
   between the receive loop's (a snapshot's receiver saw chunk n+4 before n+1, took it for a
   gap and resumed: 8,429 resumes in one transfer when a paced responder sent from `tick`).
2. After every gossip call (receive, tick, publish) the runtime drains `gossip.drain_changes()`
   and hands the batch to listeners (persistence, watch; synchronous callbacks) and subscribers
   (bounded memory streams).  The propagation-latency histogram is fed here: wall-clock ms from
   the change's `written_at` (origin clock) to its local apply.
3. The timer loop wakes early when a receive or publish moved the deadline earlier than the one
   it sleeps towards (it cancels the loop's sleep scope), so an idle node sleeps for whole
   gossip intervals.
4. REQUEST messages are request/response traffic (writes forwarded to the origin, client
   requests), not gossip: each runs in its own task through `on_request(peer, msg)`; the dict it
   returns goes back as RESPONSE with the same "id"; an `EdgeKVError` becomes ERROR{id, code,
   message}.  RESPONSE/ERROR complete the matching `request()` if (and only if) they come from
   the peer that request was sent to.  A request that gets no answer within its timeout raises
   `OriginUnavailable`.
5. Heavy work the core hands out (`take_job()`: a received snapshot to bulk-load) runs in a
   worker thread when large (inline when small, so virtual-clock tests stay exact); its
   result goes back through `finish_job`, then to the job listeners (persistence rewrites
   its file from the installed replica).
6. Garbage never stops the node: a `RemoteProtocolError` (or any other failure) while handling
   one message is logged and counted in `metrics.events`; the loop goes on.
6. A peer that sends states the origin never signed (`ForgedState`, see crdt/proofs.py) is
   counted in `metrics.rejected` (by peer; /metrics and /status show it) and cut off for
   `reject_backoff` seconds: its messages are dropped, nothing is sent to it, and the
   transport closes its connections both ways and refuses the ones it opens during the
   back-off if it can (`disconnect(peer, backoff)`, TCP).
7. A transport that measures its links (TCP: each connection's lowest round trip as the
   kernel sees it, `link_rtts`) has them handed to the core (`note_link_rtt`) at a tick about
   once per `LINK_RTT_EVERY`: they size the push windows (gossip/dissemination.py rule 1).

Time: `clock()` (default `anyio.current_time`, virtual under trio's MockClock) drives the gossip
core; `wall_ms()` (default the system clock in ms) is only for latency figures and expiry, so a
simulation can inject virtual wall time.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from edgekv.clock import wall_clock_ms
from edgekv.crdt import Change, Delta, Replica
from edgekv.crdt.proofs import ForgedState
from edgekv.errors import (
    EdgeKVError,
    LocalProtocolError,
    OriginUnavailable,
    RemoteProtocolError,
)
from edgekv.gossip.transport import Transport
from edgekv.gossip.wire import Message, MsgType
from edgekv.node import gcpolicy
from edgekv.node.backoff import Backoffs
from edgekv.node.fanout import send_each
from edgekv.node.metrics import NodeMetrics
from edgekv.node.pending import PendingRequests, Waiter, outcome

__all__ = ["REJECT_BACKOFF", "GossipCore", "NodeRuntime", "RequestHandler"]

REJECT_BACKOFF = 60.0  # seconds a peer that sent unsigned states is cut off

logger = logging.getLogger("edgekv.runtime")

_REQUEST = int(MsgType.REQUEST)
_RESPONSE = int(MsgType.RESPONSE)
_ERROR = int(MsgType.ERROR)
_HANDSHAKE = frozenset(int(t) for t in (MsgType.HELLO, MsgType.HELLO_ACK, MsgType.AUTH))

LINK_RTT_EVERY = 1.0  # seconds between reads of the transport's link round trips
MAX_INFLIGHT_REQUESTS = 1024
MAX_ALIASES = 1024  # moved-away addresses remembered by `resolve`
SUBSCRIBER_BUFFER = 1024
OFFLOAD_FROM_KEYS = 20_000  # a job this large runs in a worker thread


class _Send(Protocol):
    @property
    def peer(self) -> str: ...

    @property
    def message(self) -> Message: ...


class GossipCore(Protocol):
    """What the runtime needs of `edgekv.gossip.core.GossipNode`."""

    counters: Counter[str]

    @property
    def replica(self) -> Replica: ...

    @property
    def next_deadline(self) -> float: ...

    def start(self, now: float) -> Sequence[_Send]: ...

    def receive(self, peer: str, message: Message, now: float) -> Sequence[_Send]: ...

    def tick(self, now: float, wall_ms: int | None = None) -> Sequence[_Send]: ...

    def publish(
        self, items: list[tuple[str, str, Delta]], covers: list[tuple[int, int]], now: float
    ) -> Sequence[_Send]: ...

    def drain_changes(self) -> list[Change]: ...

    def peers(self) -> Mapping[str, Any]: ...

    def leave(self, now: float) -> Sequence[_Send]: ...

    def forget(self, address: str, new: str | None = None) -> None: ...

    def note_link_rtt(self, peer: str, rtt: float) -> None: ...

    def take_job(self) -> Any | None: ...

    def finish_job(self, job: Any, result: Any, now: float) -> Sequence[_Send]: ...

    @property
    def staging(self) -> bool:
        """A whole snapshot is being received (its data should stay out of the GC's way)."""
        ...


RequestHandler = Callable[[str, Message], Awaitable[Message]]
Listener = Callable[[list[Change]], None]
JobListener = Callable[[Any, Any], None]


class _Waiter(Waiter):
    __slots__ = ("peer",)

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer


class NodeRuntime:
    """anyio driver of one GossipNode over one Transport; shared by the origin and every edge."""

    def __init__(
        self,
        transport: Transport,
        gossip: GossipCore,
        *,
        on_request: RequestHandler | None = None,
        clock: Callable[[], float] = anyio.current_time,
        wall_ms: Callable[[], int] = wall_clock_ms,
        reject_backoff: float = REJECT_BACKOFF,
    ) -> None:
        self.transport = transport
        self.reject_backoff = reject_backoff
        self._banned = Backoffs()  # peers cut off for sending unsigned states (rule 6), bounded
        self.gossip = gossip
        self.metrics = NodeMetrics()
        self._on_request = on_request
        self._clock = clock
        self._wall_ms = wall_ms
        self._pending: PendingRequests[_Waiter] = PendingRequests()
        self._listeners: list[Listener] = []
        self._job_listeners: list[JobListener] = []
        self._subscribers: list[MemoryObjectSendStream[list[Change]]] = []
        self._sleep_scope: anyio.CancelScope | None = None  # the timer loop's sleep, if any
        # held while one call's sends are written: the receive loop's and the timer loop's
        # batches leave in the order gossip made them (rule 1)
        self._send_lock = anyio.Lock()
        self._sleeping_until = -math.inf
        self._links_due = -math.inf
        self._inflight = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self.running = False
        self._aliases: dict[str, str] = {}  # an address a peer left -> where it is now
        hooks = getattr(transport, "on_moved", None)
        if isinstance(hooks, list):
            hooks.append(self._moved)
        may_dial = getattr(gossip, "may_dial", None)
        if may_dial is not None and hasattr(transport, "may_dial"):
            setattr(transport, "may_dial", may_dial)  # noqa: B010 (not in the Transport protocol)

    # -- public API ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.transport.address

    def now(self) -> float:
        """The time on the clock driving the gossip core."""
        return self._clock()

    @property
    def wall_ms(self) -> Callable[[], int]:
        return self._wall_ms

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the gossip core and run the receive and timer loops until the transport closes
        (or the caller cancels)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.running = True
                sends = self.gossip.start(self._clock())
                self._after_gossip()
                tg.start_soon(self._timer_loop)
                tg.start_soon(self._receive_loop, tg.cancel_scope)
                task_status.started()
                await self._send_all(sends)
        finally:
            self.running = False
            self._tg = None
            self._pending.wake()  # requesters see no reply -> OriginUnavailable
            for sub in self._subscribers:
                sub.close()
            self._subscribers.clear()

    async def publish(
        self, items: list[tuple[str, str, Delta]], covers: list[tuple[int, int]]
    ) -> None:
        """Feed deltas (already applied locally) into dissemination and send what it says."""
        sends = self.gossip.publish(items, covers, self._clock())
        self._after_gossip()
        await self._send_all(sends)

    async def run_core(self, step: Callable[[float], Iterable[_Send]]) -> None:
        """Run the driver's own call `step(now)` into the gossip core (an edge joining its
        loaded file), then hand on its changes and jobs and send what it returns, as after
        a receive (rules 1, 2, 5)."""
        sends = list(step(self._clock()))
        self._after_gossip()
        await self._send_all(sends)

    async def leave(self) -> None:
        """Say goodbye (BYE to live peers, best effort) so they stop counting on this node."""
        if self.running:
            # Cancelled (a task group tearing down): no send could go out; do not even build
            # the goodbyes (one per live peer, a million for a 1,000-node simulation).
            await anyio.lowlevel.checkpoint_if_cancelled()
            await self._send_all(self.gossip.leave(self._clock()))

    def apply_local(
        self, items: Iterable[tuple[str, str, Delta]], covers: Iterable[tuple[int, int]] = ()
    ) -> list[Change]:
        """Apply deltas to the local replica (no network) and feed the changes to listeners.

        Used by an edge for the deltas the origin returned with a write (read-your-writes).
        """
        changes = self.gossip.replica.apply_batch(items, covers)
        if changes:
            self._dispatch(changes)
        return changes

    def resolve(self, address: str) -> str:
        """Where the peer once known at `address` is now (the address itself if it never moved)."""
        return self._aliases.get(address, address)

    def _moved(self, old: str, new: str) -> None:
        """Transport hook: the peer at `old` now advertises `new` (same node id, or a seed
        address that answered under another name).  Requests follow it; gossip forgets `old`."""
        if old == new or old == self.address:
            return
        aliases = self._aliases
        aliases.pop(new, None)
        for k, v in aliases.items():
            if v == old:
                aliases[k] = new
        aliases[old] = new
        if len(aliases) > MAX_ALIASES:
            del aliases[next(iter(aliases))]
        self.gossip.forget(old, new)

    async def request(self, peer: str, body: Mapping[str, Any], timeout: float) -> Message:  # noqa: ASYNC109 (contract)
        """Send REQUEST{id, **body} to `peer` and wait for its RESPONSE (returned) or ERROR
        (raised as the typed error).  `OriginUnavailable` when nothing comes within `timeout`."""
        peer = self.resolve(peer)
        waiter = _Waiter(peer)
        rid = self._pending.add(waiter)
        msg: Message = {**body, "t": _REQUEST, "id": rid}
        try:
            with anyio.move_on_after(timeout):
                try:
                    await self.transport.send(peer, msg)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    raise OriginUnavailable(f"{peer}: the node is shutting down") from None
                await waiter.event.wait()
        finally:
            self._pending.discard(rid)
        return outcome(waiter.reply, f"no answer from {peer} within {timeout:g} s")

    def subscribe(
        self, max_buffer: int = SUBSCRIBER_BUFFER
    ) -> MemoryObjectReceiveStream[list[Change]]:
        """A stream of applied-change batches.

        Overflow policy: a subscriber that falls `max_buffer` batches behind is closed (its
        stream ends after the buffered batches, counted as `subscriber_overflow`); it should
        re-read the replica and subscribe again.  The stream also ends when the runtime stops.
        """
        send, recv = anyio.create_memory_object_stream[list[Change]](max_buffer)
        self._subscribers.append(send)
        return recv

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(changes)` synchronously after every batch of applied changes.

        Listeners must be fast and must not raise (persistence marks keys dirty; watch fans
        out into bounded per-watcher buffers)."""
        self._listeners.append(listener)

    def add_job_listener(self, listener: JobListener) -> None:
        """Call `listener(job, result)` after the core installed a job's result (rule 5)."""
        self._job_listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- loops -------------------------------------------------------------------------------------

    async def _receive_loop(self, scope: anyio.CancelScope) -> None:
        transport = self.transport
        try:
            while True:
                try:
                    envelope = await transport.receive()
                except (anyio.ClosedResourceError, anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                await self._handle(envelope.peer, envelope.message)
        finally:
            scope.cancel()  # transport closed: stop the timer loop too

    async def _handle(self, peer: str, msg: Message) -> None:
        t = msg.get("t")
        if t == _REQUEST:
            self._start_request(peer, msg)
            return
        if t in (_RESPONSE, _ERROR):
            self._complete(peer, msg)
            return
        if t in _HANDSHAKE:
            self._count("protocol_errors")
            logger.warning("%s: handshake message %r from %s after connect", self.address, t, peer)
            return
        if self._banned and self._banned.active(peer, self._clock()):
            self._count("dropped_from_rejected_peer")
            return
        try:
            sends = self.gossip.receive(peer, msg, self._clock())
        except ForgedState as exc:
            self.reject(peer, exc)
            sends = ()
        except RemoteProtocolError as exc:
            self._count("protocol_errors")
            logger.warning("%s: bad message from %s: %s", self.address, peer, exc)
            self._drop_inbound(peer)
            sends = ()
        except EdgeKVError as exc:  # e.g. ConflictingVersion: corrupt or forged data from a peer
            self._count("protocol_errors")
            logger.error("%s: rejected data from %s: %r", self.address, peer, exc)
            self._drop_inbound(peer)
            sends = ()
        except Exception:
            self._count("internal_errors")
            logger.exception("%s: error handling %r from %s", self.address, t, peer)
            sends = ()
        self._after_gossip()
        await self._send_all(sends)

    async def _timer_loop(self) -> None:
        gossip = self.gossip
        while True:
            deadline = gossip.next_deadline
            now = self._clock()
            if deadline > now:
                # One cancel scope per sleep, no Event: `_after_gossip` cancels it to wake us.
                with anyio.CancelScope(deadline=anyio.current_time() + (deadline - now)) as scope:
                    self._sleep_scope = scope
                    self._sleeping_until = deadline
                    await anyio.sleep_forever()
                self._sleep_scope = None
                self._sleeping_until = -math.inf
                continue
            if now >= self._links_due:
                self._links_due = now + LINK_RTT_EVERY
                self._note_link_rtts()
            try:
                sends = gossip.tick(now, wall_ms=self._wall_ms())
            except Exception:
                self._count("internal_errors")
                logger.exception("%s: gossip tick failed", self.address)
                sends = ()
            self._after_gossip()
            await self._send_all(sends)
            if gossip.next_deadline <= now:  # a core that does not move its deadline: no spin
                self._count("stuck_deadline")
                await anyio.sleep(0.001)

    def _note_link_rtts(self) -> None:
        """Rule 7: hand the transport's measured link round trips to the core."""
        for peer, rtt in self.transport.link_rtts().items():
            self.gossip.note_link_rtt(peer, rtt)

    # -- requests ----------------------------------------------------------------------------------

    def _start_request(self, peer: str, msg: Message) -> None:
        rid = msg.get("id")
        if type(rid) is not int:
            self._count("protocol_errors")
            logger.warning("%s: REQUEST without an integer id from %s", self.address, peer)
            return
        if self._tg is None:
            return
        if self._inflight >= MAX_INFLIGHT_REQUESTS:
            self._count("requests_rejected_busy")
            self._tg.start_soon(
                self._send_all,
                [_Out(peer, _error_reply(rid, OriginUnavailable("node overloaded, retry later")))],
            )
            return
        self._inflight += 1
        self._tg.start_soon(self._serve_request, peer, rid, msg)

    async def _serve_request(self, peer: str, rid: int, msg: Message) -> None:
        try:
            if self._on_request is None:
                reply = _error_reply(rid, EdgeKVError("this node does not serve requests"))
            else:
                try:
                    body = await self._on_request(peer, msg)
                    reply = {**body, "t": _RESPONSE, "id": rid}
                except EdgeKVError as exc:
                    reply = _error_reply(rid, exc)
                except Exception:
                    self._count("request_errors")
                    logger.exception("%s: request handler failed for %s", self.address, peer)
                    reply = _error_reply(rid, EdgeKVError("internal error"))
            await self._send_all([_Out(peer, reply)])
        finally:
            self._inflight -= 1

    def _complete(self, peer: str, msg: Message) -> None:
        waiter = self._pending.match(msg, lambda w: w.peer == peer or self.resolve(w.peer) == peer)
        if waiter is None:
            self._count("unmatched_responses")
            return
        rid = msg["id"]
        if msg["t"] == _ERROR and not (
            isinstance(msg.get("code"), str) and isinstance(msg.get("message"), str)
        ):
            self._count("protocol_errors")
            msg = {"t": _ERROR, "id": rid, "code": "protocol_error", "message": "malformed ERROR"}
        waiter.answer(msg)

    # -- plumbing ------------------------------------------------------------------------------

    def _after_gossip(self) -> None:
        changes = self.gossip.drain_changes()
        if changes:
            self._dispatch(changes)
        if self.gossip.staging:  # staging a snapshot: keep the GC off its data
            gcpolicy.settle()
        job = self.gossip.take_job()
        if job is not None and self._tg is not None:
            self._tg.start_soon(self._run_job, job)
        if self.gossip.next_deadline < self._sleeping_until and self._sleep_scope is not None:
            self._sleep_scope.cancel()
            self._sleeping_until = -math.inf

    async def _run_job(self, job: Any) -> None:
        """Rule 5: build off the loop when large, then install through the core."""
        result: Any
        try:
            if getattr(job, "keys", 0) >= OFFLOAD_FROM_KEYS:
                result = await anyio.to_thread.run_sync(job.build, abandon_on_cancel=True)
            else:
                result = job.build()
        except Exception as exc:
            logger.exception("%s: background job failed", self.address)
            result = exc
        sends = self.gossip.finish_job(job, result, self._clock())
        gcpolicy.settle()  # the installed replica's objects
        self._after_gossip()
        if not isinstance(result, BaseException):
            for listener in self._job_listeners:
                try:
                    listener(job, result)
                except Exception:
                    self._count("listener_errors")
                    logger.exception("%s: job listener failed", self.address)
        await self._send_all(sends)

    def _dispatch(self, changes: list[Change]) -> None:
        metrics = self.metrics
        metrics.changes_applied += len(changes)
        now_ms = self._wall_ms()
        observe = metrics.propagation_ms.observe
        latest = metrics.last_written_at
        for change in changes:
            state = change.state
            if state is not None and state.written_at:
                observe(max(0, now_ms - state.written_at))
                if state.written_at > latest:
                    latest = state.written_at
        metrics.last_written_at = latest
        for listener in self._listeners:
            try:
                listener(changes)
            except Exception:
                self._count("listener_errors")
                logger.exception("%s: change listener failed", self.address)
        if self._subscribers:
            self._subscribers = send_each(
                self._subscribers, changes, lambda: self._count("subscriber_overflow")
            )

    def _drop_inbound(self, peer: str) -> None:
        """A bad message closes the connection it came on (a transport that can, TCP), so what
        the peer queued behind it is never read: a garbage stream costs one frame, not many."""
        drop = getattr(self.transport, "drop_inbound", None)
        if drop is not None:
            drop(peer)

    def reject(self, peer: str, reason: Exception) -> None:
        """`peer` sent states the origin never signed: count it, cut the peer off (its
        connection closed where the transport can, its messages dropped both ways) for
        `reject_backoff` seconds."""
        self.metrics.count_rejected(peer)
        self._count("rejected_unsigned")
        self._drop_inbound(peer)
        self._banned.start(peer, self._clock() + self.reject_backoff)
        logger.error(
            "%s: rejected unsigned data from %s (cut off for %.0f s): %s",
            self.address,
            peer,
            self.reject_backoff,
            reason,
        )
        disconnect = getattr(self.transport, "disconnect", None)
        if disconnect is not None:
            disconnect(peer, self.reject_backoff)

    async def _send_all(self, sends: Sequence[_Send]) -> None:
        if not sends:
            return
        transport = self.transport
        lock = self._send_lock
        try:  # taken at once when free: no yield between the gossip call and its sends
            lock.acquire_nowait()
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            for send in sends:
                if self._banned and self._banned.active(send.peer, self._clock()):
                    continue
                try:
                    await transport.send(send.peer, send.message)
                except LocalProtocolError as exc:
                    self._count("local_protocol_errors")
                    logger.error("%s: refused to send to %s: %s", self.address, send.peer, exc)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
        finally:
            lock.release()

    def _count(self, event: str) -> None:
        self.metrics.events[event] += 1


class _Out:
    __slots__ = ("message", "peer")

    def __init__(self, peer: str, message: Message) -> None:
        self.peer = peer
        self.message = message


def _error_reply(rid: int, exc: EdgeKVError) -> Message:
    return {"t": _ERROR, "id": rid, "code": exc.code, "message": str(exc)}
