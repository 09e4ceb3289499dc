"""Bootstrap by streamed snapshot (gossip/snapshot.py), in the deterministic simulator.

Each test prints nothing on success; a failing one names its seed in the Sim it built.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.crdt import (
    META,
    Delete,
    Put,
    Register,
    Replica,
    State,
    ZSet,
    bulk_load,
    bulk_load_stores,
)
from edgekv.crdt.proofs import ForgedState, ProofStore, Signer, atoms_of
from edgekv.crdt.treebuild import TreeBuilder, build_tree
from edgekv.errors import LocalProtocolError, RemoteProtocolError
from edgekv.gossip import GossipConfig, GossipNode, Send
from edgekv.gossip.dissemination import EARLY
from edgekv.gossip.snapshot import SnapshotServer, TreeJob
from edgekv.gossip.snapshot_build import StagedSnapshot
from edgekv.gossip.snapshot_file import FileBase
from edgekv.gossip.snapshot_server import MAX_SESSIONS
from edgekv.gossip.snapshot_wire import parse_chunk, parse_offer, snap_offer, snap_req
from edgekv.gossip.wire import Checked, FrameDecoder, Message, MsgType, encode_frame, type_name
from gossip_sim import ORIGIN, Sim

KEYS = 3000


def config() -> GossipConfig:
    # small chunks and a low switch point: a 3,000-key store takes ~60 chunks
    return GossipConfig(snapshot_from_keys=200, snapshot_chunk_bytes=4096, snapshot_timeout=1.0)


def filled(keys: int = KEYS) -> Replica:
    """A replica holding store "s" (created at seq 1) and `keys` keys written at seqs 2...
    plus one zset, so chunks carry both encodings."""
    from edgekv.crdt import ZSet

    items: list[tuple[str, str, State]] = [(META, "s", Register(1, 0, b"", None))]
    items += [("s", f"k{i:05d}", Register(i + 2, 5, b"v%d" % i, None)) for i in range(keys)]
    items.append(("s", "z", ZSet(keys + 2, {b"m": (keys + 2, 1.5)}, keys + 2, 5)))
    r = Replica()
    bulk_load(r, items, [(1, keys + 2)])
    return r


def give(sim: Sim, addr: str, replica: Replica) -> None:
    """Rebuild node `addr` (not started yet) over `replica` (as if loaded from disk)."""
    old = sim.nodes[addr]
    sim._add(addr, old.role, old.seeds, replica)


def sim_with_sources(
    seed: int,
    sources: int = 2,
    fresh: int = 1,
    seeds: int | None = None,
    cfg: GossipConfig | None = None,
) -> Sim:
    """The origin and `sources` caught-up edges hold the store; `fresh` more edges start empty
    and know the origin and `seeds - 1` earlier edges (default: all of them) as seeds.  Only
    the origin and sources are started."""
    per_edge = sources + 1 if seeds is None else seeds
    cfg = cfg or config()
    sim = Sim(sources + fresh, seed, latency=0.01, config=cfg, seeds_per_edge=per_edge)
    for addr in [ORIGIN, *sim.edges[:sources]]:
        give(sim, addr, filled())
    sim.seq = KEYS + 2
    for addr in [ORIGIN, *sim.edges[:sources]]:
        sim.start_one(addr, 0.0)
    sim.run_until(3.0)  # membership settles: every source knows the others' watermarks
    return sim


def start_fresh_until(sim: Sim, keys: int) -> GossipNode:
    """Start the last (fresh) edge and run until it has staged at least `keys` keys."""
    fresh = sim.edges[-1]
    sim.start_one(fresh, sim.now)
    node = sim.nodes[fresh]
    t = sim.now
    while node.bootstrap.progress.keys < keys:
        t += 0.005
        sim.run_until(t)
        assert t < 30, sim.seed
    return node


def test_fresh_edge_takes_a_snapshot_from_a_caught_up_edge_not_the_origin() -> None:
    sim = sim_with_sources(seed=1)
    fresh = sim.edges[-1]
    sim.start_one(fresh, sim.now)
    sim.run_until(sim.now + 5.0)
    node = sim.nodes[fresh]
    assert node.counters["snapshots_installed"] == 1, sim.seed
    assert node.bootstrap.progress.sources[0] in sim.edges[:2]
    assert node.bootstrap.status(sim.now)["whole_from"] == node.bootstrap.progress.sources[-1]
    assert sim.origin.counters["snapshot_sessions"] == 0  # the origin served no snapshot
    assert sum(n.counters["snapshot_offers_sent"] for n in sim.nodes.values()) >= 1
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.bootstrap.ready()
    assert not sim.check.violations


def test_an_edge_knowing_only_the_origin_is_sent_to_a_caught_up_edge() -> None:
    sim = sim_with_sources(seed=6, seeds=1)
    fresh = sim.edges[-1]
    assert sim.nodes[fresh].seeds == [ORIGIN]
    sim.start_one(fresh, sim.now)
    sim.run_until(sim.now + 5.0)
    node = sim.nodes[fresh]
    assert node.bootstrap.progress.sources[0] in sim.edges[:2], sim.seed  # named by the offer
    assert sim.origin.counters["snapshot_sessions"] == 0
    assert node.replica.root == sim.origin.replica.root


def test_an_edge_some_thousand_seqs_behind_is_still_offered_as_a_source() -> None:
    # under write load an edge known by its last ping (or slowed by serving other snapshots)
    # is thousands of seqs behind the origin's watermark; leaving it out left the origin to
    # serve a whole store (the 1M-key, 10-edge benchmark step: one edge took it from there)
    import random

    from edgekv.gossip.snapshot import offer_sources

    sim = sim_with_sources(seed=12, sources=1)
    edge = sim.edges[0]
    known = sim.origin.members.peers[edge].watermark
    assert known == sim.origin.replica.watermark
    later = known + 5000  # the origin's watermark after 5,000 more writes
    assert offer_sources(sim.origin.members, later, GossipConfig(), random.Random(1)) == [edge]
    assert offer_sources(sim.origin.members, known + 50_000, GossipConfig(), random.Random(1)) == []


def test_a_suspected_caught_up_edge_is_still_a_source_before_the_origin() -> None:
    # a caught-up edge busy building its trees while ten edges start on its CPU misses its
    # acks; leaving suspects out, all ten took the whole store from the origin (1M keys)
    import random

    from edgekv.gossip.peer import SUSPECT
    from edgekv.gossip.snapshot import offer_sources

    sim = sim_with_sources(seed=15, sources=2)
    first, second = sim.edges[:2]
    wm = sim.origin.replica.watermark
    sim.origin.members.peers[first].state = SUSPECT
    for seed in range(5):  # live ones first, then suspects
        got = offer_sources(sim.origin.members, wm, GossipConfig(), random.Random(seed))
        assert got == [second, first]
    sim.origin.members.peers[second].state = SUSPECT
    assert sorted(offer_sources(sim.origin.members, wm, GossipConfig(), random.Random(1))) == [
        first,
        second,
    ]
    # the receiver's own view: no live caught-up edge, no hints: a suspect before the origin
    fresh = sim.nodes[sim.edges[-1]]
    boot = fresh.bootstrap
    for addr in (first, second):
        fresh.members.heard_from(addr, sim.now)
        fresh.members.peers[addr].role = "edge"
        fresh.members.peers[addr].watermark = wm
        fresh.members.peers[addr].state = SUSPECT
    boot._offer, boot._hints = (ORIGIN, wm), []
    assert boot._choose() in (first, second)


def test_a_caught_up_edge_that_only_timed_out_is_tried_again_before_the_origin() -> None:
    sim = sim_with_sources(seed=16, sources=1)
    edge = sim.edges[0]
    fresh = sim.nodes[sim.edges[-1]]
    boot = fresh.bootstrap
    wm = sim.origin.replica.watermark
    fresh.members.heard_from(edge, sim.now)
    fresh.members.peers[edge].role = "edge"
    fresh.members.peers[edge].watermark = wm
    boot._offer, boot._hints = (ORIGIN, wm), [edge]
    boot._tried = {edge}  # it timed out: slow, not refusing
    assert boot._choose() == edge
    boot._tried, boot._refused = {edge}, {edge}  # it answered busy (or sent a bad chunk)
    assert boot._choose() == ORIGIN


def test_a_source_slower_than_the_timeout_still_completes_the_transfer() -> None:
    # one caught-up edge whose chunks take 1.5x snapshot_timeout to arrive (a loaded host):
    # without backing off, every resume opened a session whose first chunk came too late
    sim = sim_with_sources(seed=5, sources=1)
    source = sim.edges[0]
    send = sim._send
    delay = 1.5 * config().snapshot_timeout

    def slow(src: str, sends: list[Send]) -> None:
        late = [m for m in sends if src == source and type_name(m.message["t"]) == "SNAP_DATA"]
        send(src, [m for m in sends if m not in late])
        if late:
            sim.at(sim.now + delay, lambda: send(src, late))

    sim._send = slow  # type: ignore[method-assign]
    fresh = sim.nodes[sim.edges[-1]]
    sim.start_one(fresh.members.address, sim.now)
    sim.run_until(sim.now + 120.0)
    assert fresh.counters["snapshots_installed"] == 1, sim.seed
    assert fresh.replica.root == sim.origin.replica.root
    assert fresh.counters["snapshot_timeouts"] <= 2, fresh.counters["snapshot_timeouts"]
    assert set(fresh.bootstrap.progress.sources) == {source}  # never handed to the origin
    assert not sim.check.violations


def test_a_transfer_cut_in_the_middle_resumes_from_another_peer_and_ends_equal() -> None:
    sim = sim_with_sources(seed=2)
    node = start_fresh_until(sim, KEYS // 3)  # a third of the keys staged: crash the source
    first = node.bootstrap.progress.sources[0]
    staged = node.bootstrap.progress.keys
    sim.crash(first)
    sim.run_until(sim.now + 10.0)
    assert node.counters["snapshot_resumes"] >= 1, sim.seed
    second = node.bootstrap.progress.sources[-1]
    assert second != first
    assert node.counters["snapshots_installed"] == 1
    assert node.replica.root == sim.origin.replica.root
    # resumed from the cursor: the second source served only what was missing (+ a window)
    served = sim.nodes[second].counters["snapshot_keys_served"]
    assert served <= KEYS + 2 - staged + config().snapshot_window * 200, (served, staged)
    assert not sim.check.violations


def test_writes_during_the_transfer_are_not_lost() -> None:
    sim = sim_with_sources(seed=3, sources=1)
    fresh = sim.edges[-1]
    sim.start_one(fresh, sim.now)
    node = sim.nodes[fresh]
    written: dict[str, bytes] = {}
    t = sim.now
    i = 0
    while node.counters["snapshots_installed"] == 0:
        t += 0.01
        sim.run_until(t)
        # overwrite keys already sent and not yet sent, and add keys before and after all
        for key in (f"k{(i * 37) % KEYS:05d}", f"a{i:04d}", f"zz{i:04d}"):
            value = b"new%d" % i
            sim.write("s", Put(key, value))
            written[key] = value
        i += 1
        assert t < 30, sim.seed
    assert i > 5  # the writes did overlap the transfer
    sim.run_until(sim.now + 5.0)
    assert node.replica.root == sim.origin.replica.root, sim.seed
    store = node.replica.stores["s"]
    for key, value in written.items():
        assert store.get(key, 0) == value
    assert not sim.missing()
    assert not sim.check.violations


# one chunk of 1 KiB in flight: a transfer of about two seconds
SLOW = GossipConfig(
    snapshot_from_keys=200, snapshot_chunk_bytes=1024, snapshot_timeout=1.0, snapshot_window=1
)


def slow_transfer(seed: int, sources: int) -> tuple[Sim, str, list[float]]:
    """`sim_with_sources` at SLOW, its fresh edge's address, and the times of the origin's
    PUSHes to it (appended as they are sent)."""
    sim = sim_with_sources(seed=seed, sources=sources, cfg=SLOW)
    fresh = sim.edges[-1]
    send = sim._send
    pushes: list[float] = []

    def counted(src: str, sends: list[Send]) -> None:
        for msg in sends:
            if src == ORIGIN and msg.peer == fresh and type_name(msg.message["t"]) == "PUSH":
                pushes.append(sim.now)
        send(src, sends)

    sim._send = counted  # type: ignore[method-assign]
    return sim, fresh, pushes


def test_pushes_to_a_node_taking_a_snapshot_are_batched_for_the_longest_window() -> None:
    """snapshot.py rule 3: while a fresh edge takes its snapshot from the origin, the origin
    pushes to it at most once per `push_window` (it serves none of those writes before its
    install) instead of once per write; after the install, a write goes out at once again.
    Nothing is lost: the writes made meanwhile are all there."""
    sim, fresh, pushes = slow_transfer(seed=31, sources=0)
    sim.start_one(fresh, sim.now)
    node = sim.nodes[fresh]
    while not sim.origin.snapshots.takers:  # the session opens
        sim.run_until(sim.now + 0.005)
        assert sim.now < 10, sim.seed
    opened, i = sim.now, 0
    while sim.origin.snapshots.takers:  # a write every 10 ms while the session lasts
        sim.write("s", Put(f"k{(i * 37) % KEYS:05d}", b"new%d" % i))
        i += 1
        sim.run_until(sim.now + 0.01)
        assert sim.now < 30, sim.seed
    ended = sim.now
    assert i >= 20, i  # long enough for the windows to show
    during = [t for t in pushes if opened <= t <= ended]
    window = SLOW.push_window
    assert len(during) <= (ended - opened) / window + 3, (len(during), i, sim.seed)
    sim.run_until(sim.now + 2.0)
    assert node.counters["snapshots_installed"] == 1 and not sim.origin.snapshots.takers
    before = len(pushes)
    sim.write("s", Put("after", b"1"))
    sim.run_until(sim.now + 0.02)  # one link latency: pushed at once, not a window later
    assert len(pushes) == before + 1 and node.replica.stores["s"].get("after", 0) == b"1"
    assert node.replica.root == sim.origin.replica.root, sim.seed
    assert not sim.missing() and not sim.check.violations


def test_a_small_gap_still_uses_catch_up_by_watermark() -> None:
    sim = sim_with_sources(seed=4, sources=1)
    fresh = sim.edges[-1]
    # an edge that was away while 100 keys changed (under the switch point of 200)
    give(sim, fresh, filled())
    node = sim.nodes[fresh]
    for i in range(100):
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.run_until(sim.now + 0.5)
    sim.start_one(fresh, sim.now)
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshot_offers"] == 0
    assert node.replica.root == sim.origin.replica.root


def test_an_edge_back_after_many_changes_takes_a_delta_not_the_whole_store() -> None:
    sim = sim_with_sources(seed=9, sources=1)
    back = sim.edges[-1]
    give(sim, back, filled())  # it held everything before it went away
    for i in range(0, KEYS, 3):  # a thousand keys changed meanwhile (over the switch point)
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.write("s", Put("new", b"key"))
    sim.run_until(sim.now + 0.5)
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + 5.0)
    node = sim.nodes[back]
    assert node.counters["snapshot_deltas"] == 1, sim.seed
    assert node.counters["snapshots_installed"] == 0
    served = sum(n.counters["snapshot_keys_served"] for n in sim.nodes.values())
    assert served <= KEYS // 3 + 10  # only the changed keys travelled
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.bootstrap.ready()
    assert not sim.check.violations


def test_a_large_delta_is_staged_and_rebuilt_joined_with_writes_made_meanwhile() -> None:
    sim = sim_with_sources(seed=10, sources=1)
    back = sim.edges[-1]
    give(sim, back, filled())
    for i in range(0, KEYS, 2):  # 1,500 keys changed: past the (lowered) staging threshold
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.run_until(sim.now + 0.5)
    node = sim.nodes[back]
    node.bootstrap.delta_stage_from = 300
    sim.start_one(back, sim.now)
    t = sim.now
    while node.bootstrap.progress.keys < 600:  # mid-transfer: writes arrive by pushes
        t += 0.005
        sim.run_until(t)
        assert t < 30, sim.seed
    for i in range(1, 200, 2):
        sim.write("s", Put(f"k{i:05d}", b"during"))
    sim.write("s", Put("brand-new", b"key"))
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshot_delta_rebuilds"] == 1, sim.seed
    assert node.counters["snapshots_installed"] == 0
    served = sum(n.counters["snapshot_keys_served"] for n in sim.nodes.values())
    assert served <= KEYS // 2 + 200  # still only the changed keys travelled
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.bootstrap.ready()
    assert not sim.check.violations


@pytest.mark.parametrize("deleted", [False, True])
def test_a_moved_purge_mark_keeps_the_delta_a_purged_deletion_takes_it_whole(
    deleted: bool,
) -> None:
    sim = sim_with_sources(seed=10, sources=1)
    back = sim.edges[-1]
    give(sim, back, filled())
    for i in range(0, KEYS, 3):
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    if deleted:
        sim.write("s", Delete("k00001"))
    sim.run_until(sim.now + 0.5)
    for addr in (ORIGIN, sim.edges[0]):  # every live node purged up to its watermark
        r = sim.nodes[addr].replica
        r.purge(r.watermark, 0)
        assert r.purged == r.watermark and ("k00001" in r.stores["s"].states) != deleted
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + 5.0)
    node = sim.nodes[back]
    assert node.counters["snapshot_delta_to_full"] == int(deleted), sim.seed
    assert node.counters["snapshot_deltas"] + node.counters["snapshots_installed"] == 1
    assert node.replica.state("s", "k00001") == sim.origin.replica.state("s", "k00001")
    assert node.replica.root == sim.origin.replica.root


def test_responder_work_per_request_is_bounded_by_the_credit() -> None:
    r = filled(20_000)
    cfg = GossipConfig(snapshot_chunk_bytes=16 << 10)
    server = SnapshotServer(r, cfg, Counter())
    out = server.on_req("p", snap_req(7, None, 3, True), 0.0)
    assert len(out) == 3
    sizes = [
        sum(len(k) for k in s.message["keys"]) + sum(map(len, s.message["regs"])) for s in out[1:]
    ]
    assert all(16 << 10 <= n <= (16 << 10) + 200 for n in sizes)
    assert server.on_req("p", snap_req(8, None, 1, False), 0.0) == []  # no such session
    more = server.on_req("p", snap_req(7, None, 1, False), 0.0)
    assert len(more) == 1 and more[0].message["n"] == 3
    # the stream covers every key once, in order, and ends with `last`
    keys: list[str] = []
    for s in out + more:
        keys += s.message["keys"]
    while not (out[-1].message["last"] if out else False):
        out = server.on_req("p", snap_req(7, None, 16, False), 0.0)
        for s in out:
            keys += s.message["keys"]
    assert keys == sorted(keys, key=lambda k: (k != "s", k)) and len(keys) == 20_002
    assert not server.sessions


@pytest.mark.parametrize("since", [0, 3_000])
def test_column_wise_chunks_are_the_chunks_the_loop_takes(
    since: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """snapshot_server `_cut`: with no proofs, a window of registers is cut column-wise; the
    stream (every chunk's keys, states, cursor and `last`) is the one the per-key loop
    gives, a whole store and a delta alike, across the zset the loop must take; and a
    signed store (proofs travel) never takes that path."""
    from edgekv.gossip import snapshot_server

    r = filled(6_000)
    for i in range(0, 6_000, 3):  # a delta of a third of the keys, past `since`
        r.apply("s", f"k{i:05d}", Register(10_000 + i, 5, b"new", None))

    def stream(cfg: GossipConfig) -> list[tuple[Any, ...]]:
        server = SnapshotServer(r, cfg, Counter())
        req = snap_req(1, None, 2, True)
        req["since"] = since
        out: list[tuple[Any, ...]] = []
        while True:
            for send in server.on_req("p", req, 0.0):
                m = send.message
                out.append((m["store"], m["keys"], m["regs"], m["others"], m["last"]))
            if not server.sessions:
                return out
            req = snap_req(1, None, 2, False)

    cfg = GossipConfig(snapshot_chunk_bytes=2048)
    monkeypatch.setattr(snapshot_server, "SPARSE_KEYS", 0)  # a delta scans the store's keys
    calls: list[Any] = []
    cut = snapshot_server._cut

    def recorded(*a: Any) -> Any:
        calls.append(cut(*a))
        return calls[-1]

    monkeypatch.setattr(snapshot_server, "_cut", recorded)
    fast = stream(cfg)
    assert sum(c is not None for c in calls) > 10  # the column-wise path was taken
    monkeypatch.setattr(snapshot_server, "_cut", lambda *a: None)
    assert fast == stream(cfg)
    keys = [k for _, ks, *_ in fast for k in ks]
    assert "z" in keys and len(keys) == len(set(keys))  # each once; the zset too
    assert sorted(keys) == sorted(k for _, k, st in r.iter_states() if st.seq > since)
    calls.clear()
    monkeypatch.setattr(snapshot_server, "_cut", lambda *a: calls.append(a))
    signed(r)
    stream(cfg)
    assert not calls


def test_chunks_skip_the_encoding_walk_and_encode_as_the_walked_message_would() -> None:
    """wire.Checked: a chunk of the server's own states is not walked at encoding; its frame
    is the bytes the walked plain message gives, and it parses back to the same states.  A
    plain message with a value the wire cannot carry is still refused."""
    r = signed(filled())
    server = SnapshotServer(r, GossipConfig(snapshot_chunk_bytes=4096), Counter())
    out = server.on_req("p", snap_req(3, None, 4, True), 0.0)
    assert out and all(type(s.message) is Checked for s in out)
    for s in out:
        frame = encode_frame(s.message)
        assert frame == encode_frame(dict(s.message))
        (decoded,) = FrameDecoder().feed(frame)
        chunk = parse_chunk(decoded)
        assert chunk.states == [r.stores[chunk.store].states[k] for k in chunk.keys]
    with pytest.raises(LocalProtocolError):
        encode_frame({**out[0].message, "keys": [object()]})


def test_pushes_to_a_node_bootstrapping_from_an_edge_are_batched_too() -> None:
    """snapshot.py rule 3: a fresh edge taking its snapshot from a caught-up edge tells the
    origin (its PINGs and ACKs say `boot`), which then pushes to it at most once per
    `push_window`; once installed it says so, and a write goes out at once again."""
    sim, fresh, pushes = slow_transfer(seed=32, sources=1)
    sim.start_one(fresh, sim.now)
    node = sim.nodes[fresh]
    origin = sim.origin
    i = 0
    while not origin.members.booting(fresh):  # the transfer starts; the origin hears of it
        sim.write("s", Put(f"k{(i * 37) % KEYS:05d}", b"new%d" % i))
        i += 1
        sim.run_until(sim.now + 0.01)
        assert sim.now < 10, sim.seed
    opened, start = sim.now, i
    while origin.members.booting(fresh):  # a write every 10 ms while it lasts
        sim.write("s", Put(f"k{(i * 37) % KEYS:05d}", b"new%d" % i))
        i += 1
        sim.run_until(sim.now + 0.01)
        assert sim.now < 30, sim.seed
    ended = sim.now
    assert origin.counters["snapshot_sessions"] == 0  # taken from the edge, not the origin
    assert i - start >= 20, i  # long enough for the windows to show
    during = [t for t in pushes if opened <= t <= ended]
    # (a queue may leave up to EARLY of its window early, with the other peers' flushes)
    shortest = (1 - EARLY) * SLOW.push_window
    assert len(during) <= (ended - opened) / shortest + 3, (len(during), i, sim.seed)
    assert 3 * len(during) <= i - start  # one push per write without it
    sim.run_until(sim.now + 2.0)
    assert node.counters["snapshots_installed"] == 1
    before = len(pushes)
    sim.write("s", Put("after", b"1"))
    sim.run_until(sim.now + 0.02)  # one link latency: pushed at once, not a window later
    assert len(pushes) == before + 1 and node.replica.stores["s"].get("after", 0) == b"1"
    assert node.replica.root == origin.replica.root, sim.seed
    assert not sim.missing() and not sim.check.violations


def test_the_takers_of_a_server_are_exactly_the_peers_of_its_open_sessions() -> None:
    """snapshot.py rule 3's bookkeeping: `takers` counts each peer's open sessions, through
    sessions that end (last chunk), expire (idle) or are refused (busy)."""
    r = filled(2000)
    cfg = GossipConfig(snapshot_chunk_bytes=1024, snapshot_timeout=1.0)
    server = SnapshotServer(r, cfg, Counter())

    def agree() -> None:
        assert server.takers == Counter(peer for peer, _sid in server.sessions)

    for peer, sid in (("p", 1), ("p", 2), ("q", 1)):
        server.on_req(peer, snap_req(sid, None, 1, True), 0.0)
        agree()
    assert server.takers == {"p": 2, "q": 1}
    while server.on_req("p", snap_req(1, None, 16, False), 0.5):  # p's first session ends
        agree()
    assert ("p", 1) not in server.sessions and server.takers == {"p": 1, "q": 1}
    server.on_req("q", snap_req(1, None, 1, False), 1.5)  # q keeps its session alive
    server.on_req("r", snap_req(9, None, 1, True), 2.6)  # p's other one expired meanwhile
    agree()
    assert server.takers == {"q": 1, "r": 1}
    server.busy = True  # taking a whole snapshot itself: a new session is refused
    server.on_req("s", snap_req(1, None, 1, True), 2.7)
    agree()
    assert "s" not in server.takers
    # a flood of opens (one peer under many sids, many peers) is refused past MAX_SESSIONS:
    # the takers (whose pushes this node batches) stay within it, and leave with them
    server.busy = False
    for i in range(3 * MAX_SESSIONS):
        server.on_req("flood" if i % 2 else f"f{i}", snap_req(100 + i, None, 1, True), 2.8)
    agree()
    assert len(server.sessions) == MAX_SESSIONS and sum(server.takers.values()) == MAX_SESSIONS
    server.on_req("late", snap_req(1, None, 1, True), 10.0)  # every idle session expired
    agree()
    assert server.takers == {"late": 1}


def good_chunk() -> Message:
    server = SnapshotServer(filled(50), GossipConfig(), Counter())
    (send,) = server.on_req("p", snap_req(1, ("", "s"), 1, True), 0.0)
    return FrameDecoder().feed(encode_frame(send.message))[0]  # as received


@pytest.mark.parametrize("changed", ["many", -1, 1 << 64, 2.5, None, [3]])
def test_an_offer_with_a_malformed_changed_count_is_a_remote_error(changed: object) -> None:
    m = snap_offer(1, 500, 1_000, [], changed=300)
    assert parse_offer(m).changed == 300 and parse_offer(snap_offer(1, 5, 9, [])).changed == 0
    m["changed"] = changed
    with pytest.raises(RemoteProtocolError):
        parse_offer(m)


def test_an_offer_from_an_edge_that_lies_about_changed_costs_a_whole_snapshot_only() -> None:
    """A peer answering a restart's catch-up can claim any `changed`; with an edge to serve,
    a claim past `snapshot_whole_from` drops the file and the whole store streams instead
    (rule 12): more bytes, but every state is the origin's and the node ends equal to it."""
    sim, back, node = _back_with_file_loading(seed=31, whole_share=0.5)
    real = node.bootstrap.on_offer

    def inflated(peer: str, m: dict[str, object], now: float) -> list[Any]:
        return real(peer, {**m, "changed": m["keys"]}, now)  # "every key changed"

    node.bootstrap.on_offer = inflated  # type: ignore[method-assign]
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshot_file_dropped"] == 1, sim.seed
    _install_file(sim, back, None)  # the loader, stopped, reports no rows
    assert node.bootstrap.ready(), sim.seed
    assert node.replica.root == sim.origin.replica.root
    assert not sim.check.violations


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.update(keys=list(reversed(m["keys"]))),
        lambda m: m.update(regs=m["regs"][:-1]),  # one register short
        lambda m: m.update(regs=[m["regs"][0][:10], *m["regs"][1:]]),  # a truncated header
        lambda m: m.update(regs=[b"\x07" + m["regs"][0][1:], *m["regs"][1:]]),  # unknown flags
        lambda m: m.update(regs=[bytes(17), *m["regs"][1:]]),  # seq 0
        lambda m: m.update(regs=["text", *m["regs"][1:]]),
        lambda m: m.update(regs=b"".join(m["regs"])),  # not an array
        lambda m: m.update(others=[[9, 9]]),
        lambda m: m.update(regs=[b"", *m["regs"][1:]], others=[[9, 9]]),  # a bad delta
        lambda m: m.update(keys=[*m["keys"][:-1], ""]),
        lambda m: m.update(keys="abc"),
        lambda m: m.update(last="yes"),
        lambda m: m.update(store="bad store"),
    ],
)
def test_malformed_chunks_are_rejected_as_remote_errors(damage: Callable[[Message], None]) -> None:
    m = good_chunk()
    assert parse_chunk(m).keys  # the undamaged chunk parses
    damage(m)
    with pytest.raises(RemoteProtocolError):
        parse_chunk(m)


