"""Simulated network: `Transport`s joined by a seeded fault policy, in trio virtual time.

Built for runs under `trio.testing.MockClock(autojump_threshold=0)` with 1,000+ nodes and
hundreds of thousands of messages: one delivery task owns a heap of (deliver_at, counter, ...)
entries instead of a task per message, and sleeps until the earliest deadline (a new earlier
deadline moves its cancel scope's deadline).  Every message is encoded with `encode_frame` (so
it is wire-valid and its byte count is the real frame size) and each delivered copy is decoded
from that frame, so receivers never share mutable objects with senders (nor with each other).
The decode skips `decode_body`'s validation: the frame was validated by `encode_frame` here.  The same seed and the
same sequence of sends give the same deliveries.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import anyio
import cbor2
import trio

from edgekv.gossip.transport import Envelope, TransportStats
from edgekv.gossip.wire import HEADER_SIZE, Message, encode_frame, type_name
from edgekv.node.faults import LinkFaults

__all__ = ["SimNetwork", "SimTransport"]

# A sending or receiving task yields to the scheduler at least once per this many calls.
YIELD_EVERY = 64

# (deliver_at, counter, dst, dst epoch, src, frame, sender stats)
_Entry = tuple[float, int, str, int, str, bytes, TransportStats]


class SimTransport:
    """One node's endpoint on a `SimNetwork` (implements `edgekv.gossip.transport.Transport`).

    The inbound queue is unbounded: the simulator models the network, not socket buffers.
    """

    def __init__(self, network: SimNetwork, address: str) -> None:
        self._network = network
        self._address = address
        self.stats = TransportStats()
        self._queue: deque[Envelope] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._unyielded = 0  # calls since this endpoint last let other tasks run
        self.closed = False

    @property
    def address(self) -> str:
        return self._address

    def link_rtts(self) -> dict[str, float]:
        """None: the core's own probes measure the simulated links."""
        return {}

    @property
    def pending(self) -> int:
        """Messages delivered but not yet received."""
        return len(self._queue)

    async def send(self, peer: str, message: Message) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        frame = encode_frame(message, self._network.max_frame_size)
        await self._checkpoint()
        self.stats.record_sent(type_name(message["t"]), len(frame))
        self._network._route(self, peer, frame)

    async def receive(self) -> Envelope:
        if self._queue:
            await self._checkpoint()  # before popping: a cancellation here loses nothing
        while not self._queue:
            if self.closed:
                raise anyio.ClosedResourceError
            self._unyielded = 0
            await self._lot.park()
        return self._queue.popleft()

    async def _checkpoint(self) -> None:
        """A cancel point always, a schedule point only every `YIELD_EVERY` calls.

        Sends go to the delivery heap and receives drain a finite queue, so a node that skips
        the yield cannot starve the others; skipping it saves a scheduler pass per message.
        """
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous close: pending receivers wake up with `ClosedResourceError`."""
        if not self.closed:
            self.closed = True
            self._queue.clear()
            self._lot.unpark_all()
            self._network._closed(self)

    def _deliver(self, envelope: Envelope) -> None:
        self._queue.append(envelope)
        self._lot.unpark()


class SimNetwork:
    """Delivers messages between `SimTransport`s with delays and faults from a `LinkFaults`.

    `crash(address)` drops the node's queue and every message to it until `restore(address)`;
    messages still in flight when it crashed are lost even if it is restored before they land.
    A crashed node's own sends are lost too.  Start `run()` in a nursery before sending.
    """

    def __init__(
        self,
        faults: LinkFaults | None = None,
        *,
        max_frame_size: int = 16 << 20,
        resolution: float = 0.0,
    ) -> None:
        self.faults = faults if faults is not None else LinkFaults()
        # Delivery times are rounded up to a multiple of `resolution` (0 = exact): big runs
        # then cost one scheduler tick per time slot instead of one per message.
        self.resolution = resolution
        self.max_frame_size = max_frame_size
        self._nodes: dict[str, SimTransport] = {}
        self._retired = TransportStats()  # counts of replaced transports
        self._crashed: set[str] = set()
        self._epoch: dict[str, int] = {}
        self._heap: list[_Entry] = []
        self._counter = 0
        self._scope: trio.CancelScope | None = None
        self._idle: trio.Event | None = None
        self.delivered = 0

    # --- membership -------------------------------------------------------------------------

    def transport(self, address: str) -> SimTransport:
        """A new endpoint at `address` (replacing a closed or crashed one at the same address)."""
        old = self._nodes.get(address)
        if old is not None:
            if not old.closed and address not in self._crashed:
                raise ValueError(f"address {address!r} is already in use")
            old.close()
            self._retired.merge(old.stats)
        t = SimTransport(self, address)
        self._nodes[address] = t
        self._epoch.setdefault(address, 0)
        return t

    def addresses(self) -> list[str]:
        return list(self._nodes)

    def crash(self, address: str) -> None:
        """The node stops receiving: its queue and all messages in flight to it are lost."""
        self._crashed.add(address)
        self._epoch[address] = self._epoch.get(address, 0) + 1
        node = self._nodes.get(address)
        if node is not None:
            node.stats.dropped += len(node._queue)
            node._queue.clear()

    def restore(self, address: str) -> None:
        """Messages sent from now on reach `address` again."""
        self._crashed.discard(address)

    def is_up(self, address: str) -> bool:
        node = self._nodes.get(address)
        return node is not None and not node.closed and address not in self._crashed

    def stats(self) -> TransportStats:
        """All traffic so far, summed over every endpoint (including replaced ones)."""
        out = self._retired.copy()
        for t in self._nodes.values():
            out.merge(t.stats)
        return out

    @property
    def in_flight(self) -> int:
        return len(self._heap)

    # --- delivery ---------------------------------------------------------------------------

    def _closed(self, node: SimTransport) -> None:
        if self._nodes.get(node.address) is node:
            self._epoch[node.address] = self._epoch.get(node.address, 0) + 1

    def _route(self, sender: SimTransport, dst: str, frame: bytes) -> None:
        src = sender.address
        if src in self._crashed or not self.is_up(dst):
            sender.stats.dropped += 1
            return
        now = trio.current_time()
        delays = self.faults.route(src, dst, now)
        if not delays:
            sender.stats.dropped += 1
            return
        epoch = self._epoch[dst]
        for delay in delays:
            at = now + max(delay, 0.0)
            self._counter += 1
            heapq.heappush(self._heap, (at, self._counter, dst, epoch, src, frame, sender.stats))
            if self._scope is not None and at < self._scope.deadline:
                self._scope.deadline = self._slot(at)

    def _slot(self, at: float) -> float:
        res = self.resolution
        if res <= 0:
            return at
        # max(): float rounding may put ceil(at / res) * res a hair below `at`, and a slot
        # before the entry's time would wake the loop again and again at the same instant.
        return max(at, math.ceil(at / res) * res)

    def _deliver_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, dst, epoch, src, frame, sender_stats = heapq.heappop(heap)
            node = self._nodes.get(dst)
            if node is None or node.closed or self._epoch[dst] != epoch or dst in self._crashed:
                sender_stats.dropped += 1
                continue
            # Our own encode_frame validated this frame: decode it without validating again.
            message = cbor2.loads(memoryview(frame)[HEADER_SIZE:])
            node.stats.record_received(type_name(message["t"]), len(frame))
            node._deliver(Envelope(src, message))
            self.delivered += 1
        if not heap and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def settle(self) -> None:
        """Wait (in virtual time) until no message is in flight: all have landed or been lost."""
        if self._heap:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def run(self) -> None:
        """The delivery loop; runs until cancelled."""
        try:
            while True:
                self._deliver_due(trio.current_time())
                deadline = self._slot(self._heap[0][0]) if self._heap else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
        finally:
            self._scope = None
