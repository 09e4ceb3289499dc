"""Per-peer senders of the TCP transport: one byte-bounded queue and one connection per peer.

Theory of operation
1. A frame for a peer goes to that peer's queue; a writer task per peer takes frames in order
   and sends them over one persistent outbound connection (`Dialer.connect`), opened lazily.
   A send never waits for the network.  When that peer's connection is open and nothing is
   queued or being sent, the frame is written to the socket at once (a plain socket under trio,
   `sockio.direct_socket`), and only what the kernel does not take goes through the queue: a
   push to many peers costs one socket write each, not a writer task's turn each.
2. Bounds: a peer's queue holds at most `limits.send_queue_bytes` and at most `queue_size`
   frames, and every queued frame is charged to the node's `ByteBudget` until it is sent or
   dropped; a frame that does not fit is dropped and counted in `stats.dropped`.
3. A peer that cannot be reached costs one failed connect, then a back-off (50 ms doubling to
   2 s) during which its frames are dropped (counted).  The peer never sends on our outbound
   connection: a watcher task notices at once when it closes it.
4. The table of senders is bounded (a peer can make a node send to any number of addresses,
   and churn at 1,000 edges names many): a sweep every `limits.sender_idle_timeout` closes
   the senders that had nothing queued, sent nothing and were sent nothing since the last
   sweep (so after one to two idle times; counted in `stats.senders_expired`): their
   connections close, their tasks end, and the next frame for that peer makes a new one.  At
   most `limits.max_senders` exist: a new peer beyond that evicts the sender sent to least
   recently (its queued frames dropped and counted, the eviction counted in
   `stats.senders_evicted`) rather than dropping the new peer's frame, so that a node can
   always reach a new member or a moved origin; the evicted peer costs one reconnect.
5. `link_rtts` reports each open connection's lowest round trip as the kernel measured it
   (TCP_INFO), the driver's measure of the link for the push windows (gossip/dissemination.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from edgekv.gossip.transport import TransportStats
from edgekv.node.dialer import Dialer
from edgekv.node.framed import FramedStream
from edgekv.node.limits import ByteBudget, NetLimits
from edgekv.node.sockio import direct_socket, send_now, tcp_min_rtt

__all__ = ["PeerSenders"]

logger = logging.getLogger("edgekv.tcp")

_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0


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
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # eviction (rule 4)
    used: bool = True  # sent to or sending since the last sweep (rule 4)


class PeerSenders:
    """The send side of a TCP transport (see the module docstring)."""

    def __init__(
        self,
        dialer: Dialer,
        *,
        stats: TransportStats,
        limits: NetLimits,
        budget: ByteBudget,
        queue_size: int,
        on_connected: Callable[[FramedStream, str], None],
    ) -> None:
        self.dialer = dialer
        self.stats = stats
        self.limits = limits
        self.budget = budget
        self.queue_size = queue_size
        self._on_connected = on_connected  # (connection, the address dialled)
        self._peers: dict[str, _Outbound] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self._sweeping = False

    def enqueue(self, peer: str, frame: bytes) -> None:
        """Queue `frame` for `peer` (rule 2: dropped and counted if it does not fit)."""
        peers = self._peers
        out = peers.pop(peer, None)
        if out is None:
            if self.tg is None:
                self.stats.dropped += 1
                return
            if len(peers) >= self.limits.max_senders:
                self._evict(peers[next(iter(peers))])
            send, recv = anyio.create_memory_object_stream[bytes](self.queue_size)
            out = _Outbound(peer, send, recv)
            self.tg.start_soon(self._writer, out)
            if not self._sweeping:
                self._sweeping = True
                self.tg.start_soon(self._sweep)
        peers[peer] = out  # the table's order: least recently sent to first (rule 4)
        out.used = True
        if out.conn is not None and not out.queued_bytes and self.budget.fits(len(frame)):
            # rule 1: idle, so written at once (and a rest the kernel leaves is sure to be queued)
            sock = direct_socket(out.conn.stream)
            if sock is not None:
                try:
                    sent = send_now(sock, frame)
                except OSError:
                    sent = 0  # the writer's send fails the same way, drops and closes
                if sent == len(frame):
                    return
                frame = frame[sent:]  # the rest goes first: nothing else is queued
        size = len(frame)
        if (
            out.queued_bytes and out.queued_bytes + size > self.limits.send_queue_bytes
        ) or not self.budget.fits(size):
            self.stats.dropped += 1
            return
        try:
            out.queue_send.send_nowait(frame)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.stats.dropped += 1
            return
        out.queued_bytes += size
        self.budget.take(size)

    async def _connect(self, out: _Outbound) -> FramedStream | None:
        if anyio.current_time() < out.retry_at:
            return None
        try:
            conn = await self.dialer.connect(out.address)
        except Exception as exc:
            out.backoff = min(max(out.backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
            out.retry_at = anyio.current_time() + out.backoff
            logger.info("%s: cannot reach %s: %r", self.dialer.address, out.address, exc)
            return None
        out.backoff = 0.0
        out.conn = conn
        self._on_connected(conn, out.address)
        assert self.tg is not None
        self.tg.start_soon(self._watch, out, conn)
        return conn

    async def _watch(self, out: _Outbound, conn: FramedStream) -> None:
        """Notice at once when the peer closes our outbound connection (it never sends on it)."""
        try:
            await conn.stream.receive(1)
            logger.warning(
                "%s: %s sent data on a send-only connection", self.dialer.address, out.address
            )
        except Exception:
            pass
        if out.conn is conn:
            out.conn = None
        await conn.abort()

    async def _writer(self, out: _Outbound) -> None:
        queue = out.queue_recv
        try:
            with out.scope:
                while True:
                    try:
                        frame = queue.receive_nowait()
                    except anyio.WouldBlock:
                        frame = await queue.receive()
                    try:
                        await self._send(out, frame)
                    except anyio.get_cancelled_exc_class():
                        self.stats.dropped += 1  # evicted (or closing) while it was sent
                        raise
                    finally:
                        out.queued_bytes -= len(frame)
                        self.budget.give(len(frame))
                        out.used = True
        except anyio.EndOfStream:  # `close`, or expired by `_sweep`
            pass
        finally:
            self._release(out)
            if out.conn is not None:
                await out.conn.abort()

    async def _sweep(self) -> None:
        """Rule 4: every `sender_idle_timeout`, close the senders unused since the last sweep
        (nothing queued or being sent: their writers wait for a frame, which never comes)."""
        while self._peers:
            await anyio.sleep(self.limits.sender_idle_timeout)
            peers = self._peers
            for out in [out for out in peers.values() if not (out.used or out.queued_bytes)]:
                self.stats.senders_expired += 1
                del peers[out.address]
                out.queue_send.close()
            for out in peers.values():
                out.used = False
        self._sweeping = False

    def _evict(self, out: _Outbound) -> None:
        """Rule 4: end `out`'s writer now (it gives back what it holds as it ends)."""
        self.stats.senders_evicted += 1
        del self._peers[out.address]
        out.queue_send.close()
        out.scope.cancel()

    def _release(self, out: _Outbound) -> None:
        """Take `out` out of the table; what it still holds is dropped (counted), given back."""
        if self._peers.get(out.address) is out:
            del self._peers[out.address]
        out.queue_send.close()
        self.stats.dropped += out.queue_recv.statistics().current_buffer_used
        out.queue_recv.close()
        if out.queued_bytes:
            self.budget.give(out.queued_bytes)
            out.queued_bytes = 0

    async def _send(self, out: _Outbound, frame: bytes) -> None:
        conn = out.conn or await self._connect(out)
        if conn is None:
            self.stats.dropped += 1
            return
        try:
            await conn.send_frame(frame)
        except Exception as exc:
            self.stats.dropped += 1
            logger.info("%s: send to %s failed: %r", self.dialer.address, out.address, exc)
            if out.conn is conn:
                out.conn = None
            await conn.abort()

    def link_rtts(self) -> dict[str, float]:
        """Each connected peer's lowest TCP round trip where the kernel knows it (seconds)."""
        out: dict[str, float] = {}
        for peer, o in self._peers.items():
            if o.conn is not None and (rtt := tcp_min_rtt(o.conn.stream)) > 0.0:
                out[peer] = rtt
        return out

    def disconnect(self, peer: str, until: float) -> None:
        """Close our connection to `peer` and send it nothing before `until`."""
        out = self._peers.get(peer)
        if out is not None:
            out.retry_at = max(out.retry_at, until)
            conn, out.conn = out.conn, None
            if conn is not None and self.tg is not None:
                self.tg.start_soon(conn.abort)

    def close(self) -> None:
        """Stop every writer (their queued frames are dropped)."""
        for out in self._peers.values():
            out.queue_send.close()