def test_a_bad_chunk_abandons_the_source_and_resumes_elsewhere() -> None:
    sim = sim_with_sources(seed=5)
    node = start_fresh_until(sim, 500)
    bad = dict(good_chunk(), sid=node.bootstrap._sid, n=node.bootstrap._n)
    bad["regs"] = [b"\x07" + bad["regs"][0][1:], *bad["regs"][1:]]
    with pytest.raises(RemoteProtocolError):
        node.receive(node.bootstrap._source, bad, sim.now)
    sim.run_until(sim.now + 10.0)
    assert node.counters["snapshot_bad_chunks"] == 1
    assert node.counters["snapshot_resumes"] >= 1
    assert node.replica.root == sim.origin.replica.root


def test_a_chunk_past_the_one_due_resumes_at_once_without_blaming_the_source() -> None:
    """A source whose queue to the receiver was full dropped a chunk: the next one arrives
    with a gap in `n`.  The receiver resumes from its cursor at once (no timeout, no protocol
    error: as one, it cut off a source on a loaded host) and may ask that source again."""
    sim = sim_with_sources(seed=6)
    node = start_fresh_until(sim, 500)
    boot = node.bootstrap
    source, staged = boot._source, boot.progress.keys
    ahead = dict(good_chunk(), sid=boot._sid, n=boot._n + 1)
    sends = node.receive(source, ahead, sim.now)  # no RemoteProtocolError
    assert node.counters["snapshot_gaps"] == 1 and node.counters["snapshot_bad_chunks"] == 0
    assert boot.progress.keys == staged  # nothing of the chunk after the gap was staged
    assert source not in boot._refused
    assert any(s.message["t"] == MsgType.SNAP_REQ and s.message["open"] for s in sends)
    sim._send(node.address, sends)
    sim.run_until(sim.now + 10.0)
    assert node.counters["snapshot_timeouts"] == 0
    assert node.replica.root == sim.origin.replica.root


