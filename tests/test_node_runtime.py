"""NodeRuntime: request/response, error mapping, timer wake-ups, change feed, garbage tolerance.

Driven over the simulated network in trio virtual time (MockClock autojump), with a tiny fake
gossip core so the runtime's own behaviour is tested in isolation.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from edgekv.crdt import Change, Delta, Register, Replica
from edgekv.errors import OriginUnavailable, RemoteProtocolError, StoreNotFound, WrongKind
from edgekv.gossip.wire import Message, MsgType
from edgekv.node.runtime import NodeRuntime
from edgekv.testnet.simnet import SimNetwork


@dataclass(frozen=True)
class Send:
    peer: str
    message: Message


class FakeCore:
    """Records what the runtime feeds it; ticks every `period` seconds (or never: inf)."""

    def __init__(self, period: float = math.inf) -> None:
        self.replica = Replica()
        self.counters: Counter[str] = Counter()
        self.period = period
        self.deadline = math.inf
        self.received: list[tuple[str, Message, float]] = []
        self.ticks: list[float] = []
        self.changes: list[Change] = []

    @property
    def next_deadline(self) -> float:
        return self.deadline

    def start(self, now: float) -> list[Send]:
        self.deadline = now + self.period
        return []

    def receive(self, peer: str, message: Message, now: float) -> list[Send]:
        if message.get("bad"):
            raise RemoteProtocolError("garbage")
        self.received.append((peer, message, now))
        if "wake_in" in message:
            self.deadline = now + message["wake_in"]
        if "put" in message:
            key, seq = message["put"]
            state = self.replica.apply("s", key, Register(seq, 1000, b"v"))
            if state is not None:
                self.changes.append(Change("s", key, state))
        return []

    def tick(self, now: float, wall_ms: int | None = None) -> list[Send]:
        self.ticks.append(now)
        self.deadline = now + self.period
        return []

    def publish(
        self, items: list[tuple[str, str, Delta]], covers: list[tuple[int, int]], now: float
    ) -> list[Send]:
        return [Send(p, {"t": int(MsgType.PUSH), "n": len(items)}) for p in ("b",)]

    def drain_changes(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out

    def peers(self) -> Mapping[str, Any]:
        return {}

    def leave(self, now: float) -> list[Send]:
        return []

    def forget(self, address: str, new: str | None = None) -> None:
        pass

    def note_link_rtt(self, peer: str, rtt: float) -> None:
        pass

    staging = False

    def take_job(self) -> None:
        return None

    def finish_job(self, job: Any, result: Any, now: float) -> list[Send]:
        return []


@pytest.fixture
async def net() -> AsyncIterator[SimNetwork]:
    network = SimNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.run)
        yield network
        nursery.cancel_scope.cancel()


async def _pair(
    nursery: trio.Nursery, net: SimNetwork, handler: Any = None, period: float = math.inf
) -> tuple[NodeRuntime, NodeRuntime]:
    a = NodeRuntime(net.transport("a"), FakeCore(period), wall_ms=lambda: 1500)
    b = NodeRuntime(net.transport("b"), FakeCore(period), on_request=handler, wall_ms=lambda: 1500)
    await nursery.start(a.run)
    await nursery.start(b.run)
    return a, b


async def test_request_response_and_typed_errors(net: SimNetwork, autojump_clock: Any) -> None:
    async def handler(peer: str, msg: Message) -> Message:
        assert peer == "a"
        if msg["op"] == "missing":
            raise StoreNotFound("no such store: 'x'")
        if msg["op"] == "kind":
            raise WrongKind("zset, not bytes")
        if msg["op"] == "crash":
            raise ZeroDivisionError
        await trio.sleep(0.5)
        return {"echo": msg["op"], "seq": 7}

    async with trio.open_nursery() as nursery:
        a, _b = await _pair(nursery, net, handler)
        reply = await a.request("b", {"op": "put"}, timeout=2)
        assert reply["echo"] == "put" and reply["seq"] == 7 and reply["t"] == int(MsgType.RESPONSE)
        with pytest.raises(StoreNotFound, match="no such store"):
            await a.request("b", {"op": "missing"}, timeout=2)
        with pytest.raises(WrongKind):
            await a.request("b", {"op": "kind"}, timeout=2)
        with pytest.raises(Exception, match="internal error") as info:
            await a.request("b", {"op": "crash"}, timeout=2)
        assert type(info.value).__name__ == "EdgeKVError"
        # concurrent requests each get their own reply
        results: dict[int, Message] = {}

        async def one(i: int) -> None:
            results[i] = await a.request("b", {"op": f"w{i}"}, timeout=2)

        async with trio.open_nursery() as inner:
            for i in range(20):
                inner.start_soon(one, i)
        assert {r["echo"] for r in results.values()} == {f"w{i}" for i in range(20)}
        assert not a._pending
        nursery.cancel_scope.cancel()


async def test_request_timeout_is_origin_unavailable(net: SimNetwork, autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        a, _ = await _pair(nursery, net)
        net.crash("b")
        start = trio.current_time()
        with pytest.raises(OriginUnavailable, match="within 3 s"):
            await a.request("b", {"op": "put"}, timeout=3)
        assert trio.current_time() - start == pytest.approx(3)
        # a node without a request handler answers with an error, not silence
        net.restore("b")
        with pytest.raises(Exception, match="does not serve requests"):
            await a.request("b", {"op": "put"}, timeout=3)
        nursery.cancel_scope.cancel()


async def test_reply_from_another_peer_is_ignored(net: SimNetwork, autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        a, _ = await _pair(nursery, net)
        net.crash("b")  # b never answers; c forges a RESPONSE with the id a uses
        forger = net.transport("c")

        async def forge() -> None:
            await trio.sleep(0.01)
            await forger.send("a", {"t": int(MsgType.RESPONSE), "id": 1, "seq": 1})

        nursery.start_soon(forge)
        with pytest.raises(OriginUnavailable):
            await a.request("b", {"op": "put"}, timeout=1)
        assert a.metrics.events["unmatched_responses"] == 1
        nursery.cancel_scope.cancel()


async def test_garbage_is_counted_not_fatal(net: SimNetwork, autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        a, _b = await _pair(nursery, net)
        peer = net.transport("c")
        await peer.send("a", {"t": int(MsgType.PUSH), "bad": True})
        await peer.send("a", {"t": int(MsgType.HELLO)})
        await peer.send("a", {"t": int(MsgType.REQUEST)})  # no id
        await peer.send("a", {"t": int(MsgType.RESPONSE), "id": "x"})
        await peer.send("a", {"t": int(MsgType.PUSH), "ok": 1})
        await net.settle()
        await trio.sleep(0.01)
        core = a.gossip
        assert isinstance(core, FakeCore)
        assert [m.get("ok") for _, m, _ in core.received] == [1]
        assert a.metrics.events["protocol_errors"] == 3
        assert a.metrics.events["unmatched_responses"] == 1
        assert a.running
        nursery.cancel_scope.cancel()


async def test_timer_ticks_and_wakes_early(net: SimNetwork, autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        a, _ = await _pair(nursery, net, period=1.0)
        t0 = trio.current_time()
        await trio.sleep(3.5)
        core = a.gossip
        assert isinstance(core, FakeCore)
        assert [round(t - t0, 6) for t in core.ticks] == [1.0, 2.0, 3.0]
        # a receive that moves the deadline earlier wakes the timer loop at once
        core.period = 100.0
        await trio.sleep(0.5)  # tick at 4.0 sets the next deadline to 104
        peer = net.transport("c")
        await peer.send("a", {"t": int(MsgType.PUSH), "wake_in": 0.25})
        sent_at = trio.current_time()
        await trio.sleep(1)
        assert core.ticks[-1] == pytest.approx(sent_at + 0.25)
        nursery.cancel_scope.cancel()


async def test_link_round_trips_are_fed_to_the_core(
    net: SimNetwork, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport that measures its links' round trips (TCP: `link_rtts`) has them handed to
    the core (`note_link_rtt`) about once a second, where they size the push windows."""
    noted: list[tuple[str, float, float]] = []

    class LinkCore(FakeCore):
        def note_link_rtt(self, peer: str, rtt: float) -> None:
            noted.append((peer, rtt, trio.current_time()))

    transport = net.transport("a")
    monkeypatch.setattr(transport, "link_rtts", lambda: {"b": 0.0002})
    runtime = NodeRuntime(transport, LinkCore(0.1), wall_ms=lambda: 1500)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        t0 = trio.current_time()
        await trio.sleep(3.05)
        nursery.cancel_scope.cancel()
    assert [(p, r) for p, r, _ in noted] == [("b", 0.0002)] * 3  # at the first tick, then 1/s
    times = [t - t0 for *_, t in noted]
    assert times[0] == pytest.approx(0.1)
    assert all(1.0 <= b - a <= 1.1 + 1e-6 for a, b in itertools.pairwise(times))


