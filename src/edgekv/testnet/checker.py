"""An independent convergence checker: what each edge *serves*, judged against what was acked.

It never looks inside a node.  A probe (`probe_once` / `probe_loop`) reads every edge through
the public read API (`node.open(store).get(key)` in-process, the admin HTTP GET across
processes) and feeds what it saw to `ConvergenceChecker.observe`.  Every write of a workload
carries a unique value, so the bytes an edge serves identify the write, and through the
origin's acknowledgement its version: no version metadata is needed from the edge.

Theory of operation
1. `issue(store, key, value, now)` registers a write before it is sent; `ack(write, seq, now)`
   records the origin's acknowledgement.  Only acknowledged writes are owed to every edge.
2. An edge that serves write w for a key holds every acked write to that key with seq <= w.seq
   (last-writer-wins by seq): each such write is marked as *reached* at that edge, at the time
   of the observation (first time only).  The time from ack to reached is a propagation sample.
   An observation made before the ack arrived counts at the ack time (latency 0).
3. Monotonicity: the seq an edge serves for a key must never decrease, and a key it has served
   must not read as absent again (the workload never deletes and sets no TTL).  A write served
   before its ack arrived has no seq yet: the checker keeps the highest seq the edge served
   before that observation and the lowest it served after, and judges both once the ack
   gives the seq (the order of observations counts, not the order of acks).  A crash
   legitimately forgets: without a data_dir everything, with one the tail not yet flushed
   (edges persist in batches); the runner calls `forget(edge)` on restart, which resets the
   baseline (not the reached times).  A reader that cannot reach its edge (a process being
   killed) raises `EdgeUnavailable`, and that edge is skipped for the round.
4. `final_check` re-reads every key at every live edge after the run: each must serve the
   newest acked write of that key (or a write whose ack was lost, which the origin may well
   have committed after it).  Anything else is a lost write.  Together with the digest
   comparison of the harness this is the `nothing_lost` assertion.
5. Every propagation figure (p50/p99/max to each edge, to the last edge) comes from here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

__all__ = [
    "ConvergenceChecker",
    "EdgeUnavailable",
    "Violation",
    "WriteRecord",
    "percentile",
    "probe_loop",
    "probe_once",
    "probe_once_batched",
]

KeyRef = tuple[str, str]  # (store, key)
_NO_SEQ = 1 << 63  # "nothing served since"
# A reader for one edge: (store, key) -> served bytes (sync or async).
SyncRead = Callable[[str, str], bytes | None]
AsyncRead = Callable[[str, str], Awaitable[bytes | None]]
# Many keys of one store at once: (store, keys) -> served values, in order.
BatchRead = Callable[[str, list[str]], Awaitable[list[bytes | None]]]


class EdgeUnavailable(Exception):
    """A reader could not ask its edge (e.g. the process is being killed): no observation."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of `values`; 0.0 for an empty sequence."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return float(ordered[min(int(rank), len(ordered)) - 1])