# -- origin-signed writes: chunks carry certificates and are verified ---------------------------

KEY = Ed25519PrivateKey.generate()


def signed(replica: Replica, certified: bool = True) -> Replica:
    """`replica` keeping proofs; with `certified`, the origin's certificates of its states."""
    proofs = replica.use_proofs(ProofStore([KEY.public_key()]))
    if certified:
        atoms = [a for s, k, st in replica.iter_states() for a in atoms_of(s, k, st)]
        proofs.add(Signer(KEY).certify(atoms))
    return replica


def signed_sim(seed: int) -> Sim:
    sim = Sim(3, seed, latency=0.01, config=config(), seeds_per_edge=3)
    for addr in (ORIGIN, *sim.edges[:2]):
        give(sim, addr, signed(filled()))
    give(sim, sim.edges[2], signed(Replica(), certified=False))
    sim.seq = KEYS + 2
    for addr in (ORIGIN, *sim.edges[:2]):
        sim.start_one(addr, 0.0)
    sim.run_until(3.0)
    return sim


def test_signed_chunks_are_verified_and_their_certificates_kept() -> None:
    sim = signed_sim(seed=7)
    node = start_fresh_until(sim, 1)
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshots_installed"] == 1, sim.seed
    assert node.replica.root == sim.origin.replica.root
    proofs = node.replica.proofs
    assert proofs is not None and len(proofs) > 0
    # what it holds it can prove in turn: it may serve the next joiner
    assert proofs.material_for(node.replica.iter_states())


