"""The outside convergence checker, fed by hand: delivery, LWW coverage, monotonicity, figures."""

from __future__ import annotations

import pytest
import trio

from edgekv.testnet.checker import ConvergenceChecker, percentile, probe_once


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 101)), 100) == 100


def test_reached_times_and_propagation() -> None:
    c = ConvergenceChecker(["e0", "e1"])
    w = c.issue("s", "k", b"v1", 0.0)
    c.ack(w, 5, 1.0)
    assert c.to_read("e0") == [("s", "k")]
    c.observe("e0", "s", "k", None, 1.1)  # not there yet: no violation
    c.observe("e0", "s", "k", b"v1", 1.5)
    c.observe("e1", "s", "k", b"v1", 2.0)
    assert w.reached == {"e0": 1.5, "e1": 2.0}
    assert sorted(c.latencies()) == [0.5, 1.0]
    assert c.to_last_edge() == [1.0]
    assert c.unreached() == {"e0": 0, "e1": 0}
    assert c.to_read("e0") == []
    assert not c.violations


def test_newer_write_covers_older_ones() -> None:
    c = ConvergenceChecker(["e0"])
    w1 = c.issue("s", "k", b"a", 0.0)
    w2 = c.issue("s", "k", b"b", 0.0)
    c.ack(w1, 1, 0.1)
    c.ack(w2, 2, 0.2)
    c.observe("e0", "s", "k", b"b", 0.5)  # serving seq 2 means it holds seq 1's effect too
    assert w1.reached == {"e0": 0.5} and w2.reached == {"e0": 0.5}
    assert c.unreached() == {"e0": 0}


def test_backwards_and_absent_after_served_are_violations() -> None:
    c = ConvergenceChecker(["e0"])
    w1 = c.issue("s", "k", b"a", 0.0)
    w2 = c.issue("s", "k", b"b", 0.0)
    c.ack(w1, 1, 0.0)
    c.ack(w2, 2, 0.0)
    c.observe("e0", "s", "k", b"b", 1.0)
    c.observe("e0", "s", "k", b"a", 2.0)
    c.observe("e0", "s", "k", None, 3.0)
    kinds = [v.kind for v in c.violations]
    assert kinds == ["backwards", "backwards"]


def test_forget_resets_the_baseline_after_a_stateless_restart() -> None:
    c = ConvergenceChecker(["e0"])
    w = c.issue("s", "k", b"a", 0.0)
    c.ack(w, 1, 0.0)
    c.observe("e0", "s", "k", b"a", 1.0)
    c.forget("e0")
    c.observe("e0", "s", "k", None, 2.0)
    assert not c.violations


def test_served_before_ack_counts_at_ack_time() -> None:
    c = ConvergenceChecker(["e0"])
    w = c.issue("s", "k", b"a", 0.0)
    c.observe("e0", "s", "k", b"a", 0.5)
    assert w.reached == {}
    c.ack(w, 7, 1.0)
    assert w.reached == {"e0": 1.0}
    assert c.latencies() == [0.0]


def test_acks_arriving_out_of_seq_order_are_judged_by_observation_order() -> None:
    """Seen in processes mode: an edge served write x (ack not yet in), then the newer write y;
    x's ack arrives last.  The edge went forward, so nothing is wrong."""
    c = ConvergenceChecker(["e0"])
    x = c.issue("s", "k", b"x", 0.0)
    y = c.issue("s", "k", b"y", 0.0)
    c.observe("e0", "s", "k", b"x", 0.5)
    c.ack(y, 9, 0.6)
    c.observe("e0", "s", "k", b"y", 0.7)
    c.ack(x, 3, 0.8)
    assert not c.violations
    assert x.reached == {"e0": 0.8} and y.reached == {"e0": 0.7}


@pytest.mark.parametrize("early_is_older", [True, False])
def test_a_write_served_before_its_ack_still_counts_for_monotonicity(early_is_older: bool) -> None:
    c = ConvergenceChecker(["e0"])
    x = c.issue("s", "k", b"x", 0.0)
    y = c.issue("s", "k", b"y", 0.0)
    c.ack(y, 5, 0.1)
    if early_is_older:  # served y (seq 5), then x, whose ack says seq 3: backwards
        c.observe("e0", "s", "k", b"y", 0.2)
        c.observe("e0", "s", "k", b"x", 0.3)
        c.ack(x, 3, 0.4)
    else:  # served x, then y (seq 5), and x's ack says seq 8: backwards too
        c.observe("e0", "s", "k", b"x", 0.2)
        c.observe("e0", "s", "k", b"y", 0.3)
        c.ack(x, 8, 0.4)
    assert [v.kind for v in c.violations] == ["backwards"]


def test_forget_drops_what_an_edge_served_before_its_crash() -> None:
    c = ConvergenceChecker(["e0"])
    x = c.issue("s", "k", b"x", 0.0)
    y = c.issue("s", "k", b"y", 0.0)
    c.ack(y, 2, 0.1)
    c.observe("e0", "s", "k", b"x", 0.2)  # x not acked yet; then a stateless restart
    c.forget("e0")
    c.observe("e0", "s", "k", b"y", 0.3)
    c.ack(x, 4, 0.4)
    assert not c.violations