@dataclass(slots=True)
class WriteRecord:
    """One write of the workload and what became of it."""

    id: int
    store: str
    key: str
    value: bytes
    issued_at: float
    acked_at: float | None = None
    seq: int | None = None
    reached: dict[str, float] = field(default_factory=dict)  # edge -> first time served
    early: dict[str, float] = field(default_factory=dict)  # served before the ack arrived
    # edge -> [highest seq it served before the early observation, lowest seq after it]:
    # judged against this write's seq once the ack tells it (rule 3)
    early_window: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken guarantee, with enough detail to replay it."""

    kind: str  # "backwards" | "lost" | "unknown_value"
    edge: str
    store: str
    key: str
    detail: str
    at: float


class ConvergenceChecker:
    """Records acked writes and edge observations; judges delivery, monotonicity, propagation."""

    def __init__(self, edges: Iterable[str] = ()) -> None:
        self.writes: list[WriteRecord] = []
        self.violations: list[Violation] = []
        self._by_value: dict[bytes, WriteRecord] = {}
        self._acked_by_key: dict[KeyRef, list[WriteRecord]] = {}  # ascending seq
        self._edges: dict[str, bool] = {}  # edge -> live
        self._pending: dict[str, dict[KeyRef, int]] = {}  # edge -> key -> lowest unreached seq
        self._last: dict[str, dict[KeyRef, int]] = {}  # edge -> key -> last served seq
        # edge -> key -> writes it served before their ack (their early_window is open)
        self._early_open: dict[str, dict[KeyRef, list[WriteRecord]]] = {}
        for e in edges:
            self.add_edge(e)

    # --- membership -----------------------------------------------------------------------

    def add_edge(self, edge: str) -> None:
        if edge in self._edges:
            return
        self._edges[edge] = True
        self._last[edge] = {}
        pending: dict[KeyRef, int] = {}
        for ref, writes in self._acked_by_key.items():
            seqs = [w.seq for w in writes if w.seq is not None and edge not in w.reached]
            if seqs:
                pending[ref] = min(seqs)
        self._pending[edge] = pending

    @property
    def edges(self) -> list[str]:
        return list(self._edges)

    def live_edges(self) -> list[str]:
        return [e for e, live in self._edges.items() if live]

    def set_live(self, edge: str, live: bool) -> None:
        """A crashed edge is not owed anything until it is live again."""
        self._edges[edge] = live

    def forget(self, edge: str) -> None:
        """The edge restarted without durable state: reset its monotonicity baseline."""
        self._last[edge] = {}
        for writes in self._early_open.pop(edge, {}).values():
            for w in writes:  # what it served before the crash is not judged against after
                w.early_window.pop(edge, None)

    # --- writes -----------------------------------------------------------------------------

    def issue(self, store: str, key: str, value: bytes, now: float) -> WriteRecord:
        """Register a write about to be sent.  Values must be unique across the run."""
        if value in self._by_value:
            raise ValueError(f"value {value!r} was already issued: workload values must be unique")
        w = WriteRecord(len(self.writes), store, key, value, now)
        self.writes.append(w)
        self._by_value[value] = w
        return w

    def ack(self, write: WriteRecord, seq: int, now: float) -> None:
        """The origin acknowledged `write` with version `seq`."""
        write.seq = seq
        write.acked_at = now
        ref = (write.store, write.key)
        acked = self._acked_by_key.setdefault(ref, [])
        acked.append(write)
        acked.sort(key=lambda w: w.seq or 0)
        for edge, pend in self._pending.items():
            if edge not in write.reached:
                pend[ref] = min(pend.get(ref, seq), seq)
        for edge in write.early:
            # The edge served it before we heard the ack: it holds every older write as well.
            self._mark_reached(edge, ref, seq, now)
            window = write.early_window.pop(edge, None)
            still_open = self._early_open.get(edge, {}).get(ref)
            if still_open is not None and write in still_open:
                still_open.remove(write)
            if window is None:
                continue
            before, after = window
            if before > seq:
                self._violate("backwards", edge, ref, f"served seq {before}, then seq {seq}", now)
            if after < seq:
                self._violate("backwards", edge, ref, f"served seq {seq}, then seq {after}", now)
            last = self._last.setdefault(edge, {})
            if seq > last.get(ref, 0):
                last[ref] = seq

    @property
    def acked(self) -> list[WriteRecord]:
        return [w for w in self.writes if w.seq is not None]

    # --- observations -----------------------------------------------------------------------

    def to_read(self, edge: str) -> list[KeyRef]:
        """Keys worth reading at `edge` now: those with acked writes it has not served yet."""
        return list(self._pending.get(edge, ()))

    def served_keys(self, edge: str) -> list[KeyRef]:
        """Keys `edge` has served a tracked value for (re-read to check monotonicity)."""
        return list(self._last.get(edge, ()))

    def all_keys(self) -> list[KeyRef]:
        return list(self._acked_by_key)

    def observe(self, edge: str, store: str, key: str, value: bytes | None, now: float) -> None:
        """`edge` served `value` for store/key at time `now`."""
        ref = (store, key)
        if value is None:
            last = self._last.get(edge, {}).get(ref)
            if last is not None:
                self._violate("backwards", edge, ref, f"served seq {last}, now absent", now)
            return
        w = self._by_value.get(value)
        if w is None or (w.store, w.key) != ref:
            self._violate("unknown_value", edge, ref, f"served {value[:40]!r}", now)
            return
        if w.seq is None:
            if edge not in w.early:
                w.early[edge] = now
                w.early_window[edge] = [self._last.get(edge, {}).get(ref, 0), _NO_SEQ]
                self._early_open.setdefault(edge, {}).setdefault(ref, []).append(w)
            # Its ack has not come (yet), but every write acked before it was issued has a
            # lower seq: the edge holds those.
            older = [
                a.seq
                for a in self._acked_by_key.get(ref, ())
                if a.acked_at is not None and a.acked_at <= w.issued_at
            ]
            if older and older[-1] is not None:
                self._mark_reached(edge, ref, older[-1], now)
            return
        for e in self._early_open.get(edge, {}).get(ref, ()):
            window = e.early_window.get(edge)
            if window is not None and w.seq < window[1]:
                window[1] = w.seq
        self._check_monotonic(edge, ref, w.seq, now)
        self._mark_reached(edge, ref, w.seq, now)

    def _check_monotonic(self, edge: str, ref: KeyRef, seq: int, now: float) -> None:
        last = self._last.setdefault(edge, {})
        prev = last.get(ref)
        if prev is not None and seq < prev:
            self._violate("backwards", edge, ref, f"served seq {prev}, then seq {seq}", now)
        if prev is None or seq > prev:
            last[ref] = seq

    def _mark_reached(self, edge: str, ref: KeyRef, seq: int, now: float) -> None:
        pend = self._pending.get(edge)
        if pend is None or ref not in pend or pend[ref] > seq:
            return
        remaining = None
        for w in self._acked_by_key.get(ref, ()):
            assert w.seq is not None
            if w.seq <= seq:
                if edge not in w.reached:
                    w.reached[edge] = max(now, w.acked_at or now)
            elif edge not in w.reached and remaining is None:
                remaining = w.seq
        if remaining is None:
            del pend[ref]
        else:
            pend[ref] = remaining

    def _violate(self, kind: str, edge: str, ref: KeyRef, detail: str, now: float) -> None:
        self.violations.append(Violation(kind, edge, ref[0], ref[1], detail, now))

    # --- verdicts ---------------------------------------------------------------------------

    def final_check(self, read: Mapping[str, SyncRead], now: float) -> list[Violation]:
        """Every live edge must serve the newest acked write of every key.  Returns the losses."""
        lost: list[Violation] = []
        for edge in self.live_edges():
            reader = read.get(edge)
            if reader is None:
                continue
            for ref, writes in self._acked_by_key.items():
                newest = writes[-1]
                try:
                    value = reader(*ref)
                except EdgeUnavailable:
                    value = None  # a live edge that cannot answer at the end has lost it
                self.observe(edge, ref[0], ref[1], value, now)
                served = self._by_value.get(value) if value is not None else None
                if served is not None and served.seq is None and (served.store, served.key) == ref:
                    continue  # a write whose ack never came (timeout) yet committed: newer, fine
                if value != newest.value:
                    got = f"seq {served.seq}" if served is not None else repr(value)
                    v = Violation(
                        "lost", edge, ref[0], ref[1], f"newest seq {newest.seq}, served {got}", now
                    )
                    lost.append(v)
        self.violations.extend(lost)
        return lost

    def unreached(self) -> dict[str, int]:
        """Live edge -> number of acked writes it never served (0 everywhere = all delivered)."""
        out = {}
        for edge in self.live_edges():
            out[edge] = sum(1 for w in self.acked if edge not in w.reached)
        return out

    def latencies(self) -> list[float]:
        """Ack-to-edge propagation samples (seconds), one per (write, edge) reached."""
        out: list[float] = []
        for w in self.writes:
            if w.acked_at is None:
                continue
            out.extend(t - w.acked_at for t in w.reached.values())
        return out

    def to_last_edge(self, edges: Iterable[str] | None = None) -> list[float]:
        """Per acked write: seconds from ack until the last of `edges` (default all) served it.

        Writes some edge never served are left out (they are reported as unreached instead).
        """
        names = list(edges) if edges is not None else self.edges
        out = []
        for w in self.writes:
            if w.acked_at is None or not names:
                continue
            times = [w.reached.get(e) for e in names]
            if all(t is not None for t in times):
                out.append(max(t for t in times if t is not None) - w.acked_at)
        return out

    def summary(self) -> dict[str, object]:
        """Propagation figures and verdicts, JSON-ready."""
        lat = self.latencies()
        last = self.to_last_edge()
        return {
            "writes_issued": len(self.writes),
            "writes_acked": len(self.acked),
            "edges": len(self._edges),
            "propagation": _stats(lat),
            "propagation_to_last_edge": _stats(last),
            "unreached": sum(self.unreached().values()),
            "violations": len(self.violations),
        }


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), 6),
        "p99": round(percentile(values, 99), 6),
        "max": round(max(values), 6) if values else 0.0,
    }


def probe_once(
    checker: ConvergenceChecker, readers: Mapping[str, SyncRead], now: float, *, full: bool = False
) -> int:
    """Read, at every live edge, the keys it still owes (all served keys too if `full`).

    Returns the number of reads.  Reader exceptions other than edgekv errors propagate.
    """
    reads = 0
    for edge in checker.live_edges():
        reader = readers.get(edge)
        if reader is None:
            continue
        keys = checker.to_read(edge)
        if full:
            keys = list(dict.fromkeys(keys + checker.served_keys(edge)))
        try:
            for store, key in keys:
                checker.observe(edge, store, key, reader(store, key), now)
                reads += 1
        except EdgeUnavailable:
            continue
    return reads


async def probe_once_batched(
    checker: ConvergenceChecker, readers: Mapping[str, BatchRead], *, full: bool = False
) -> int:
    """`probe_once` over batch readers (one HTTP request per edge and store, to edge
    processes): every edge is read concurrently, the event loop goes on meanwhile (acks keep
    arriving), and each observation is timed when its batch returns."""
    reads = 0

    async def probe(edge: str, reader: BatchRead) -> None:
        nonlocal reads
        keys = checker.to_read(edge)
        if full:
            keys = list(dict.fromkeys(keys + checker.served_keys(edge)))
        by_store: dict[str, list[str]] = {}
        for store, key in keys:
            by_store.setdefault(store, []).append(key)
        try:
            for store, names in by_store.items():
                values = await reader(store, names)
                now = anyio.current_time()
                for key, value in zip(names, values, strict=True):
                    checker.observe(edge, store, key, value, now)
                reads += len(names)
        except EdgeUnavailable:
            pass

    async with anyio.create_task_group() as tg:
        for edge in checker.live_edges():
            reader = readers.get(edge)
            if reader is not None:
                tg.start_soon(probe, edge, reader)
    return reads


async def probe_loop(
    checker: ConvergenceChecker,
    readers: Callable[[], Mapping[str, SyncRead]],
    *,
    interval: float = 0.01,
    full_every: int = 50,
    batch_readers: Callable[[], Mapping[str, BatchRead]] | None = None,
) -> None:
    """Probe every `interval` seconds (anyio time, virtual under MockClock) until cancelled.

    `readers` is called each round, so crashed and restarted edges are picked up;
    `batch_readers`, if given, is used instead (see `probe_once_batched`).
    """
    rounds = 0
    while True:
        rounds += 1
        full = rounds % full_every == 0
        if batch_readers is not None:
            await probe_once_batched(checker, batch_readers(), full=full)
        else:
            probe_once(checker, readers(), anyio.current_time(), full=full)
        await anyio.sleep(interval)