def test_a_forged_chunk_is_rejected_and_the_transfer_resumes_elsewhere() -> None:
    sim = signed_sim(seed=8)
    node = start_fresh_until(sim, 500)
    boot = node.bootstrap
    source = sim.nodes[boot._source]
    honest = SnapshotServer(source.replica, config(), Counter())
    (send,) = honest.on_req("x", snap_req(1, boot._cursor, 1, True), sim.now)
    forged = dict(send.message, sid=boot._sid, n=boot._n)
    forged["regs"] = [*forged["regs"][:-1], forged["regs"][-1][:-1] + b"!"]  # seq kept
    with pytest.raises(ForgedState):
        node.receive(boot._source, forged, sim.now)
    assert node.replica.state("s", send.message["keys"][-1]) is None  # nothing staged or applied
    sim.run_until(sim.now + 10.0)
    assert node.counters["snapshot_resumes"] >= 1
    assert node.counters["snapshots_installed"] == 1
    assert node.replica.root == sim.origin.replica.root


@pytest.mark.parametrize("big", [False, True])
def test_tree_built_chunk_by_chunk_equals_the_bulk_built_tree(big: bool) -> None:
    states = filled(20_000).stores["s"].states
    keys, vals = list(states), list(states.values())
    builder = TreeBuilder(big=big)
    for lo in range(0, len(keys), 1234):
        builder.add(keys[lo : lo + 1234], vals[lo : lo + 1234])
    tree, expected = builder.finish(), build_tree(states)
    assert tree.nodes() == expected.nodes()
    assert {leaf: sorted(ks) for leaf, ks in tree.leaf_map().items()} == {
        leaf: sorted(ks) for leaf, ks in expected.leaf_map().items()
    }


