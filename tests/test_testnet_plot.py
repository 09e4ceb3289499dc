"""The report's analysis (timeline.py), plots (plot.py) and page (html.py) on small synthetic
runs with known answers (see synthetic_report.py); fast, no network."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from edgekv.testnet import plot
from edgekv.testnet.html import render_html
from edgekv.testnet.report import write_report
from edgekv.testnet.timeline import (
    Fault,
    compact_names,
    episodes,
    fault_summary,
    faults_from_events,
    lag_matrix,
    phases,
    propagation_series,
    traffic_series,
)
from synthetic_report import synthetic_report

PNG = b"\x89PNG\r\n\x1a\n"
needs_mpl = pytest.mark.skipif(not plot.available(), reason="matplotlib (the plot extra) missing")


def test_faults_from_events_pair_starts_with_their_ends() -> None:
    events = [
        [1.0, "partition", "3 | 2 nodes"],
        [1.5, "crash", "edge-0"],
        [2.0, "heal", ""],
        [2.5, "set_loss", "0.1"],
        [3.0, "restart", "edge-0"],
        [4.0, "set_loss", "0"],
        [5.0, "isolate", "edge-1"],
    ]
    nodes = [["edge-2", "edge-3"], ["edge-0"], [], [], ["edge-0"], [], ["edge-1"]]
    faults = faults_from_events(events, nodes)
    got = [(f.id, f.kind, f.start, f.end, f.nodes) for f in faults]
    assert got == [
        ("F1", "partition", 1.0, 2.0, ["edge-2", "edge-3"]),
        ("F2", "crash", 1.5, 3.0, ["edge-0"]),
        ("F3", "set_loss", 2.5, 4.0, []),
        ("F4", "isolate", 5.0, None, ["edge-1"]),
    ]
    assert "edge-2…edge-3 (2 nodes) cut off" in faults[0].label


def test_lag_matrix_counts_seqs_and_age_behind() -> None:
    lag = lag_matrix(synthetic_report())
    assert lag is not None
    k = lag.times.index(2.1)  # the partition healed at 2.0; the cut-off edges serve at 2.2
    assert lag.seqs[3][k] == 11 and lag.seconds[3][k] == pytest.approx(1.09)
    assert lag.seqs[1][k] == 0 and lag.seconds[1][k] == 0.0  # a healthy edge holds them all
    k = lag.times.index(2.7)  # edge-0 is down: it keeps its last watermark, marked down
    assert lag.down[0][k] and not lag.down[1][k] and lag.seqs[0][k] is not None


def test_fault_summary_says_who_how_far_and_how_long() -> None:
    f1, f2 = fault_summary(synthetic_report())
    assert f1["nodes"] == ["edge-2", "edge-3"] and f1["duration"] == 1.0
    assert f1["max_seqs_behind"] == 11 and f1["max_seconds_behind"] == pytest.approx(1.09)
    assert f1["catch_up_max"] == pytest.approx(0.2) and f1["all_caught_up"]
    assert [e["edge"] for e in f1["edges"]] == ["edge-2", "edge-3"]
    assert f2["kind"] == "crash" and f2["nodes"] == ["edge-0"]
    assert f2["max_seqs_behind"] == 5 and f2["catch_up_max"] == pytest.approx(0.1)


def test_an_edge_that_never_catches_up_is_reported() -> None:
    r = synthetic_report()
    for row in r["lag"]["watermarks"][20:]:
        row[3] = 5  # edge-3 stuck
    f1 = fault_summary(r)[0]
    assert not f1["all_caught_up"]
    assert next(e for e in f1["edges"] if e["edge"] == "edge-3")["catch_up"] is None


def test_rolling_faults_form_one_episode_and_phases_surround_it() -> None:
    faults = [
        Fault(f"F{i + 1}", "crash", 2.0 + 2 * i, 3.0 + 2 * i, [f"edge-{i}"], "") for i in range(5)
    ]
    far = Fault("F6", "partition", 40.0, 45.0, ["edge-1"], "")
    eps = episodes([*faults, far], 60.0)
    assert [(s, e, len(fs)) for s, e, fs in eps] == [(2.0, 11.0, 5), (40.0, 45.0, 1)]
    names = [p.name for p in phases([*faults, far], 60.0)]
    assert names == ["before faults", "during F1-F5", "after F1-F5", "during F6", "after F6"]


def test_lane_labels_never_overlap() -> None:
    rng = random.Random(3)
    for _ in range(50):
        faults = []
        for i in range(rng.randrange(1, 80)):
            s = rng.uniform(0, 100)
            faults.append(Fault(f"F{i + 1}", "crash", s, s + rng.uniform(0.1, 20), [], ""))
        faults.sort(key=lambda f: f.start)
        spc = rng.uniform(0.05, 2.0)
        layout = plot.lane_layout(faults, 120.0, spc)
        assert max(lane for _, lane, _ in layout) < plot.MAX_LANES
        spans: dict[int, list[tuple[float, float]]] = {}
        for f, lane, labelled in layout:
            if labelled:
                spans.setdefault(lane, []).append((f.start, f.start + (len(f.id) + 0.5) * spc))
        for items in spans.values():
            items.sort()
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(items))


def test_series_per_bin() -> None:
    r = synthetic_report()
    starts, series = propagation_series(r, 0.5)
    assert starts[0] == 0.0 and len(starts) == 8
    assert series["each p50"][0] == pytest.approx(0.05)
    assert series["last max"][2] == pytest.approx(1.19)  # acked 1.0-1.5: served at 2.2
    _t, msgs, nbytes = traffic_series(r, 0.5)
    assert msgs["PUSH"][0] == pytest.approx(100.0) and nbytes["IHAVE"][0] == pytest.approx(2000.0)


def test_compact_names() -> None:
    assert compact_names(["edge-3"]) == "edge-3"
    assert (
        compact_names(["edge-1", "edge-2", "edge-3", "edge-7"]) == "edge-1…edge-3, edge-7 (4 nodes)"
    )


@needs_mpl
def test_heatmap_renders_with_1000_edges() -> None:
    png = plot.lag_heatmap(synthetic_report(1000))  # rows grouped: 5 edges per row
    assert png is not None and png.startswith(PNG) and len(png) > 5000


def test_page_without_matplotlib_keeps_tables_and_says_why() -> None:
    page = render_html(synthetic_report(), plots=None)
    assert 'id="no-plots"' in page and "pip install 'edgekv[plot]'" in page
    assert 'id="faults"' in page and "edge-2…edge-3 (2 nodes)" in page
    assert "data:image/png" not in page and "http" not in page.replace("https://", "")


@needs_mpl
def test_write_report_writes_a_self_contained_page(tmp_path: Path) -> None:
    paths = write_report(synthetic_report(), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.html", "plot.png"]
    page = paths[1].read_text()
    for name in plot.PLOTS:
        assert f'id="plot-{name}"><img' in page
    assert page.count("data:image/png;base64,") == len(plot.PLOTS)
    assert 'src="http' not in page and "<script" not in page


def _no_mpl(monkeypatch: Any) -> None:
    monkeypatch.setattr(plot, "available", lambda: False)


def test_write_report_degrades_without_matplotlib(tmp_path: Path, monkeypatch: Any) -> None:
    _no_mpl(monkeypatch)
    paths = write_report(synthetic_report(), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.html"]
    assert 'id="no-plots"' in paths[1].read_text()


def test_traffic_keeps_the_heaviest_types_by_bytes() -> None:
    r = synthetic_report()
    n = len(r["traffic"]["times"])
    for i in range(10):  # ten chatty, light types and one rare, heavy one
        r["traffic"]["messages"][f"T{i}"] = [(100 + i) * k for k in range(n)]
        r["traffic"]["bytes"][f"T{i}"] = [k for k in range(n)]
    r["traffic"]["messages"]["SNAPSHOT"] = [k // 10 for k in range(n)]
    r["traffic"]["bytes"]["SNAPSHOT"] = [10**6 * k for k in range(n)]
    _, msgs, nbytes = traffic_series(r, 0.5)
    assert "SNAPSHOT" in msgs and "SNAPSHOT" in nbytes and "other" in msgs
    assert list(msgs) == list(nbytes) and len(msgs) == 8