def test_unknown_value_and_duplicate_issue() -> None:
    c = ConvergenceChecker(["e0"])
    c.issue("s", "k", b"a", 0.0)
    with pytest.raises(ValueError):
        c.issue("s", "k", b"a", 0.0)
    c.observe("e0", "s", "k", b"garbage", 1.0)
    assert [v.kind for v in c.violations] == ["unknown_value"]


def test_final_check_reports_lost_writes_and_dead_edges_are_not_owed() -> None:
    c = ConvergenceChecker(["e0", "e1", "e2"])
    w1 = c.issue("s", "k", b"a", 0.0)
    w2 = c.issue("s", "k", b"b", 0.0)
    c.ack(w1, 1, 0.0)
    c.ack(w2, 2, 0.0)
    c.set_live("e2", False)
    served = {"e0": b"b", "e1": b"a", "e2": None}
    readers = {e: (lambda s, k, e=e: served[e]) for e in served}
    lost = c.final_check(readers, 5.0)
    assert [(v.edge, v.kind) for v in lost] == [("e1", "lost")]
    assert c.unreached() == {"e0": 0, "e1": 1}


def test_probe_reads_only_owed_keys_at_live_edges() -> None:
    c = ConvergenceChecker(["e0", "e1"])
    for i in range(3):
        w = c.issue("s", f"k{i}", f"v{i}".encode(), 0.0)
        c.ack(w, i + 1, 0.0)
    reads: list[tuple[str, str]] = []

    def reader(edge: str) -> object:
        def read(store: str, key: str) -> bytes | None:
            reads.append((edge, key))
            return b"v0" if key == "k0" else None

        return read

    c.set_live("e1", False)
    n = probe_once(c, {"e0": reader("e0"), "e1": reader("e1")}, 1.0)  # type: ignore[dict-item]
    assert n == 3 and {e for e, _ in reads} == {"e0"}
    reads.clear()
    probe_once(c, {"e0": reader("e0")}, 2.0)  # type: ignore[dict-item]
    assert sorted(k for _, k in reads) == ["k1", "k2"]


async def test_batched_probe_reads_owed_keys_per_store_in_one_call(autojump_clock: object) -> None:
    from edgekv.testnet.checker import EdgeUnavailable, probe_once_batched

    c = ConvergenceChecker(["e0", "e1", "e2"])
    for i in range(3):
        w = c.issue("s" if i < 2 else "t", f"k{i}", f"v{i}".encode(), 0.0)
        c.ack(w, i + 1, 0.0)
    calls: list[tuple[str, str, list[str]]] = []

    def reader(edge: str) -> object:
        async def read(store: str, keys: list[str]) -> list[bytes | None]:
            calls.append((edge, store, keys))
            if edge == "e2":
                raise EdgeUnavailable("going down")
            await trio.sleep(0.5)  # the answer takes time: observations are timed at its end
            return [b"v0" if k == "k0" else None for k in keys]

        return read

    readers = {e: reader(e) for e in ("e0", "e1", "e2")}
    n = await probe_once_batched(c, readers)  # type: ignore[arg-type]
    assert n == 6  # e0 and e1, three keys each; e2 unavailable, skipped
    assert sorted(calls) == sorted(
        [(e, "s", ["k0", "k1"]) for e in ("e0", "e1", "e2")]
        + [("e0", "t", ["k2"]), ("e1", "t", ["k2"])]
    )
    assert trio.current_time() == 1.0  # edges in parallel, each edge's stores in turn
    written = c.writes[0]
    assert written.reached == {"e0": 0.5, "e1": 0.5}
    assert sorted(c.to_read("e0")) == [("s", "k1"), ("t", "k2")]


def test_final_check_accepts_a_committed_write_whose_ack_was_lost() -> None:
    c = ConvergenceChecker(["e0"])
    w1 = c.issue("s", "k", b"a", 0.0)
    c.ack(w1, 1, 0.0)
    c.issue("s", "k", b"b", 0.0)  # timed out at the client, but the origin committed it
    assert c.final_check({"e0": lambda s, k: b"b"}, 1.0) == []
    assert c.final_check({"e0": lambda s, k: None}, 1.0) != []


def test_serving_an_unacked_write_covers_writes_acked_before_it_was_issued() -> None:
    c = ConvergenceChecker(["e0"])
    w1 = c.issue("s", "k", b"a", 0.0)
    c.ack(w1, 1, 0.5)
    w2 = c.issue("s", "k", b"b", 0.6)  # its ack will be lost
    w3 = c.issue("s", "k", b"c", 0.0)  # issued before w2's... acked after: ordering unknown
    c.ack(w3, 3, 0.9)
    c.observe("e0", "s", "k", b"b", 1.0)
    assert w1.reached == {"e0": 1.0} and w3.reached == {} and w2.seq is None


def test_an_unreachable_edge_is_skipped_for_the_round() -> None:
    from edgekv.testnet.checker import EdgeUnavailable

    c = ConvergenceChecker(["e0", "e1"])
    w = c.issue("s", "k", b"a", 0.0)
    c.ack(w, 1, 0.0)

    def down(store: str, key: str) -> bytes | None:
        raise EdgeUnavailable("killed")

    probe_once(c, {"e0": down, "e1": lambda s, k: b"a"}, 1.0)
    assert w.reached == {"e1": 1.0} and not c.violations