def test_signed_session_proves_every_register_once_per_certificate() -> None:
    # dense certificates (one per 4,096 seqs) and, after rewrites of every third key, a sparse
    # one: the responder's fast path (the last certificate's dense position) and its fallback
    keys = 9000
    replica = signed(filled(keys))
    proofs = replica.proofs
    assert proofs is not None
    seq = replica.watermark
    rewritten = []
    for i in range(0, keys, 3):
        seq += 1
        k = f"k{i:06d}"
        replica.apply("s", k, Register(seq, 0, b"new", None))
        state = replica.state("s", k)
        assert state is not None
        rewritten.append(("s", k, state))
    proofs.add(Signer(KEY).certify([a for s, k, st in rewritten for a in atoms_of(s, k, st)]))
    _serve_verified(replica)


def _serve_verified(replica: Replica) -> list[bytes]:
    """A whole signed snapshot of `replica`, every chunk verified by a receiver: each
    certificate travels once and every state arrives; the certificates sent, in order."""
    server = SnapshotServer(replica, config(), Counter())
    receiver = ProofStore([KEY.public_key()])
    seen: list[bytes] = []
    got: dict[tuple[str, str], object] = {}
    req = snap_req(1, None, 4, True)
    for _ in range(1000):
        sends = server.on_req("x", req, 0.0)
        for send in sends:
            chunk = parse_chunk(FrameDecoder().feed(encode_frame(send.message))[0])
            seen += [c.signature for c in chunk.proofs]
            items = [(chunk.store, k, st) for k, st in zip(chunk.keys, chunk.states, strict=True)]
            assert len(receiver.verify(items, chunk.proofs, lambda s, k: None)) == len(items)
            got.update(((s, k), st) for s, k, st in items)
        if not server.sessions:
            break
        req = snap_req(1, None, 4, False)
    assert len(seen) == len(set(seen))  # each certificate travels once per session
    assert server.counters["snapshot_unprovable"] == 0
    assert got == {(s, k): st for s, k, st in replica.iter_states()}
    return seen


def test_a_store_written_in_random_key_order_takes_each_certificate_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # writes in random key order, signed 64 consecutive seqs at a time (as the origin signs a
    # push batch): in key order each register is proved by another certificate, mostly one
    # the session sent already; `sent_prover` finds it without `add_material`
    order = list(range(3000))
    random.Random(5).shuffle(order)
    items: list[Any] = [
        ("s", f"k{i:06d}", Register(n, 0, b"v", None)) for n, i in enumerate(order, 1)
    ]
    replica = Replica()
    bulk_load(replica, items, [(1, len(items))])
    proofs = replica.use_proofs(ProofStore([KEY.public_key()]))
    signer = Signer(KEY)
    for lo in range(0, len(items), 64):
        proofs.add(
            signer.certify([a for s, k, st in items[lo : lo + 64] for a in atoms_of(s, k, st)])
        )
    calls = Counter[str]()
    add_material = ProofStore.add_material

    def counted(self: ProofStore, out: dict[bytes, Any], d: Any) -> int:
        calls["add_material"] += 1
        return add_material(self, out, d)

    monkeypatch.setattr(ProofStore, "add_material", counted)
    seen = _serve_verified(replica)
    assert len(seen) == len(proofs)  # every certificate was needed, and sent once
    assert calls["add_material"] <= len(seen) + 1  # not once per key (3,000)


@pytest.mark.parametrize("layout", ["interleaved", "gaps", "holes", "zsets"])
def test_a_signed_session_proves_every_key_whatever_the_certificates_hold(layout: str) -> None:
    # the responder takes the certificate that proved a register for the next keys whose seq
    # it holds at its dense position; here certificate ranges interleave in key order (runs of
    # one key), or certificates claim ranges wider than their seqs, or hold every other seq
    # of their range (the others in another certificate), or zsets (several atoms per seq)
    # sit between registers: every chunk must still verify at the receiver
    rng = random.Random(layout)
    items: list[Any] = []
    for n in range(1, 1201):
        key = f"k{(n % 2) * 600 + n // 2:05d}" if layout == "interleaved" else f"k{n:05d}"
        if layout == "zsets" and n % 7 == 0:
            items.append(("s", key, ZSet(n, {b"m%d" % n: (n, float(n))}, n, 0)))
        else:
            items.append(("s", key, Register(n, 0, b"v%d" % n, None)))
    replica = Replica()
    bulk_load(replica, items, [(1, len(items))])
    proofs = replica.use_proofs(ProofStore([KEY.public_key()]))
    signer = Signer(KEY)
    if layout == "gaps":  # each certificate claims a range wider than the seqs it holds
        for lo in range(0, len(items), 50):
            batch = items[lo : lo + 50]
            atoms = [a for s, k, st in batch for a in atoms_of(s, k, st)]
            proofs.add(signer.certify(atoms, lo + 1, lo + 50 + rng.randrange(1, 40)))
    elif layout == "holes":  # odd and even seqs in two certificates over one range
        for lo in range(0, len(items), 100):
            for odd in (1, 0):
                batch = items[lo + 1 - odd : lo + 100 : 2]
                atoms = [a for s, k, st in batch for a in atoms_of(s, k, st)]
                proofs.add(signer.certify(atoms, lo + 1, lo + 100))
    else:
        for lo in range(0, len(items), 100):
            batch = items[lo : lo + 100]
            proofs.add(signer.certify([a for s, k, st in batch for a in atoms_of(s, k, st)]))
    _serve_verified(replica)


def test_a_signed_snapshot_of_many_stores_serves_every_store() -> None:
    # 24 stores: a register proved at the second entry of its certificate used to end the
    # session at the end of its store (its entry offset, 24, taken for the store index)
    items: list[tuple[str, str, State]] = [
        (META, f"a{n:02d}", Register(n + 1, 0, b"", None)) for n in range(24)
    ]
    items += [
        ("a00", "k1", Register(25, 0, b"x", None)),
        ("a00", "k2", Register(26, 0, b"y", None)),
    ]
    items += [(f"a{n:02d}", "k", Register(25 + n, 0, b"z", None)) for n in range(2, 24)]
    replica = Replica()
    bulk_load(replica, items, [(1, 47)])
    proofs = replica.use_proofs(ProofStore([KEY.public_key()]))
    signer = Signer(KEY)
    for group in (items[:24], items[24:26], items[26:]):  # a00's keys in their own certificate
        proofs.add(signer.certify([a for s, k, st in group for a in atoms_of(s, k, st)]))
    server = SnapshotServer(replica, config(), Counter())
    got: set[tuple[str, str]] = set()
    req = snap_req(1, None, 1, True)
    for _ in range(100):
        for send in server.on_req("x", req, 0.0):
            chunk = parse_chunk(FrameDecoder().feed(encode_frame(send.message))[0])
            got.update((chunk.store, k) for k in chunk.keys)
        if not server.sessions:
            break
        req = snap_req(1, None, 1, False)
    assert got == {(s, k) for s, k, _ in replica.iter_states()}


def test_deferred_trees_built_off_the_loop_replay_the_changes_made_meanwhile() -> None:
    source = filled(500)
    groups = {name: dict(sr.states) for name, sr in source.stores.items()}
    r = Replica()
    bulk_load_stores(r, groups, [(1, 502)], trees=False)
    copies = r.defer_trees()
    assert [sr.name for sr, _ in copies] == ["s"] and r.trees_pending
    # changes while the trees are built elsewhere: overwrites, new keys, a zset joined in
    # place, a removal; none builds a tree on the spot
    seq = 600
    for i in range(0, 500, 7):
        r.apply("s", f"k{i:05d}", Register(seq, 5, b"new", None))
        seq += 1
    r.apply("s", "brand-new", Register(seq, 5, b"x", None))
    r.apply("s", "z", ZSet(seq + 1, {b"n": (seq + 1, 2.0)}, 502, 5))
    r.remove("s", "k00003")
    assert r.trees_pending and r.stores["s"]._tree is None
    built = [(sr, build_tree(states)) for sr, states in copies]
    assert r.install_trees(built) == 1 and not r.trees_pending
    tree = r.stores["s"].tree
    fresh = build_tree(r.stores["s"].states)
    assert tree.nodes() == fresh.nodes()
    assert {k: sorted(v) for k, v in tree.leaf_map().items()} == {
        k: sorted(v) for k, v in fresh.leaf_map().items()
    }


