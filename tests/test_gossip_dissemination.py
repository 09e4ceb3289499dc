"""Dissemination on the discrete-event simulator: pushes reach everyone, prune/graft build a
tree (about N-1 messages per batch in the steady state), lost pushes are repaired by graft."""

from __future__ import annotations

import pytest

from edgekv.crdt import Put, Register
from edgekv.gossip import GossipConfig, Send
from gossip_sim import ORIGIN, Sim


def warm(sim: Sim, t: float = 3.0) -> None:
    sim.start()
    sim.run_until(t)
    sim.create_store("s")
    sim.run_until(t + 1.0)


def write_stream(sim: Sim, start: float, n: int, every: float, prefix: str = "k") -> list[int]:
    seqs = []
    t = start
    for i in range(n):
        sim.run_until(t)
        s = sim.write("s", Put(f"{prefix}{i % 97}", b"v%d" % i))
        assert s is not None
        seqs.append(s)
        t += every
    return seqs


def test_every_write_reaches_every_edge() -> None:
    sim = Sim(12, seed=3)
    warm(sim)
    seqs = write_stream(sim, 5.0, 200, 0.01)
    sim.run_until(8.0)
    assert not sim.missing(), f"seed {sim.seed}"
    assert sim.converged()
    assert not sim.check.violations
    prop = sim.propagation(seqs)
    assert len(prop) == len(seqs) and max(prop) < 1.0


def test_steady_state_is_a_tree_about_n_minus_1_pushes_per_batch() -> None:
    sim = Sim(25, seed=4)
    warm(sim)
    write_stream(sim, 5.0, 300, 0.01)  # the tree forms on the first batches
    sim.run_until(8.5)
    before_push, before_prune = sim.messages["PUSH"], sim.messages["PRUNE"]
    batches_before = sim.origin.counters["pushes_sent"]
    write_stream(sim, 9.0, 1000, 0.01)
    sim.run_until(20.0)
    pushes = sim.messages["PUSH"] - before_push
    origin_flushes = sim.origin.counters["pushes_sent"] - batches_before
    eager = len(sim.origin.dissemination.eager)
    batches = origin_flushes / eager
    per_batch = pushes / batches
    assert 24 <= per_batch <= 27, (per_batch, batches)  # N-1 = 25 links for 26 nodes
    assert sim.messages["PRUNE"] - before_prune == 0
    assert sim.converged() and not sim.missing()


def test_pruned_links_become_lazy_and_origin_is_never_an_edge_target() -> None:
    sim = Sim(15, seed=5, config=GossipConfig(origin_fanout=4))  # edges relay to the others
    warm(sim)
    write_stream(sim, 5.0, 100, 0.01)
    sim.run_until(8.0)
    total_prunes = sum(n.counters["prunes_sent"] for n in sim.nodes.values())
    assert total_prunes > 0
    assert sum(len(n.dissemination.lazy) for n in sim.nodes.values()) > 0
    for addr in sim.edges:
        d = sim.nodes[addr].dissemination
        assert ORIGIN not in d.eager
        assert d._parent is not None  # every edge has a tree parent


def test_within_the_origins_fanout_edges_relay_nothing_and_notices_repair_a_loss() -> None:
    """Rule 2: with every member within `origin_fanout`, the origin pushes to each edge itself,
    so an edge relays none of its pushes (from the first write on: no duplicates to prune);
    its neighbours get the lazy notices, so a lost push is still noticed at once."""
    sim = Sim(12, seed=3, latency=0.02)
    warm(sim)
    pushers: set[str] = set()
    send = sim._send

    def spy(src: str, sends: list) -> None:  # type: ignore[type-arg]
        if any(s.message["t"] == 10 for s in sends):
            pushers.add(src)
        send(src, sends)

    sim._send = spy  # type: ignore[method-assign]
    seqs = write_stream(sim, 5.0, 300, 0.01)
    victim = "edge-4"
    lost = drop_first(sim, "PUSH", victim, after=8.5)
    t = 9.0
    sim.run_until(t)
    s = sim.write("s", Put("lone", b"x"))  # a single write: no later push reveals a gap
    assert s is not None
    sim.run_until(10.0)
    assert pushers == {ORIGIN}
    assert not sim.missing() and sim.converged()
    assert max(sim.propagation(seqs)) < 0.1
    assert lost and sim.check.delivered[(victim, s)] - sim.acked[s] < 0.3
    assert sum(n.counters["prunes_sent"] for n in sim.nodes.values()) == 0


