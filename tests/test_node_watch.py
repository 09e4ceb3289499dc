"""Watch: every applied version exactly once, in version order per key, bounded buffers."""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest
import trio

from edgekv.crdt import Change, Delete, Put, Register, Replica, ZAdd
from edgekv.crdt.codec import decode_delta, encode_delta
from edgekv.crdt.version import Version
from edgekv.errors import StoreNotFound
from edgekv.node.watch import EdgeStore, WatchEvent, WatchHub, WatchOverflow
from test_node_persistence import Writer


def _frozen(changes: list[Change]) -> list[Change]:
    """Copies of the changed states as they are now (zset/bloom states mutate in place)."""
    return [
        Change(c.store, c.key, None if c.state is None else decode_delta(encode_delta(c.state)))  # type: ignore[arg-type]
        for c in changes
    ]


def _history(n: int, seed: int) -> tuple[Writer, list[Change]]:
    """A random write history and the change (state snapshot) each write produced."""
    rng = random.Random(seed)
    w = Writer()
    w.create("s")
    log = _frozen(w.drain())
    for _ in range(n):
        key = f"user:{rng.randrange(8)}" if rng.random() < 0.8 else f"other:{rng.randrange(3)}"
        r = rng.random()
        if r < 0.6:
            w.write("s", Put(key, rng.randbytes(4), force=True))
        elif r < 0.8:
            w.write("s", ZAdd(key, {rng.randbytes(1): rng.random()}, force=True))
        elif w.replica.state("s", key) is not None:
            w.write("s", Delete(key))
        log.extend(_frozen(w.drain()))
    return w, log


async def test_exactly_once_in_version_order_under_reordering(autojump_clock: Any) -> None:
    """Deltas arrive shuffled and duplicated; the watcher sees each key's versions once, rising,
    and ends with exactly the versions the replica holds."""
    for seed in range(5):
        origin, log = _history(300, seed)
        deltas = [(c.store, c.key, c.state) for c in log]
        rng = random.Random(seed)
        shuffled = deltas + rng.sample(deltas, len(deltas) // 3)
        rng.shuffle(shuffled)
        # META first so the store exists (a node learns of stores the same way)
        shuffled.sort(key=lambda d: d[0] != "")

        edge = Replica()
        hub = WatchHub()
        watcher = hub.watch("s", "user:", max_buffer=100_000)
        for i in range(0, len(shuffled), 7):
            batch = shuffled[i : i + 7]
            hub.on_changes(edge.apply_batch(batch))  # type: ignore[arg-type]
        events: list[WatchEvent] = []
        while watcher.pending():
            events.append(await watcher.__anext__())
        per_key: dict[str, list[int]] = {}
        for ev in events:
            assert ev.key.startswith("user:")
            assert ev.version is not None
            per_key.setdefault(ev.key, []).append(ev.version.seq)
        for key, seqs in per_key.items():
            assert seqs == sorted(set(seqs)), (seed, key, seqs)  # rising, no duplicates
            state = edge.state("s", key)
            assert state is not None and seqs[-1] == state.seq
            ev = [e for e in events if e.key == key][-1]
            assert ev.deleted == (isinstance(state, Register) and state.value is None)
        assert edge.root == origin.replica.root


async def test_in_order_delivery_sees_every_version(autojump_clock: Any) -> None:
    _, changes = _history(200, 42)
    hub = WatchHub()
    edge = Replica()
    watcher = hub.watch("s", "")
    for c in changes:
        assert c.state is not None
        hub.on_changes(edge.apply_batch([(c.store, c.key, c.state)]))
    got = []
    while watcher.pending():
        got.append(await watcher.__anext__())
    expected = [
        WatchEvent(
            c.key,
            Version(c.state.seq, c.state.written_at),
            isinstance(c.state, Register) and c.state.value is None,
        )
        for c in changes
        if c.store == "s" and c.state is not None
    ]
    assert got == expected


async def test_overflow_cuts_off_after_buffered_events(autojump_clock: Any) -> None:
    hub = WatchHub()
    watcher = hub.watch("s", "k", max_buffer=3)
    for seq in range(1, 6):
        hub.on_changes([Change("s", f"k{seq}", Register(seq, 0, b"v"))])
    got = [await watcher.__anext__() for _ in range(3)]
    assert [e.key for e in got] == ["k1", "k2", "k3"]
    with pytest.raises(WatchOverflow):
        await watcher.__anext__()
    assert hub.count() == 0


async def test_drop_store_ends_watchers_and_close_ends_iteration(autojump_clock: Any) -> None:
    hub = WatchHub()
    dropped = hub.watch("s")
    other = hub.watch("t")
    hub.on_changes([Change("s", "a", Register(2, 0, b"v"))])
    hub.on_changes([Change("", "s", Register(3, 0, None))])  # store s dropped
    assert (await dropped.__anext__()).key == "a"
    with pytest.raises(StoreNotFound):
        await dropped.__anext__()

    async def consume() -> list[WatchEvent]:
        return [ev async for ev in other]

    results: list[list[WatchEvent]] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            results.append(await consume())

        nursery.start_soon(run)
        await trio.sleep(1)
        hub.on_changes([Change("t", "b", Register(4, 0, b"v"))])
        await trio.sleep(1)
        hub.close()
    assert [[e.key for e in r] for r in results] == [["b"]]
    assert hub.count() == 0


async def test_removals_and_dropped_watchers(autojump_clock: Any) -> None:
    hub = WatchHub()
    watcher = hub.watch("s")
    hub.on_changes([Change("s", "a", Register(2, 0, b"v"))])
    hub.on_changes([Change("s", "a", None)])  # e.g. anti-entropy: deleted and purged elsewhere
    hub.on_changes([Change("s", "a", None)])  # a second removal is not a new event
    hub.on_changes([Change("s", "b", Register(3, 0, None))])  # tombstone
    hub.on_changes([Change("s", "b", None)])  # its purge: already reported deleted
    events = [await watcher.__anext__() for _ in range(watcher.pending())]
    assert events == [
        WatchEvent("a", Version(2, 0), False),
        WatchEvent("a", None, True),
        WatchEvent("b", Version(3, 0), True),
    ]
    del watcher, events
    gc.collect()
    assert hub.count() == 0  # a watcher the application dropped costs nothing


def test_edge_store_watch_requires_live_store() -> None:
    w = Writer()
    w.create("s")
    hub = WatchHub()
    store = EdgeStore(w.replica.store("s"), hub=hub)
    watcher = store.watch("p")
    assert hub.count() == 1 and watcher.prefix == "p"
    w.drop("s")
    with pytest.raises(StoreNotFound):
        store.watch("p")