def test_a_tree_needed_before_the_deferred_build_lands_is_built_and_the_build_dropped() -> None:
    source = filled(300)
    r = Replica()
    bulk_load_stores(r, {n: dict(sr.states) for n, sr in source.stores.items()}, trees=False)
    copies = r.defer_trees()
    r.apply("s", "k00001", Register(900, 5, b"new", None))
    root = r.root  # anti-entropy or /status would: built here from every state
    assert not r.trees_pending
    assert r.install_trees([(sr, build_tree(states)) for sr, states in copies]) == 0
    assert r.root == root
    assert r.stores["s"].tree.nodes() == build_tree(r.stores["s"].states).nodes()


def test_a_fresh_edge_is_ready_before_its_trees_which_then_take_the_writes_made_meanwhile() -> None:
    sim = sim_with_sources(seed=3, sources=1)
    fresh = sim.edges[-1]
    node = sim.nodes[fresh]
    held: list[TreeJob] = []
    take = node.take_job

    # the driver's tree build, held back until released below
    def holding() -> StagedSnapshot | TreeJob | None:
        job = take()
        if isinstance(job, TreeJob):
            held.append(job)
            return None
        return job

    node.take_job = holding  # type: ignore[method-assign]
    sim.start_one(fresh, sim.now)
    t = sim.now
    while not held:
        t += 0.01
        sim.run_until(t)
        assert t < 30, sim.seed
    assert node.bootstrap.ready() and node.bootstrap.settling and node.replica.trees_pending
    for i in range(30):  # pushes and catch-up while the trees are built elsewhere
        sim.write("s", Put(f"k{(i * 97) % KEYS:05d}", b"after"))
        sim.write("s", Put(f"new{i:03d}", b"key"))
    sim.write("s", Delete("k00002"))
    sim.run_until(sim.now + 3.0)
    assert node.replica.state("s", "new029") is not None  # applied, into the tree logs
    assert node.replica.trees_pending  # nothing built a tree on the event loop meanwhile
    assert node.antientropy.next_deadline() > sim.now  # anti-entropy waits for the trees
    job = held.pop()
    node.finish_job(job, job.build(), sim.now)
    assert node.counters["snapshot_trees_installed"] == 1 and not node.bootstrap.settling
    assert not any(sr.changes.pending for sr in node.replica.stores.values())  # logs too
    assert node.replica.root == sim.origin.replica.root, sim.seed
    sim.run_until(sim.now + 3.0)
    assert node.replica.root == sim.origin.replica.root
    changed = [(s, k) for s, k, _ in node.replica.changes_since(0)]
    assert changed == [(s, k) for s, k, _ in sim.origin.replica.changes_since(0)]
    assert not sim.check.violations


def test_a_snapshots_trees_wait_until_the_node_is_ready_or_sync_timeout() -> None:
    """Rule 7: the tree job of an installed snapshot is not handed out while the catch-up
    after it is under way (it would share the CPU with it), nor held past `sync_timeout`."""
    sim = sim_with_sources(seed=3, sources=1)
    fresh = sim.edges[-1]
    node = sim.nodes[fresh]
    node.bootstrap.target = sim.origin.replica.watermark + 10**6  # never reached: not ready
    taken: list[float] = []
    take = node.take_job

    def watching() -> StagedSnapshot | TreeJob | None:
        job = take()
        if isinstance(job, TreeJob):
            taken.append(sim.now)
        return job

    node.take_job = watching  # type: ignore[method-assign]
    sim.start_one(fresh, sim.now)
    t = sim.now
    while not node.counters["snapshots_installed"]:
        t += 0.01
        sim.run_until(t)
        assert t < 30, sim.seed
    installed = sim.now
    sim.run_until(installed + node.config.sync_timeout - 0.05)
    assert not taken and node.replica.trees_pending
    sim.run_until(installed + node.config.sync_timeout + 0.05)
    assert len(taken) == 1 and not node.replica.trees_pending


def test_a_restarted_edge_takes_its_delta_first_and_builds_its_trees_once_caught_up() -> None:
    # rule 10: loaded without trees, gossip at once; the trees' job waits until the delta
    # is in (built alongside, its thread starved the stream) and is then handed out
    sim = sim_with_sources(seed=13, sources=1)
    back = sim.edges[-1]
    loaded = Replica()  # what a restart's load leaves: states, no trees
    groups = {name: dict(sr.states) for name, sr in filled().stores.items()}
    bulk_load_stores(loaded, groups, [(1, KEYS + 2)], trees=False)
    give(sim, back, loaded)
    for i in range(0, KEYS, 3):  # a thousand keys changed while it was away
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.run_until(sim.now + 0.5)
    node = sim.nodes[back]
    taken: list[tuple[bool, bool, int]] = []
    take = node.take_job

    def watching():  # type: ignore[no-untyped-def]
        job = take()
        if isinstance(job, TreeJob):
            boot = node.bootstrap
            taken.append((boot.active, boot.ready(), node.counters["snapshot_deltas"]))
        return job

    node.take_job = watching  # type: ignore[method-assign]
    node.defer_trees(sim.now)  # as EdgeNode does after a load, before gossip starts
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + 0.05)
    assert node.bootstrap.settling and node.replica.trees_pending and not taken
    sim.run_until(sim.now + 5.0)
    assert taken == [(False, True, 1)], sim.seed  # after the delta, once, caught up
    assert not node.bootstrap.settling and not node.replica.trees_pending
    assert node.replica.root == sim.origin.replica.root
    assert not sim.check.violations


def test_a_restarted_edge_that_hears_nothing_builds_its_trees_after_sync_timeout() -> None:
    sim = sim_with_sources(seed=14, sources=1)
    back = sim.edges[-1]
    loaded = Replica()
    bulk_load_stores(loaded, {n: dict(sr.states) for n, sr in filled().stores.items()}, trees=False)
    give(sim, back, loaded)
    sim.partition([back], [ORIGIN, *sim.edges[:-1]])
    node = sim.nodes[back]
    node.defer_trees(sim.now)
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + node.config.sync_timeout - 0.1)
    assert node.replica.trees_pending and node.bootstrap.settling
    sim.run_until(sim.now + 0.2)
    assert not node.replica.trees_pending and not node.bootstrap.settling


def test_a_signed_session_never_sends_an_unprovable_state_and_then_claims_no_seq() -> None:
    replica = signed(filled(3000))
    seq = replica.watermark
    unproved = {f"k{i:06d}" for i in range(5, 3000, 700)}  # rewritten, never certified
    for k in sorted(unproved):
        seq += 1
        replica.apply("s", k, Register(seq, 0, b"unsigned", None))
    server = SnapshotServer(replica, config(), Counter())
    got: dict[str, object] = {}
    wms = set()
    req = snap_req(1, None, 4, True)
    for _ in range(1000):
        for send in server.on_req("x", req, 0.0):
            chunk = parse_chunk(FrameDecoder().feed(encode_frame(send.message))[0])
            wms.add(chunk.wm)
            if chunk.store == "s":
                got.update(zip(chunk.keys, chunk.states, strict=True))
        if not server.sessions:
            break
        req = snap_req(1, None, 4, False)
    assert server.counters["snapshot_unprovable"] == len(unproved)
    assert set(replica.stores["s"].states) - set(got) == unproved
    assert all(got[k] == replica.state("s", k) for k in got)
    assert 0 in wms  # the chunks after the first unprovable state claim no seq


def _back_with_file_loading(
    seed: int, whole_share: float = 2.0, sources: int = 1
) -> tuple[Sim, str, GossipNode]:
    """The origin and one source hold `filled()`; half the keys then change (past the switch
    point) and a new key appears; edge `back` restarts with an empty live replica while its
    file (`filled()`, watermark KEYS + 2) is still loading (snapshot.py rule 11).  Its delta
    is taken as one whatever its size unless `whole_share` says otherwise (rule 12)."""
    sim = sim_with_sources(seed=seed, sources=sources)
    back = sim.edges[-1]
    for i in range(0, KEYS, 2):
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.write("s", Put("new", b"key"))
    sim.run_until(sim.now + 0.5)
    node = sim.nodes[back]
    node.bootstrap.whole_share = whole_share
    node.expect_base(KEYS + 2)
    sim.start_one(back, sim.now)
    return sim, back, node


