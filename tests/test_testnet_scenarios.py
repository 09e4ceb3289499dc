"""Every shipped scenario, short version, in sim mode (virtual time): its assertions hold.

Also: the same seed gives the same report (sim mode is a function of the seed).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from edgekv.testnet.harness import sim_clock
from edgekv.testnet.report import run_experiment, write_report
from edgekv.testnet.scenario import load_scenario

SHIPPED = ["glomers-3e", "split-brain", "rolling-restart", "loss-10", "flood-1000"]


@functools.lru_cache(maxsize=8)  # each short run once per session (reports are not mutated)
def _run(name: str, seed: int | None = None) -> dict[str, Any]:
    scenario = load_scenario(name).shortened()

    async def main() -> dict[str, Any]:
        return await run_experiment(scenario, network="sim", seed=seed)

    report: dict[str, Any] = trio.run(main, clock=sim_clock())
    return report


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_short_holds_its_assertions(name: str, tmp_path: Path) -> None:
    report = _run(name)
    failed = [a for a in report["assertions"] if not a["passed"]]
    assert not failed, f"seed {report['seed']}: {failed}"
    assert report["passed"]
    c = report["checker"]
    assert c["writes_acked"] > 0 and c["unreached"] == 0 and c["violations"] == 0
    acked = [w for w in report["writes"] if w["seq"] is not None]
    live_edges = c["edges"]
    # every acked write was served by every edge (restarted ones re-served it)
    assert all(len(w["reached"]) == live_edges for w in acked)
    seqs = [w["seq"] for w in acked]
    assert len(set(seqs)) == len(seqs)
    paths = write_report(report, tmp_path, plots=False)  # plots: see the tests below
    assert json.loads(paths[0].read_text())["scenario"] == name
    assert paths[1].stat().st_size > 0


def test_split_brain_report_says_who_was_cut_off_and_for_how_long(tmp_path: Path) -> None:
    report = _run("split-brain")
    (fault,) = report["faults"]
    edges = [f"edge-{i}" for i in range(report["checker"]["edges"])]
    assert fault["kind"] == "partition" and fault["nodes"] == edges[len(edges) // 2 :]
    assert fault["duration"] == pytest.approx(3.0)  # 30 s scaled by 0.1
    assert fault["max_seqs_behind"] > 50 and fault["max_seconds_behind"] > 2.0
    assert fault["all_caught_up"] and fault["catch_up_max"] is not None
    assert fault["catch_up_max"] < report["config"]["assertions"]["converged_within"]
    page = write_report(report, tmp_path)[1].read_text()
    assert "edge-6…edge-11 (6 nodes)" in page and page.count("data:image/png") == 4


def test_rolling_restart_report_has_one_fault_per_edge(tmp_path: Path) -> None:
    report = _run("rolling-restart")
    edges = [f"edge-{i}" for i in range(report["checker"]["edges"])]
    assert [f["nodes"] for f in report["faults"]] == [[e] for e in edges]
    assert all(f["kind"] == "crash" and f["all_caught_up"] for f in report["faults"])
    assert all(f["max_seqs_behind"] > 0 for f in report["faults"][:-1])
    page = write_report(report, tmp_path, plots=False)[1].read_text()
    assert all(f"<b>F{i + 1}</b>" in page for i in range(len(edges)))


def test_split_brain_partition_is_visible_in_digest_agreement() -> None:
    report = _run("split-brain")
    t_part = next(t for t, a, _ in report["events"] if a == "partition")
    t_heal = next(t for t, a, _ in report["events"] if a == "heal")
    during = [f for t, f, _ in report["agreement"] if t_part + 0.5 < t < t_heal]
    assert during and max(during) < 1.0  # the cut-off half cannot agree with the origin
    assert report["agreement"][-1][1] == 1.0 or report["convergence_after_timeline"] is not None


def test_same_seed_same_report() -> None:
    a, b = dict(_run("glomers-3e", seed=7)), dict(_run.__wrapped__("glomers-3e", seed=7))
    a.pop("wall_seconds")
    b.pop("wall_seconds")
    assert a["seed"] == 7
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_experiment_command_writes_report_and_plot(tmp_path: Path) -> None:
    from edgekv.cli import main

    out = tmp_path / "out"
    assert main(["experiment", "split-brain", "--short", "--seed", "11", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 11 and report["passed"] and report["network"] == "sim"
    assert {a["name"] for a in report["assertions"]} == {"converged_within", "nothing_lost"}
    assert any(p.name.startswith("plot.") for p in out.iterdir())
    with pytest.raises(SystemExit):
        main(["experiment", "split-brain", "--network", "udp", "--out", str(out)])
    assert main(["experiment", str(tmp_path / "nope.toml"), "--out", str(out)]) == 1