def test_lost_pushes_are_repaired_by_graft() -> None:
    sim = Sim(20, seed=6, loss=0.05, latency=0.05, jitter=0.02)
    warm(sim)
    seqs = []
    t = 5.0
    for i in range(10):  # single writes: no later push reveals a gap
        sim.run_until(t)
        s = sim.write("s", Put(f"single-{i}", b"x"))
        assert s is not None
        seqs.append(s)
        t += 1.0
    sim.run_until(t + 3.0)
    assert not sim.missing(), f"seed {sim.seed}"
    grafts = sum(n.counters["grafts_sent"] for n in sim.nodes.values())
    assert grafts > 0
    prop = sim.propagation(seqs)
    assert max(prop) < 1.5


def test_gap_in_covers_triggers_graft_to_a_holder() -> None:
    sim = Sim(6, seed=7, config=GossipConfig(push_again=0))  # no repeated pushes to repair it
    warm(sim)
    victim = "edge-2"
    sim.run_until(5.0)
    sim.crash(victim)  # misses one write entirely
    sim.write("s", Put("a", b"1"))
    sim.run_until(5.05)
    sim.up.add(victim)  # back before anyone notices; the next pushes show a gap
    write_stream(sim, 5.1, 20, 0.01)
    sim.run_until(6.5)
    node = sim.nodes[victim]
    assert node.counters["grafts_sent"] >= 1
    assert node.replica.watermark == sim.seq


def test_edge_publish_applies_without_pushing() -> None:
    sim = Sim(3, seed=8)
    warm(sim)
    edge = sim.nodes["edge-0"]
    from edgekv.crdt import Register

    delta = Register(sim.seq + 1, 0, b"rw", None)
    assert edge.publish([("s", "mine", delta)], [(sim.seq + 1, sim.seq + 1)], sim.now) == []
    assert edge.replica.state("s", "mine") == delta
    assert [c.key for c in edge.drain_changes()] == ["mine"]
    assert edge.dissemination.outbox == {}


def test_config_rejects_nonsense() -> None:
    import pytest

    from edgekv.errors import InvalidInput

    with pytest.raises(InvalidInput):
        GossipConfig(ping_interval=0)
    with pytest.raises(InvalidInput):
        GossipConfig(fanout=0)
    with pytest.raises(InvalidInput):
        GossipConfig(push_window=float("nan"))
    with pytest.raises(InvalidInput):
        GossipConfig(push_min_window=-0.001)
    assert GossipConfig().hop_limit(26) >= 5