def test_a_restart_with_a_large_delta_drops_its_file_and_takes_the_whole_store() -> None:
    sim, back, node = _back_with_file_loading(seed=23, whole_share=0.4)  # half changed
    sim.run_until(sim.now + 0.2)
    assert node.counters["snapshot_file_dropped"] == 1, sim.seed
    assert not node.bootstrap.wants_file()  # the loader stops reading rows
    sim.write("s", Put("k00003", b"during"))  # pushed meanwhile: joined at the install
    sim.run_until(sim.now + 5.0)
    source = sim.nodes[sim.edges[0]]  # from the caught-up edge, not the origin
    assert source.counters["snapshot_keys_served"] >= KEYS, sim.seed
    assert sim.origin.counters["snapshot_keys_served"] == 0
    _install_file(sim, back, None)  # what the loader reports once stopped: nothing
    assert node.bootstrap.ready(), sim.seed
    assert node.counters["snapshots_installed"] == 1 and node.counters["snapshot_deltas"] == 0
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.state("s", "k00003") == sim.origin.replica.state("s", "k00003")
    assert node.replica.watermark == sim.origin.replica.watermark
    assert not sim.check.violations


def test_the_origin_serves_a_restart_its_large_delta_not_the_whole_store() -> None:
    sim, _back, node = _back_with_file_loading(seed=26, whole_share=0.4, sources=0)
    sim.run_until(sim.now + 3.0)  # the delta streams from the origin while the file loads
    assert node.counters["snapshot_offers"] == 1 and node.bootstrap.wants_file(), sim.seed
    assert node.counters["snapshot_file_dropped"] == 0
    assert 0 < sim.origin.counters["snapshot_keys_served"] <= KEYS // 2 + 10


def test_a_restart_with_a_small_delta_keeps_its_file() -> None:
    sim = sim_with_sources(seed=24, sources=1)
    back = sim.edges[-1]
    for i in range(0, KEYS, 4):  # a quarter changed: under the default share (0.5)
        sim.write("s", Put(f"k{i:05d}", b"changed"))
    sim.run_until(sim.now + 0.5)
    node = sim.nodes[back]
    node.expect_base(KEYS + 2)
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + 3.0)
    assert node.counters["snapshot_offers"] == 1 and node.bootstrap.wants_file(), sim.seed
    assert node.counters["snapshot_file_dropped"] == 0
    served = sum(n.counters["snapshot_keys_served"] for n in sim.nodes.values())
    assert 0 < served <= KEYS // 4 + 10


def _install_file(sim: Sim, back: str, loaded: Replica | None) -> None:
    node = sim.nodes[back]
    sim._send(
        back, node.install_base(loaded, [] if loaded is None else loaded.defer_trees(), sim.now)
    )
    sim._after(back)


def test_a_restart_takes_its_delta_while_its_file_loads_and_is_ready_only_after_both() -> None:
    sim, back, node = _back_with_file_loading(seed=21)
    sim.run_until(sim.now + 3.0)  # the delta streams and ends while the file still loads
    assert node.counters["snapshot_requests"] == 1, sim.seed
    served = sum(n.counters["snapshot_keys_served"] for n in sim.nodes.values())
    assert 0 < served <= KEYS // 2 + 10  # from the file's watermark: only the changed keys
    assert node.bootstrap.state == "built"  # staged, waiting for the file
    assert not node.bootstrap.ready() and node.replica.watermark < KEYS + 2
    assert node.bootstrap.settling  # no anti-entropy on a replica without its file
    for i in range(1, 100, 2):  # written while the file still loads: pushed, not lost
        sim.write("s", Put(f"k{i:05d}", b"during"))
    sim.run_until(sim.now + 0.5)
    assert not node.bootstrap.ready()
    _install_file(sim, back, filled())
    sim.run_until(sim.now + 5.0)
    assert node.bootstrap.ready(), sim.seed
    assert node.counters["snapshot_deltas"] == 1 and node.counters["snapshots_installed"] == 0
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.replica.state("s", "k00001") == sim.origin.replica.state("s", "k00001")
    assert node.replica.state("s", "k00101") == filled().state("s", "k00101")  # from the file
    assert not sim.check.violations


def test_a_file_loaded_mid_delta_is_joined_and_a_large_delta_rebuilt_with_it() -> None:
    sim, back, node = _back_with_file_loading(seed=22)
    node.bootstrap.delta_stage_from = 300
    t = sim.now
    while node.bootstrap.progress.keys < 400:  # mid-transfer
        t += 0.005
        sim.run_until(t)
        assert t < 30, sim.seed
    _install_file(sim, back, filled())
    assert node.replica.state("s", "k00003") is not None  # served from the file at once
    assert node.bootstrap.active and not node.bootstrap.ready()
    sim.write("s", Put("k00005", b"during"))
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshot_delta_rebuilds"] == 1, sim.seed
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.bootstrap.ready()
    assert not sim.check.violations


def _file_base(file: Replica) -> FileBase:
    """`file` as a restart's loader reads it (rows not indexed)."""
    groups = {name: dict(sr.states) for name, sr in file.stores.items()}
    return FileBase(groups, list(file.covered), file.purged, [])


def _assert_built_with_file(sim: Sim, node: GossipNode, file: Replica, during: str) -> None:
    """One rebuild of the file with its delta: the file's keys, the key written during the
    transfer, equal to the origin, with nothing repaired by anti-entropy (every chunk is in
    the build, those that arrived after the file was kept too)."""
    assert node.counters["snapshot_delta_rebuilds"] == 1, sim.seed
    assert node.counters["ae_states_received"] == 0, sim.seed
    assert node.bootstrap.ready()
    assert node.replica.state("s", "k00101") == file.state("s", "k00101")
    assert node.replica.state("s", during) == sim.origin.replica.state("s", during)
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert not sim.check.violations


def test_a_file_read_after_its_large_delta_is_built_with_it_into_one_replica() -> None:
    sim, back, node = _back_with_file_loading(seed=25)
    node.bootstrap.delta_stage_from = 300  # 1,500 changed keys: a large delta
    sim.run_until(sim.now + 3.0)  # the delta is staged whole while the file still loads
    assert node.bootstrap.state == "built" and node.bootstrap.file_pending
    sim.write("s", Put("k00007", b"during"))  # pushed meanwhile: joined at the install
    sim.run_until(sim.now + 0.5)
    file = filled()
    assert node.join_file(_file_base(file))
    assert node.bootstrap.file_pending  # not in the live replica before the build
    sim._after(back)  # the driver takes the job: one build of the file and the delta
    assert not node.bootstrap.file_pending
    sim.run_until(sim.now + 5.0)
    _assert_built_with_file(sim, node, file, "k00007")


def test_a_file_read_while_its_large_delta_streams_is_kept_and_built_with_it() -> None:
    sim, _back, node = _back_with_file_loading(seed=27)
    node.bootstrap.delta_stage_from = 300  # 1,500 changed keys: a large delta
    t = sim.now
    while node.bootstrap.progress.keys <= 300:  # past the threshold, still streaming
        t += 0.005
        sim.run_until(t)
        assert t < sim.now + 30, sim.seed
    assert node.bootstrap.state == "running", sim.seed
    file = filled()
    assert node.join_file(_file_base(file))
    assert node.bootstrap.file_pending and not node.bootstrap.ready()
    assert node.bootstrap.floor() == KEYS + 2  # asks from the file's watermark meanwhile
    sim.write("s", Put("k00009", b"during"))  # pushed meanwhile: joined at the install
    sim.run_until(sim.now + 5.0)  # the delta ends; the driver builds it with the file, once
    assert not node.bootstrap.file_pending, sim.seed
    _assert_built_with_file(sim, node, file, "k00009")


