"""Scenario files: the shipped ones parse and shorten; malformed ones get a clear InvalidInput."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekv.errors import InvalidInput
from edgekv.testnet.scenario import bundled_scenarios, load_scenario, parse_scenario

SHIPPED = ["flood-1000", "glomers-3e", "loss-10", "rolling-restart", "split-brain"]


def test_shipped_scenarios_parse_and_shorten() -> None:
    assert sorted(bundled_scenarios()) == SHIPPED
    for name in SHIPPED:
        sc = load_scenario(name)
        short = sc.shortened()
        assert short.edges <= sc.edges
        assert max(s.end() for s in short.steps) <= max(s.end() for s in sc.steps)
        assert sc.assertions.nothing_lost
    g = load_scenario("glomers-3e")
    assert (g.edges, g.latency) == (25, 0.1)
    write = g.steps[0]
    assert write.params["rate"] == 100 and write.params["duration"] == 20
    assert load_scenario("flood-1000").edges == 1000
    split = load_scenario("split-brain")
    heal, part = next(s for s in split.steps if s.action == "heal"), split.steps[1]
    assert heal.at - part.at == 30


def _doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": "t",
        "network": {"edges": 3},
        "steps": [{"at": 0, "action": "write", "rate": 10, "duration": 1}],
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (_doc(name=""), "name"),
        (_doc(network={"edges": 0}), "edges"),
        (_doc(network={"edges": 3, "mode": "udp"}), "mode"),
        (_doc(network={"edges": 3, "loss": 2}), "loss"),
        (_doc(steps=[]), "steps"),
        (_doc(steps=[{"action": "explode"}]), "unknown action"),
        (_doc(steps=[{"action": "write", "rate": 10}]), "duration"),
        (_doc(steps=[{"action": "write", "rate": "x", "duration": 1}]), "rate"),
        (_doc(steps=[{"action": "crash", "node": "edge-9"}]), "edge-9"),
        (_doc(steps=[{"action": "partition"}]), "split"),
        (_doc(steps=[{"action": "heal", "bogus": 1}]), "bogus"),
        (_doc(steps=[{"action": "write", "rate": 1, "duration": 1, "distribution": "x"}]), "zipf"),
        (_doc(**{"assert": {"nothing_lost": "yes"}}), "nothing_lost"),
        (_doc(**{"assert": {"converged_within": True}}), "converged_within"),
        (_doc(surprise=1), "surprise"),
    ],
)
def test_malformed_scenarios_are_invalid_input(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        parse_scenario(doc)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no scenario file"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unterminated", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_scenario(bad)


def test_shortened_scales_times_and_rejects_bad_scale() -> None:
    sc = parse_scenario(_doc(steps=[{"at": 10, "action": "wait", "duration": 4}]))
    short = sc.shortened(scale=0.5, edges=2)
    assert short.edges == 2 and short.steps[0].at == 5 and short.steps[0].params["duration"] == 2
    with pytest.raises(InvalidInput):
        sc.shortened(scale=0)
