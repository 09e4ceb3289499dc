"""Merkle anti-entropy between two nodes, driven message by message (no network, no clock).

Checks: d = 0 ends in one round trip; d = 1 and d = 100 repair exactly the differing keys; a key
deleted and purged at the origin is removed on the other side, never resurrected, while an
edge's lack deletes nothing; the origin applies nothing a peer sends; covers are claimed only
when a session completes; sessions are bounded by their timeout."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edgekv.crdt import META, Register, Replica, ZSet
from edgekv.gossip import GossipNode, Send
from edgekv.gossip.wire import MsgType, decode_body, encode_frame


def pair(
    keys: int, differing: list[int], origin: str | None = None
) -> tuple[GossipNode, GossipNode]:
    """Two nodes "a" and "b" with `keys` equal keys; b has newer versions of `differing`.
    `origin` names the one that is the origin (the other trusts it), None for two edges."""
    a, b = Replica(), Replica()
    for r in (a, b):
        r.apply(META, "s", Register(1, 0, b"", None))
        for i in range(keys):
            r.apply("s", f"key-{i}", Register(i + 2, 0, b"x", None))
        r.covered.add(1, keys + 1)
    for j, i in enumerate(differing):
        b.apply("s", f"key-{i}", Register(keys + 2 + j, 0, b"y", None))
    if differing:
        b.covered.add(keys + 2, keys + 1 + len(differing))
    origins = [] if origin is None else [origin]
    role = {n: "origin" if n == origin else "edge" for n in "ab"}
    na = GossipNode("a", a, seeds=["b"], rng=random.Random(1), role=role["a"], origins=origins)
    nb = GossipNode("b", b, seeds=["a"], rng=random.Random(2), role=role["b"], origins=origins)
    na.start(0.0)
    nb.start(0.0)
    na.drain_changes()
    nb.drain_changes()
    return na, nb


def run_session(
    na: GossipNode, nb: GossipNode, force: bool = True
) -> tuple[int, list[str], dict[str, list[str]]]:
    """Drive one AE session a -> b to the end; returns (round trips, message types, keys sent)."""
    queue = na.antientropy.start("b", 0.0, force=force)
    src, rounds = "a", 0
    types: list[str] = []
    sent: dict[str, list[str]] = {"a": [], "b": []}
    while queue:
        rounds += 1
        nxt: list[Send] = []
        for s in queue:
            msg = decode_body(encode_frame(s.message)[4:])
            types.append(MsgType(msg["t"]).name)
            if msg["t"] == MsgType.AE_STATES:
                sent[src].extend(k for k, _ in msg["states"])
            dst = nb if src == "a" else na
            nxt.extend(x for x in dst.receive(src, msg, 0.0) if x.message["t"] >= 30)
        queue = nxt
        src = "b" if src == "a" else "a"
    return (rounds + 1) // 2, types, sent


def test_equal_roots_end_in_one_round_trip_and_claim_covers() -> None:
    na, nb = pair(500, [])
    nb.replica.covered.add(600, 700)  # b claims more (equal states: a has it all too)
    rounds, types, _ = run_session(na, nb, force=False)
    assert rounds == 1 and types == ["AE_ROOT", "AE_EQUAL"]
    assert (600, 700) in list(na.replica.covered)
    assert na.counters["ae_equal"] == 1
    (root,) = na.antientropy.start("b", 1.0)
    assert len(encode_frame(root.message)) <= 64  # the whole AE_ROOT frame, digest included


@pytest.mark.parametrize("d", [1, 100])
def test_repairs_exactly_the_differing_keys(d: int) -> None:
    rng = random.Random(d)
    differing = sorted(rng.sample(range(2000), d))
    na, nb = pair(2000, differing)
    assert na.replica.root != nb.replica.root
    rounds, types, sent = run_session(na, nb)
    assert na.replica.root == nb.replica.root
    want = sorted(f"key-{i}" for i in differing)
    assert sent["a"] == []  # a's versions are older: b's supersede them, nothing goes to b
    assert sorted(sent["b"]) == want  # exactly the differing keys stream, once each
    changed = sorted(c.key for c in na.drain_changes())
    assert changed == want  # a applied exactly those keys
    assert nb.drain_changes() == []  # b's states were newer: nothing changed there
    assert rounds == 7  # root, 4 tree levels, leaf, states
    assert "AE_LEAF" in types and types.count("AE_STATES") == 2  # request (want) and answer
    assert na.antientropy.session is None and na.counters["ae_completed"] == 1
    assert na.replica.watermark == nb.replica.watermark  # covers claimed at the end


def test_lacking_side_takes_missing_keys_both_ways() -> None:
    na, nb = pair(50, [])
    nb.replica.apply("s", "only-b", Register(60, 0, b"b", None))
    na.replica.apply("s", "only-a", ZSet(61, {b"m": (61, 1.0)}, 61, 0))
    run_session(na, nb)
    assert na.replica.root == nb.replica.root
    assert na.replica.state("s", "only-b") is not None
    assert nb.replica.state("s", "only-a") is not None


def delete_and_purge_key7(fresh: GossipNode) -> None:
    """key-7 (seq 9) deleted at seq 100 on `fresh`, its tombstone purged there."""
    fresh.replica.apply("s", "key-7", Register(100, 0, None, None))
    fresh.replica.covered.add(52, 100)
    fresh.replica.purge(100, 0)
    assert fresh.replica.state("s", "key-7") is None and fresh.replica.purged == 100


@pytest.mark.parametrize("initiator_has_stale", [True, False])
def test_deleted_and_purged_keys_are_removed_not_resurrected(initiator_has_stale: bool) -> None:
    na, nb = pair(50, [], origin="b" if initiator_has_stale else "a")
    fresh, stale = (nb, na) if initiator_has_stale else (na, nb)
    # key-7 (seq 9) deleted at seq 100 on `fresh`, tombstone purged there; `stale` missed it.
    delete_and_purge_key7(fresh)
    assert stale.replica.state("s", "key-7") is not None
    run_session(na, nb)
    assert stale.replica.state("s", "key-7") is None
    assert fresh.replica.state("s", "key-7") is None
    assert na.replica.root == nb.replica.root
    removed = [c for c in stale.drain_changes() if c.key == "key-7"]
    assert removed and removed[0].state is None
    assert fresh.rejections() == {}  # the honest edge never sent the origin a state


@pytest.mark.parametrize("initiator_has_stale", [True, False])
def test_an_edges_lack_deletes_nothing_and_resurrects_nothing(initiator_has_stale: bool) -> None:
    """Between two edges a lack (with any purge claim) is no evidence of a delete: the key
    stays where it is (only the origin's word removes it) and never comes back where it was
    purged."""
    na, nb = pair(50, [])
    fresh, stale = (nb, na) if initiator_has_stale else (na, nb)
    delete_and_purge_key7(fresh)
    run_session(na, nb)
    assert stale.replica.state("s", "key-7") is not None
    assert fresh.replica.state("s", "key-7") is None


def test_the_origin_applies_nothing_either_way() -> None:
    """An origin in a session, as initiator or responder, sends its states and takes none."""
    for origin in "ab":
        na, nb = pair(200, [5, 17, 150], origin=origin)
        na.replica.apply("s", "only-a", Register(300, 0, b"a", None))
        nb.replica.apply("s", "only-b", Register(301, 0, b"b", None))
        o, e = (na, nb) if origin == "a" else (nb, na)
        before = o.replica.root
        run_session(na, nb)
        assert o.replica.root == before and o.drain_changes() == []
        # an edge sends the origin no states (its newer seqs here are claims it refused)
        assert "states_ignored" not in o.rejections().get("b" if origin == "a" else "a", {})
        assert e.replica.state("s", f"only-{origin}") is not None  # the edge took the origin's


def test_periodic_session_defers_when_only_writes_in_flight_differ() -> None:
    na, nb = pair(50, [3])
    _, types, _ = run_session(na, nb, force=False)
    assert types == ["AE_ROOT", "AE_STORES"]
    assert na.counters["ae_deferred"] == 1 and na.replica.root != nb.replica.root


def test_session_times_out_and_only_one_runs_at_a_time() -> None:
    na, _ = pair(10, [1])
    first = na.antientropy.start("b", 0.0)
    assert first and na.antientropy.start("b", 0.1) == []  # one outgoing session at a time
    na.tick(na.config.ae_timeout + 0.5)
    assert na.counters["ae_timeouts"] == 1
    # a late answer to the dropped session is ignored
    assert (
        na.receive("b", {"t": 37, "sid": first[0].message["sid"], "covers": [[1, 999]]}, 9.0) == []
    )
    assert na.replica.watermark < 999


def test_responder_ignores_requests_for_unknown_sessions() -> None:
    _, nb = pair(10, [])
    out = nb.receive("a", {"t": 32, "sid": 77, "store": "s", "level": 0, "indices": [0]}, 0.0)
    assert out == []


def test_same_reset_sets_are_exchanged_both_ways_and_joined() -> None:
    na, nb = pair(20, [])
    na.replica.apply("s", "z", ZSet(30, {b"a": (30, 1.0), b"b": (31, 2.0)}, 31, 0))
    nb.replica.apply("s", "z", ZSet(30, {b"a": (30, 1.0), b"c": (32, 3.0)}, 32, 0))
    _, _, sent = run_session(na, nb)
    assert sent == {"a": ["z"], "b": ["z"]}  # neither supersedes the other: both travel
    for n in (na, nb):
        z = n.replica.state("s", "z")
        assert isinstance(z, ZSet) and set(z.members) == {b"a", b"b", b"c"}
    assert na.replica.root == nb.replica.root


@pytest.mark.parametrize(
    "lost",
    ["AE_ROOT", "AE_STORES", "AE_NODES_REQ", "AE_NODES", "AE_LEAF", "AE_STATES", "AE_STATES#2"],
)
def test_a_lost_message_is_asked_again_not_waited_out(lost: str) -> None:
    """Rule 8: with any one message of a session lost (a request or its answer), the
    initiator sends the request again after a few round trips and the session completes,
    repairing everything, long before `ae_timeout` would have ended it."""
    na, nb = pair(2000, [3, 700, 1500])
    nodes = {"a": na, "b": nb}
    ae = range(MsgType.AE_ROOT, MsgType.AE_EQUAL + 1)
    queue = [("a", s) for s in na.antientropy.start("b", 0.0, force=True)]
    lost, _, nth = lost.partition(
        "#"
    )  # the nth message of that type (the 2nd AE_STATES: the answer)
    now, dropped, seen = 0.0, 0, 0
    while na.antientropy.session is not None:
        assert now < na.config.ae_timeout, "the session waited for its timeout"
        if not queue:  # nothing in flight: the next timer (a retry) fires
            now = na.next_deadline
            queue = [("a", s) for s in na.tick(now) if s.message["t"] in ae]
            continue
        nxt: list[tuple[str, Send]] = []
        now += 0.01  # one hop
        for src, s in queue:
            msg = decode_body(encode_frame(s.message)[4:])
            if MsgType(msg["t"]).name == lost:
                seen += 1
                if seen == int(nth or 1):
                    dropped += 1
                    continue
            dst = "b" if src == "a" else "a"
            nxt.extend((dst, x) for x in nodes[dst].receive(src, msg, now) if x.message["t"] in ae)
        queue = nxt
    assert dropped == 1
    assert na.counters["ae_retries"] >= 1 and na.counters["ae_timeouts"] == 0
    assert na.counters["ae_completed"] == 1
    assert na.replica.root == nb.replica.root
    assert na.replica.watermark == nb.replica.watermark  # the covers came with the end


def test_an_edges_lack_of_a_purged_key_sends_the_next_session_to_the_origin() -> None:
    """Rule 4: an edge back from an absence holds key-7, deleted meanwhile and its tombstone
    purged everywhere.  A session with another edge that lacks it cannot remove it (an edge's
    word), so the next session is forced, with the origin, which removes it."""
    o_rep, b_rep = Replica(), Replica()
    na, _ = pair(50, [])
    for r in (o_rep, b_rep):
        r.apply(META, "s", Register(1, 0, b"", None))
        for i in range(50):
            r.apply("s", f"key-{i}", Register(i + 2, 0, b"x", None))
        r.covered.add(1, 51)
    nodes = {"a": na}
    for name, rep, role in (("o", o_rep, "origin"), ("b", b_rep, "edge")):
        node = GossipNode(name, rep, seeds=["a"], rng=random.Random(3), role=role, origins=["o"])
        node.start(0.0)
        nodes[name] = node
        delete_and_purge_key7(node)
    na.authority.origins = frozenset({"o"})  # a (built as an origin-less edge by `pair`) trusts "o"
    ping = {"t": int(MsgType.PING), "seq": 1, "wm": 100, "purged": 100, "inc": 0, "role": "origin"}
    na.receive("o", ping, 0.0)  # a knows the origin (alive) and its purge mark
    ae = range(MsgType.AE_ROOT, MsgType.AE_EQUAL + 1)

    def drive(peer: str, sends: list[Any], now: float) -> None:
        queue = [("a", s) for s in sends]
        while queue:
            nxt: list[tuple[str, Send]] = []
            for src, s in queue:
                msg = decode_body(encode_frame(s.message)[4:])
                dst = peer if src == "a" else "a"
                nxt.extend(
                    (dst, x) for x in nodes[dst].receive(src, msg, now) if x.message["t"] in ae
                )
            queue = nxt

    drive("b", na.antientropy.start("b", 0.0, force=True), 0.0)
    assert na.counters["ae_completed"] == 1
    assert na.replica.state("s", "key-7") is not None  # an edge's lack removes nothing
    assert na.counters["ae_ask_origin"] == 1
    first = [s for s in na.tick(0.1) if s.message["t"] in ae]
    assert [(s.peer, s.message["t"], s.message["force"]) for s in first] == [
        ("o", MsgType.AE_ROOT, True)
    ]
    drive("o", first, 0.1)
    assert na.replica.state("s", "key-7") is None  # the origin's word removed it
    assert na.replica.root == o_rep.root


def test_a_silent_peer_gets_each_request_a_bounded_number_of_times() -> None:
    """Rule 8 against a peer that never answers (or a dead link): the request is sent again
    at most AE_RETRIES times, then the session ends at its timeout as before."""
    from edgekv.gossip.antientropy import AE_RETRIES

    na, _ = pair(100, [5])
    first = na.antientropy.start("b", 0.0, force=True)
    sent = [s.message for s in first]
    now = 0.0
    while na.counters["ae_timeouts"] == 0:
        now = max(now, na.antientropy.next_deadline())
        sent += [s.message for s in na.antientropy.tick(now) if s.message["t"] == MsgType.AE_ROOT]
        assert now <= na.config.ae_timeout + 1e-9
    roots = [m for m in sent if m["sid"] == first[0].message["sid"]]
    assert len(roots) == 1 + AE_RETRIES and all(m == roots[0] for m in roots)
    assert na.counters["ae_retries"] == AE_RETRIES and na.counters["ae_timeouts"] == 1