async def test_change_feed_listeners_subscribers_and_latency(
    net: SimNetwork, autojump_clock: Any
) -> None:
    async with trio.open_nursery() as nursery:
        a, _ = await _pair(nursery, net)
        seen: list[list[Change]] = []
        a.add_listener(seen.append)
        stream = a.subscribe(max_buffer=2)
        peer = net.transport("c")
        for seq in (1, 2, 3):
            await peer.send("a", {"t": int(MsgType.PUSH), "put": [f"k{seq}", seq]})
        await net.settle()
        await trio.sleep(0.01)
        assert [[c.key for c in batch] for batch in seen] == [["k1"], ["k2"], ["k3"]]
        # the subscriber buffered 2 batches, overflowed on the third and was closed
        async with stream:
            got = [batch async for batch in stream]
        assert [[c.key for c in b] for b in got] == [["k1"], ["k2"]]
        assert a.metrics.events["subscriber_overflow"] == 1
        # written_at 1000 applied at wall 1500 -> 500 ms, three times
        hist = a.metrics.propagation_ms
        assert hist.count == 3 and hist.sum == 1500
        assert hist.quantile(0.5) == 500
        # apply_local feeds the same listeners
        a.apply_local([("s", "k9", Register(9, 1400, b"x"))])
        assert [c.key for c in seen[-1]] == ["k9"]
        nursery.cancel_scope.cancel()