def test_a_file_read_before_its_announced_large_delta_arrived_is_kept_for_one_build() -> None:
    """snapshot_file.py rule 3: the offer said the delta is large, so a file that loads
    before much of it arrived is kept and built with it once, not indexed and rebuilt."""
    sim, _back, node = _back_with_file_loading(seed=26)
    node.bootstrap.delta_stage_from = 300  # 1,500 changed keys announced: a large delta
    sim.run_until(sim.now + 0.02)
    assert node.bootstrap.state == "running" and node.bootstrap.progress.keys <= 300
    file = filled()
    assert node.join_file(_file_base(file))  # kept
    assert node.bootstrap.file_pending
    sim.write("s", Put("k00009", b"during"))
    sim.run_until(sim.now + 5.0)
    _assert_built_with_file(sim, node, file, "k00009")


def test_a_file_read_while_a_small_announced_delta_streams_is_indexed_and_served_at_once() -> None:
    sim, back, node = _back_with_file_loading(seed=28)
    node.bootstrap.delta_stage_from = 5_000  # 1,500 changed keys announced: a small delta
    sim.run_until(sim.now + 0.02)
    assert node.bootstrap.state == "running"
    assert not node.join_file(_file_base(filled()))  # indexed by the driver, then adopted
    _install_file(sim, back, filled())
    assert not node.bootstrap.file_pending and node.bootstrap.active
    assert node.replica.state("s", "k00101") == filled().state("s", "k00101")  # served now
    sim.run_until(sim.now + 5.0)
    assert node.counters["snapshot_deltas"] == 1, sim.seed
    assert node.counters["snapshot_delta_rebuilds"] == 0
    assert node.replica.root == sim.origin.replica.root
    assert node.bootstrap.ready()


def test_a_file_that_fails_to_load_turns_its_delta_into_a_whole_snapshot() -> None:
    sim, back, node = _back_with_file_loading(seed=23)
    sim.run_until(sim.now + 3.0)
    assert node.bootstrap.state == "built"
    _install_file(sim, back, None)  # a damaged row: the file was moved aside
    sim.run_until(sim.now + 8.0)
    assert node.counters["snapshots_installed"] == 1, sim.seed
    assert node.replica.root == sim.origin.replica.root
    assert node.replica.watermark == sim.origin.replica.watermark
    assert node.bootstrap.ready()


def test_a_restart_with_nothing_changed_is_not_ready_before_its_file() -> None:
    sim = sim_with_sources(seed=24, sources=1)
    back = sim.edges[-1]
    node = sim.nodes[back]
    node.expect_base(KEYS + 2)  # the origin's watermark: nothing changed meanwhile
    sim.start_one(back, sim.now)
    sim.run_until(sim.now + 2.0)
    assert node.bootstrap.target == KEYS + 2
    assert not node.bootstrap.ready() and node.counters["snapshot_offers"] == 0
    _install_file(sim, back, filled())
    sim.run_until(sim.now + 2.0)
    assert node.bootstrap.ready()
    assert node.replica.root == sim.origin.replica.root


def changed_after(keys: int, changed: range) -> tuple[Replica, int, list[str]]:
    """`filled(keys)`, its watermark, and the keys at positions `changed` written after it."""
    r = filled(keys)
    base = r.watermark
    names = [f"k{i:05d}" for i in changed]
    for i, key in enumerate(names):
        r.apply("s", key, Register(base + 1 + i, 5, b"new", None))
    r.covered.update([(1, base + len(names))])
    return r, base, names


def test_a_sparse_delta_walks_the_changed_keys_in_one_request() -> None:
    """61 changed keys of 60,000 (and one removed since): the delta walks the store's change
    log, so one request carries them all in key order, examining no unchanged key; a scan of
    the store's keys took a request per ~16,000 keys, which a source starved of CPU needed
    minutes for (BENCHMARKS.md, the ten-edge step)."""
    r, base, changed = changed_after(60_000, range(7, 60_000, 997))
    gone = changed.pop(3)
    r.remove("s", gone)
    counters: Counter[str] = Counter()
    server = SnapshotServer(r, GossipConfig(), counters)
    out = server.on_req("p", snap_req(7, None, 8, True, base), 0.0)
    assert out[-1].message["last"]
    assert [k for s in out for k in s.message["keys"]] == sorted(changed)
    assert counters["snapshot_keys_served"] == len(changed)


def test_a_peer_choosing_since_gets_a_bounded_session_whatever_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`since` is the requester's word: past every seq the delta ends at once, empty; so far
    back that more than SPARSE_KEYS keys changed, the session scans and keeps no key list;
    in between it keeps at most SPARSE_KEYS keys of one store at a time."""
    from edgekv.gossip import snapshot_server
    from edgekv.gossip.fields import MAX_SEQ

    monkeypatch.setattr(snapshot_server, "SPARSE_KEYS", 100)
    r, base, changed = changed_after(5_000, range(0, 5_000, 50))
    server = SnapshotServer(r, GossipConfig(snapshot_chunk_bytes=1024), Counter())
    out = server.on_req("p", snap_req(1, None, 4, True, MAX_SEQ), 0.0)
    assert out[-1].message["last"] and not [k for s in out for k in s.message["keys"]]
    server.on_req("p", snap_req(2, None, 2, True, 1), 0.0)  # the metadata store, then "s"
    assert server.sessions[("p", 2)].changed == ("s", None)  # scanned: no list kept
    server.on_req("p", snap_req(3, None, 2, True, base), 0.0)
    kept = server.sessions[("p", 3)].changed
    assert kept is not None and kept[0] == "s" and kept[1] == changed  # 100 keys: the limit


def test_a_delta_resumed_after_a_cursor_walks_only_the_changed_keys_past_it() -> None:
    """A resume (another peer, the same `since`) starts after the cursor in the changed keys."""
    r, base, changed = changed_after(30_000, range(5, 30_000, 301))
    server = SnapshotServer(r, GossipConfig(), Counter())
    after = ("s", changed[40])
    out = server.on_req("p", snap_req(9, after, 4, True, base), 0.0)
    assert [k for s in out for k in s.message["keys"]] == changed[41:]
    assert out[-1].message["last"]


def test_a_sparse_delta_examines_a_bounded_number_of_keys_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delta that scans the store's keys (more than SPARSE_KEYS changed): each request's
    work is bounded by the keys it examines (not only by the bytes it sends), the stream
    still carries every changed key once and ends."""
    from edgekv.gossip import snapshot_server

    monkeypatch.setattr(snapshot_server, "SPARSE_KEYS", 0)
    r, base, changed = changed_after(60_000, range(7, 60_000, 997))
    server = SnapshotServer(r, GossipConfig(), Counter())
    examined = snapshot_server.FILTER_COST * (
        snapshot_server.SCAN_PER_REQUEST + snapshot_server.SCAN_KEYS
    )
    out = server.on_req("p", snap_req(7, None, 8, True, base), 0.0)
    assert not out[-1].message["last"]
    store, key = server.sessions[("p", 7)].cursor  # type: ignore[misc]
    assert store == "s" and r.stores["s"].keys.index(key) < examined
    keys = [k for s in out for k in s.message["keys"]]
    at = r.stores["s"].keys.index(key)
    while not out[-1].message["last"]:
        out = server.on_req("p", snap_req(7, None, 1, False), 0.0)
        keys += [k for s in out for k in s.message["keys"]]
        session = server.sessions.get(("p", 7))
        if session is not None:  # (the last chunk ends it)
            now_at = r.stores["s"].keys.index(session.cursor[1])  # type: ignore[index]
            assert 0 < now_at - at <= examined
            at = now_at
    assert keys == changed


def test_a_dense_delta_filters_each_key_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of 40,000 keys changed: the delta's filter windows follow what each chunk used,
    so the keys filtered add up to little more than the store (a fixed window of 16,384 keys
    filtered each key four times over), and the stream carries every changed key once."""
    from edgekv.gossip import snapshot_server

    monkeypatch.setattr(snapshot_server, "SPARSE_KEYS", 0)
    r, base, changed = changed_after(40_000, range(0, 40_000, 2))
    filtered = []
    newer = snapshot_server._newer

    def counting(window: list[str], states: dict[str, State], since: int) -> list[int]:
        filtered.append(len(window))
        return newer(window, states, since)

    monkeypatch.setattr(snapshot_server, "_newer", counting)
    server = SnapshotServer(r, GossipConfig(snapshot_chunk_bytes=8192), Counter())
    out = server.on_req("p", snap_req(3, None, 4, True, base), 0.0)
    keys = [k for s in out for k in s.message["keys"]]
    while not out[-1].message["last"]:
        out = server.on_req("p", snap_req(3, None, 4, False), 0.0)
        keys += [k for s in out for k in s.message["keys"]]
    assert keys == changed
    assert sum(filtered) <= 1.5 * len(r.stores["s"].keys)