def _propagation_p50(latency: float, config: GossipConfig) -> float:
    sim = Sim(6, seed=9, latency=latency, config=config)
    warm(sim, 8.0)  # every edge probed by the origin at least once
    seqs = write_stream(sim, 12.0, 200, 0.02)  # 50 writes/s: always within push_window
    sim.run_until(18.0)
    assert not sim.missing() and sim.converged()
    prop = sorted(sim.propagation(seqs))
    return prop[len(prop) // 2]


def test_window_adapts_to_a_fast_link_and_stays_full_on_a_slow_one() -> None:
    fixed = GossipConfig(push_rtt_factor=0)
    adaptive = GossipConfig()
    assert adaptive.push_rtt_factor > 0
    # 1 ms links: a fixed 150 ms window holds most writes back for most of the window
    assert _propagation_p50(0.001, fixed) > 0.05
    assert _propagation_p50(0.001, adaptive) < 0.015
    # 100 ms links: round trips of 200 ms, so the window stays push_window (batching kept)
    slow = Sim(6, seed=9, latency=0.1)
    warm(slow, 8.0)
    assert slow.origin.dissemination.window("edge-1", 0.15) == 0.15
    assert 0.15 < slow.origin.dissemination.members.rtt("edge-1") < 0.3


def test_a_write_after_a_quiet_spell_leaves_the_origin_at_once() -> None:
    """Nagle-style: with nothing sent to a peer within its window, the origin pushes a write
    at once (no `relay_window` hold: a commit group is one batch already), so on a fast link
    a lone write reaches every direct child one link delay after its ack; a relay still
    holds `relay_window`."""
    sim = Sim(6, seed=9, latency=0.001)
    warm(sim, 8.0)
    assert sim.origin.dissemination.window("edge-1", 0.15) < 0.01  # the round trip is known
    seqs: list[int] = []
    for t in (12.0, 12.5):
        sim.run_until(t)
        s = sim.write("s", Put(f"q{t}", b"v"))
        assert s is not None
        seqs.append(s)
    sim.run_until(13.0)
    assert not sim.missing() and len(seqs) == 2
    # one link delay (1 ms), not 1 ms + relay_window (2 ms)
    assert max(sim.propagation(seqs)) < 0.0015, sim.propagation(seqs)


def test_the_origins_publish_returns_the_pushes_due_at_once() -> None:
    """After a quiet spell the origin's pushes come back from `publish` itself, not a turn of
    the driver's timer later (on a busy origin that turn came 5-13 ms later at the p90-p99);
    under load (a push within the window) they wait for `tick`."""
    sim = Sim(6, seed=9, latency=0.001)
    warm(sim, 8.0)
    o = sim.origin
    o.note_link_rtt("edge-1", 0.02)  # a 20 ms window toward edge-1 only
    delta = Register(sim.seq + 1, 1000, b"v")
    o.replica.apply("s", "x", delta)
    sent = o.publish([("s", "x", delta)], [(sim.seq + 1, sim.seq + 1)], sim.now)
    assert sorted(s.peer for s in sent) == sorted(o.dissemination.eager)
    assert all(s.message["covers"] == [[sim.seq + 1, sim.seq + 1]] for s in sent)
    delta2 = Register(sim.seq + 2, 1000, b"w")
    o.replica.apply("s", "x", delta2)
    again = o.publish([("s", "x", delta2)], [(sim.seq + 2, sim.seq + 2)], sim.now + 0.005)
    assert "edge-1" not in {s.peer for s in again}  # within its window: batched
    assert "edge-1" in o.dissemination.outbox


def test_the_drivers_link_round_trip_sizes_the_window() -> None:
    """A round trip the driver measured on the link itself (a TCP connection's lowest, without
    either end's scheduling delays, which inflate the SWIM probes' on a loaded host) replaces
    the probes' for the push window; peers outside the member table are not recorded."""
    sim = Sim(6, seed=9, latency=0.1)
    warm(sim, 8.0)
    d = sim.origin.dissemination
    assert d.window("edge-1", 0.15) == 0.15  # probes: 200 ms round trips
    sim.origin.note_link_rtt("edge-1", 0.02)
    sim.origin.note_link_rtt("nobody", 0.02)
    assert d.window("edge-1", 0.15) == pytest.approx(0.02)
    assert d.window("edge-2", 0.15) == 0.15
    assert "nobody" not in d.link_rtts
    # a faster link: the origin's window stops at its floor, push_min_window
    sim.origin.note_link_rtt("edge-1", 0.0001)
    assert d.window("edge-1", 0.15) == pytest.approx(sim.origin.config.push_min_window)


def _flushes(sim: Sim, every: float, n: int) -> tuple[int, list[float]]:
    """Pushes the origin sent to edge-1 while `n` writes came `every` s apart (a 0.1 ms link
    as measured by the driver), and the writes' propagation to every edge."""
    from edgekv.gossip.wire import type_name

    warm(sim, 8.0)
    for e in sim.edges:
        sim.origin.note_link_rtt(e, 0.0002)
    pushes = 0
    send = sim._send

    def counting(src: str, sends: list) -> None:  # type: ignore[type-arg]
        nonlocal pushes
        pushes += sum(
            src == ORIGIN and s.peer == "edge-1" and type_name(s.message["t"]) == "PUSH"
            for s in sends
        )
        send(src, sends)

    sim._send = counting  # type: ignore[method-assign]
    seqs = write_stream(sim, 12.0, n, every)
    sim.run_until(12.0 + n * every + 1.0)
    assert not sim.missing() and sim.converged()
    return pushes, sim.propagation(seqs)


def test_under_load_the_origin_batches_pushes_on_a_fast_link() -> None:
    """Nagle-style (rule 1): on a link of a few hundred microseconds a write after a quiet
    spell leaves at once, but while writes come faster than push_min_window the origin
    pushes to a peer at most once per push_min_window, each push carrying every write since
    (on loopback every commit group was its own push to every edge)."""
    floor = GossipConfig().push_min_window
    assert floor > 0
    n, every = 400, 0.001  # 1,000 writes/s for 0.4 s
    pushes, prop = _flushes(Sim(6, seed=9, latency=0.0001), every, n)
    assert pushes <= 1.2 * n * every / floor + 5, pushes  # not one per write (400)
    assert max(prop) <= floor + 0.002, max(prop)  # held at most one floor (+ link delays)
    # without the floor: one push per write
    unbatched, _ = _flushes(
        Sim(6, seed=9, latency=0.0001, config=GossipConfig(push_min_window=0)), every, n
    )
    assert unbatched >= 0.9 * n, unbatched
    # a write after a quiet spell still leaves at once
    _, quiet = _flushes(Sim(6, seed=9, latency=0.0001), 0.05, 20)
    assert max(quiet) < 0.001, max(quiet)


def drop_first(sim: Sim, kind: str, dst: str, after: float, count: int = 1) -> list[float]:
    """Make the simulated network lose the next `count` messages of type `kind` to `dst` sent
    after `after`; returns (filled in) the times they were dropped."""
    from edgekv.gossip.wire import type_name

    dropped: list[float] = []
    send = sim._send

    def lossy(src: str, sends: list) -> None:  # type: ignore[type-arg]
        keep = []
        for s in sends:
            if (
                len(dropped) < count
                and sim.now >= after
                and s.peer == dst
                and type_name(s.message["t"]) == kind
                and (kind != "PUSH" or s.message["covers"])
            ):
                dropped.append(sim.now)
                continue
            keep.append(s)
        send(src, keep)

    sim._send = lossy  # type: ignore[method-assign]
    return dropped


def test_lost_push_under_load_is_repaired_within_a_few_round_trips() -> None:
    sim = Sim(12, seed=7, latency=0.05, jitter=0.01)
    warm(sim)
    victim = "edge-5"
    dropped = drop_first(sim, "PUSH", victim, after=5.3)
    seqs = write_stream(sim, 5.0, 100, 0.01)  # 100 writes/s
    sim.run_until(7.5)
    assert dropped and not sim.missing(), f"seed {sim.seed}"
    # the writes acked before the lost push left: the victim got them at most a window (the
    # next push repeats the lost one) plus a round trip late, not after a timer or a ping
    late = [
        sim.check.delivered[(victim, s)] - sim.acked[s]
        for s in seqs
        if dropped[0] - 0.2 <= sim.acked[s] <= dropped[0]
    ]
    assert late and max(late) < 0.5, max(late)
    assert sim.nodes[victim].counters["repaired_by_again"] >= 1


def test_lost_graft_answer_is_retried_after_round_trips_not_a_fixed_timer() -> None:
    cfg = GossipConfig(push_again_bytes=0, graft_peers=1, graft_retry=3.0)
    sim = Sim(8, seed=7, latency=0.05, config=cfg)
    warm(sim)
    victim = "edge-3"
    lost_push = drop_first(sim, "PUSH", victim, after=5.2)
    lost_answer = drop_first(sim, "SYNC_DATA", victim, after=5.2)
    write_stream(sim, 5.0, 50, 0.01)
    sim.run_until(8.0)
    assert lost_push and lost_answer and not sim.missing(), f"seed {sim.seed}"
    node = sim.nodes[victim]
    assert node.counters["grafts_sent"] >= 2  # the first graft's answer was lost
    gap = max(
        sim.check.delivered[(victim, s)] - sim.acked[s]
        for s in range(1, sim.seq + 1)
        if sim.acked[s] >= 5.0
    )
    assert gap < 1.0, gap  # a fixed graft_retry would cost 3 s


def test_glomers_setting_messages_per_write_and_latency() -> None:
    sim = Sim(25, seed=1, latency=0.1, loss=0.01)
    warm(sim)
    write_stream(sim, 5.0, 200, 0.01, "warm")  # the tree forms (first prunes) under load
    sim.messages.clear()
    seqs = write_stream(sim, 7.0, 400, 0.01)  # then 100 writes/s for 4 s, counted
    sim.run_until(11.0)
    per_write = sim.total_messages() / len(seqs)
    sim.run_until(13.0)
    prop = sim.propagation(seqs)
    assert not sim.missing() and len(prop) == len(seqs), f"seed {sim.seed}"
    assert per_write <= 4.0, per_write
    assert sorted(prop)[len(prop) // 2] <= 0.4 and max(prop) <= 0.6, (max(prop), sim.seed)


def test_a_relay_that_beats_the_origin_is_pruned_not_the_origin() -> None:
    """A relay's copy of a push arrives before the origin's own (a busy host scheduled the
    origin late): the edge takes the origin as its parent and prunes the relay, so the origin
    keeps its direct child (one hop) instead of losing it to a two-hop path."""
    from edgekv.gossip.wire import MsgType

    sim = Sim(6, seed=6)
    warm(sim)
    write_stream(sim, 5.0, 20, 0.05)
    sim.run_until(7.0)
    edge = next(a for a in sorted(sim.origin.dissemination.eager))
    relay = next(a for a in sim.edges if a != edge)
    sim.nodes[edge].dissemination._pruned.discard(relay)  # as while the tree still forms
    pushes: list[dict[str, object]] = []
    send = sim._send

    def capture(src: str, sends: list[Send]) -> None:
        pushes.extend(
            s.message
            for s in sends
            if src == ORIGIN and s.peer == edge and s.message["t"] == MsgType.PUSH
        )
        send(src, sends)

    sim._send = capture  # type: ignore[method-assign]
    sim.up.discard(edge)  # the origin's push is built and sent, but not delivered
    write_stream(sim, 7.5, 1, 0.05)
    sim.run_until(8.0)
    sim.up.add(edge)
    assert pushes
    msg = pushes[0]  # the push carrying the new write (later ones repeat it)
    node = sim.nodes[edge]
    node.receive(relay, msg, sim.now)  # the relay's copy first: news
    assert node.dissemination._parent == relay
    out = node.receive(ORIGIN, msg, sim.now + 0.001)  # the origin's own copy: a duplicate
    prunes = [s.peer for s in out if s.message["t"] == MsgType.PRUNE]
    assert prunes == [relay]
    assert node.dissemination._parent == ORIGIN


def _streamed(latency: float, cfg: GossipConfig) -> Sim:
    sim = Sim(12, seed=7, latency=latency, config=cfg)
    warm(sim, 2.0)
    write_stream(sim, 3.0, 40, 0.01)  # the tree forms on the first batches
    sim.run_until(4.5)
    return sim


@pytest.mark.parametrize("latency", [0.0005, 0.1])
def test_origin_pushes_to_up_to_origin_fanout_edges_directly(latency: float) -> None:
    """The origin takes origin_fanout eager peers, on fast and slow links alike, so a fleet of
    up to that many edges gets every write in one hop and relays nothing; with a narrower
    root the edges beyond it get writes through relays."""
    cfg = GossipConfig()
    assert cfg.origin_fanout >= 12
    sim = _streamed(latency, cfg)
    assert sim.origin.dissemination.eager == set(sim.edges)
    before = sim.messages["PUSH"]
    flushes = sim.origin.counters["pushes_sent"]
    write_stream(sim, 4.5, 40, 0.01)
    sim.run_until(6.0)
    assert sim.messages["PUSH"] - before == sim.origin.counters["pushes_sent"] - flushes
    assert all(sim.nodes[a].dissemination._parent == ORIGIN for a in sim.edges)
    assert sim.converged() and not sim.missing()
    narrow = _streamed(latency, GossipConfig(origin_fanout=4))
    assert len(narrow.origin.dissemination.eager) == 4
    assert any(narrow.nodes[a].dissemination._parent != ORIGIN for a in narrow.edges)
    assert narrow.converged() and not narrow.missing()


def test_the_origin_flushes_peers_with_close_windows_at_one_moment() -> None:
    """A flush at the origin takes the queues due within half their window too, so
    peers whose windows differ a little share flush moments, and one certificate signs each
    batch (crdt/proofs.py rule 2) instead of one per peer's phase."""
    from edgekv.gossip.wire import type_name

    sim = Sim(8, seed=5, latency=0.05, jitter=0.01)
    warm(sim, 10.0)  # every edge probed by the origin: round trips of 100 to 120 ms
    d = sim.origin.dissemination
    windows = {d.window(p, 0.15) for p in d.eager}
    assert len(windows) > 1 and max(windows) <= 1.25 * min(windows)
    moments: dict[float, set[str]] = {}
    send = sim._send

    def record(src: str, sends: list) -> None:  # type: ignore[type-arg]
        for s in sends:
            if src == ORIGIN and type_name(s.message["t"]) == "PUSH" and s.message["covers"]:
                moments.setdefault(sim.now, set()).add(s.peer)
        send(src, sends)

    sim._send = record  # type: ignore[method-assign]
    write_stream(sim, 11.0, 100, 0.01)
    sim.run_until(13.0)
    assert not sim.missing()
    assert len(moments) > 5
    assert all(peers == d.eager for peers in moments.values()), moments


def test_the_origin_builds_one_push_per_flush_moment_for_all_its_peers() -> None:
    """The origin's queues opened at one moment are one queue, and peers with the same pushes
    to repeat get the same message object (rule 1): built once, encoded once by the driver."""
    from edgekv.gossip.wire import type_name

    sim = Sim(6, seed=9, latency=0.0001)
    warm(sim, 8.0)
    for e in sim.edges:
        sim.origin.note_link_rtt(e, 0.0002)
    moments: list[list[object]] = []
    send = sim._send

    def recording(src: str, sends: list) -> None:  # type: ignore[type-arg]
        pushes = [s.message for s in sends if type_name(s.message["t"]) == "PUSH"]
        if src == ORIGIN and pushes:
            moments.append(pushes)
        send(src, sends)

    sim._send = recording  # type: ignore[method-assign]
    write_stream(sim, 12.0, 100, 0.001)
    sim.run_until(13.0)
    assert not sim.missing() and sim.converged()
    assert len(moments) >= 10
    assert all(len(m) == len(sim.edges) for m in moments[2:])
    shapes = [(len(m), len({id(x) for x in m})) for m in moments]
    assert all(d == 1 for _, d in shapes[2:]), shapes


def test_the_floor_adds_no_tail_repeats_on_a_fast_link() -> None:
    """A burst's last push is repeated (a loss on the link is repaired) by the link's window:
    writes 10 ms apart on a 0.2 ms link are no burst, whatever the origin's floor."""
    sim = Sim(6, seed=9, latency=0.0001)
    warm(sim, 8.0)
    for e in sim.edges:
        sim.origin.note_link_rtt(e, 0.0002)
    before = sim.origin.counters["tail_repeats"]
    write_stream(sim, 12.0, 100, 0.01)
    sim.run_until(14.0)
    assert not sim.missing() and sim.converged()
    assert sim.origin.counters["tail_repeats"] == before