async def test_publish_sends_and_run_ends_when_transport_closes(
    net: SimNetwork, autojump_clock: Any
) -> None:
    async with trio.open_nursery() as nursery:
        a, b = await _pair(nursery, net)
        await a.publish([("s", "k", Register(1, 1, b"v"))], [(1, 1)])
        await net.settle()
        await trio.sleep(0.01)
        core_b = b.gossip
        assert isinstance(core_b, FakeCore)
        assert [m["n"] for _, m, _ in core_b.received] == [1]
        await b.transport.aclose()
        await trio.sleep(0.01)
        assert not b.running
        nursery.cancel_scope.cancel()


async def test_sends_leave_in_the_order_the_core_made_them(
    net: SimNetwork, autojump_clock: Any
) -> None:
    # The receive loop sends a batch while the timer loop, woken by that receive, sends the
    # core's next message: without the send lock the two batches interleaved (a transport
    # yields inside `send`), and a peer taking a snapshot saw chunk n+4 before n+1, took it
    # for a gap and resumed (8,429 resumes in one 1M-key transfer when chunks came from tick)
    class Numbering(FakeCore):
        n = 0

        def _next(self, k: int) -> list[Send]:
            out = [Send("b", {"t": int(MsgType.PUSH), "n": self.n + i + 1}) for i in range(k)]
            self.n += k
            return out

        def receive(self, peer: str, message: Message, now: float) -> list[Send]:
            if "burst" in message:
                self.deadline = now  # the timer loop's next turn makes the next one
                return self._next(message["burst"])
            return super().receive(peer, message, now)

        def tick(self, now: float, wall_ms: int | None = None) -> list[Send]:
            self.deadline = math.inf
            return self._next(1)

    async with trio.open_nursery() as nursery:
        a = NodeRuntime(net.transport("a"), Numbering(), wall_ms=lambda: 1500)
        b = NodeRuntime(net.transport("b"), FakeCore(), wall_ms=lambda: 1500)
        await nursery.start(a.run)
        await nursery.start(b.run)
        await net.transport("c").send("a", {"t": int(MsgType.PUSH), "burst": 100})
        await net.settle()
        await trio.sleep(0.1)
        core = b.gossip
        assert isinstance(core, FakeCore)
        assert [m["n"] for _, m, _ in core.received] == list(range(1, 102))
        nursery.cancel_scope.cancel()
