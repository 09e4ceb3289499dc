"""A tiny deterministic discrete-event simulator over GossipNodes, with an outside checker.

Why: protocol tests and the gossip benchmark need many nodes, faults and minutes of virtual
time in a fraction of a second, replayable from a seed.  One heap of events, one seeded
Random; per-link latency `latency + jitter * U(0, 1)`, loss, duplication (which also reorders,
through jitter), partitions, crashes (the node stops, its replica survives) and restarts.
Every message goes through the real wire encoder and decoder, so what a node receives is what
it would receive from a socket, and byte counts are frame sizes.

The origin writes through `crdt.ops.plan` with a real sequencer (consecutive seqs), applies the
delta to its replica and hands it to `GossipNode.publish`.  The checker outside the nodes
records when each node's watermark first passes each seq, and asserts that no key's version
ever goes backwards at any node.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekv.crdt import META, Register, Replica, plan
from edgekv.crdt.ops import Op
from edgekv.gossip import GossipConfig, GossipNode
from edgekv.gossip.wire import decode_body, encode_frame, type_name

ORIGIN = "origin"


@dataclass
class Checker:
    """Safety and liveness bookkeeping, outside the nodes."""

    versions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    delivered: dict[tuple[str, int], float] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def observe(self, sim: Sim, addr: str) -> None:
        node = sim.nodes[addr]
        for ch in node.drain_changes():
            if ch.state is None:
                continue
            k = (addr, ch.store, ch.key)
            seq = ch.state.seq
            if seq < self.versions.get(k, 0):
                self.violations.append(
                    f"t={sim.now:.3f} {addr} {ch.store}/{ch.key} went back to {seq}"
                )
            self.versions[k] = max(seq, self.versions.get(k, 0))
        wm = node.replica.watermark
        old = self.watermarks.get(addr, 0)
        if wm > old:
            for s in range(old + 1, wm + 1):
                self.delivered.setdefault((addr, s), sim.now)
            self.watermarks[addr] = wm


class Sim:
    """Origin + `edges` edge nodes on a simulated network.  Times are seconds."""

    def __init__(
        self,
        edges: int,
        seed: int,
        *,
        latency: float = 0.1,
        jitter: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        config: GossipConfig | None = None,
        seeds_per_edge: int = 1,
        wire: bool | str = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency, self.jitter, self.loss, self.duplicate = latency, jitter, loss, duplicate
        self.config = config if config is not None else GossipConfig()
        # True: every message through the encoder and decoder; "size": encoded only to count
        # its bytes (the nodes get the original dict: faster for 1,000 nodes); False: neither
        self.wire = wire is True
        self.sizes = bool(wire)
        self._heap: list[tuple[float, int, str, Any]] = []
        self._n = 0
        self.nodes: dict[str, GossipNode] = {}
        self.up: set[str] = set()
        self.groups: dict[str, int] = {}
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.dropped = 0
        self.seq = 0
        self.acked: dict[int, float] = {}
        self.check = Checker()
        self.edges = [f"edge-{i}" for i in range(edges)]
        self._add(ORIGIN, "origin", [])
        for i, e in enumerate(self.edges):
            seeds = [ORIGIN] + [self.edges[j] for j in range(max(0, i - seeds_per_edge + 1), i)]
            self._add(e, "edge", seeds)
        self._tick_at: dict[str, float] = {}
        self.converged_at: float | None = None  # set by scenarios that measure convergence

    def _add(self, addr: str, role: str, seeds: list[str], replica: Replica | None = None) -> None:
        self.nodes[addr] = GossipNode(
            addr,
            replica if replica is not None else Replica(),
            role=role,
            seeds=seeds,
            config=self.config,
            rng=random.Random(self.rng.getrandbits(64)),
            origins=[ORIGIN],
        )

    @property
    def origin(self) -> GossipNode:
        return self.nodes[ORIGIN]

    # -- events ----------------------------------------------------------------------------------

    def _push(self, t: float, kind: str, payload: Any) -> None:
        self._n += 1
        heapq.heappush(self._heap, (t, self._n, kind, payload))

    def start(self, stagger: float = 0.0) -> None:
        for i, addr in enumerate(self.nodes):
            self._push(i * stagger, "start", addr)

    def start_one(self, addr: str, t: float) -> None:
        """Start one node at time `t` (a late joiner)."""
        self._push(t, "start", addr)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._push(t, "call", fn)

    def _schedule_tick(self, addr: str) -> None:
        if addr not in self.up:
            return
        t = self.nodes[addr].next_deadline
        if t == float("inf"):
            return
        t = max(t, self.now)
        if self._tick_at.get(addr, float("inf")) > t:
            self._tick_at[addr] = t
            self._push(t, "tick", addr)

    def _send(self, src: str, sends: list[Any]) -> None:
        for s in sends:
            msg = s.message
            name = type_name(msg["t"])
            self.messages[name] += 1
            if self.sizes:
                frame = encode_frame(msg)
                self.bytes[name] += len(frame)
                if self.wire:
                    msg = frame
            if s.peer not in self.up or self.groups.get(src, 0) != self.groups.get(s.peer, 0):
                self.dropped += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                delay = self.latency + self.jitter * self.rng.random()
                self._push(self.now + delay, "deliver", (src, s.peer, msg))

    def _after(self, addr: str) -> None:
        node = self.nodes[addr]
        job = node.take_job()  # a received snapshot: built inline (the runtime uses a thread)
        if job is not None:
            self._send(addr, node.finish_job(job, job.build(), self.now))
        self.check.observe(self, addr)
        self._schedule_tick(addr)

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_end:
            t, _, kind, payload = heapq.heappop(heap)
            self.now = t
            if kind == "deliver":
                src, dst, msg = payload
                if dst not in self.up or self.groups.get(src, 0) != self.groups.get(dst, 0):
                    self.dropped += 1
                    continue
                if self.wire:
                    msg = decode_body(msg[4:])
                self._send(dst, self.nodes[dst].receive(src, msg, t))
                self._after(dst)
            elif kind == "tick":
                if payload not in self.up or self._tick_at.get(payload) != t:
                    continue
                del self._tick_at[payload]
                node = self.nodes[payload]
                if node.next_deadline <= t:
                    self._send(payload, node.tick(t, wall_ms=int(t * 1000)))
                self._after(payload)
            elif kind == "start":
                self.up.add(payload)
                self._send(payload, self.nodes[payload].start(t))
                self._after(payload)
            else:
                payload()
        self.now = t_end

    # -- the origin's write path -----------------------------------------------------------------

    def write(self, store: str, op: Op) -> int | None:
        """Plan, sequence, apply and publish one op at the origin; returns its seq (acked now)."""
        o = self.origin
        current = o.replica.state(store, op.key)
        seq = self.seq + 1
        delta = plan(op, current, seq, int(self.now * 1000))
        if delta is None:
            return None
        self.seq = seq
        o.replica.apply(store, op.key, delta)
        self._send(ORIGIN, o.publish([(store, op.key, delta)], [(seq, seq)], self.now))
        self.acked[seq] = self.now
        self._after(ORIGIN)
        return seq

    def create_store(self, name: str) -> int:
        o = self.origin
        self.seq += 1
        delta = Register(self.seq, int(self.now * 1000), b"", None)
        o.replica.apply(META, name, delta)
        self._send(ORIGIN, o.publish([(META, name, delta)], [(self.seq, self.seq)], self.now))
        self.acked[self.seq] = self.now
        self._after(ORIGIN)
        return self.seq

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, addr: str) -> None:
        self.up.discard(addr)
        self._tick_at.pop(addr, None)

    def restart(self, addr: str) -> None:
        """A new GossipNode over the surviving replica (as if reloaded from disk)."""
        old = self.nodes[addr]
        self._add(addr, old.role, old.seeds, old.replica)
        self._push(self.now, "start", addr)

    def partition(self, *groups: list[str]) -> None:
        self.groups = {a: i + 1 for i, g in enumerate(groups) for a in g}

    def heal(self) -> None:
        self.groups = {}

    # -- checks ----------------------------------------------------------------------------------

    def live_edges(self) -> list[str]:
        return [e for e in self.edges if e in self.up]

    def converged(self) -> bool:
        root = self.origin.replica.root
        return all(self.nodes[e].replica.root == root for e in self.live_edges())

    def missing(self) -> list[tuple[str, int]]:
        """(edge, seq) for every acknowledged write a live edge has not reached."""
        return [
            (e, s)
            for e in self.live_edges()
            for s in self.acked
            if self.nodes[e].replica.watermark < s
        ]

    def propagation(self, seqs: list[int]) -> list[float]:
        """Per write: time from the origin's ack until the last edge's watermark passed it."""
        out = []
        for s in seqs:
            times = [self.check.delivered.get((e, s)) for e in self.edges]
            if all(t is not None for t in times):
                out.append(max(t for t in times if t is not None) - self.acked[s])
        return out

    def total_messages(self) -> int:
        return sum(self.messages.values())
