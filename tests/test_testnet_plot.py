"""The plot renders a report (hand-written SVG path; no plotting library needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from edgekv.testnet.plot import coverage_lines, plot_report, render_svg


def _report() -> dict[str, Any]:
    return {
        "scenario": "t",
        "network": "sim",
        "seed": 1,
        "checker": {"edges": 2},
        "events": [[1.0, "partition", "1 | 2"], [2.0, "heal", ""]],
        "agreement": [[0.0, 1.0, 1], [1.5, 0.5, 2], [2.5, 1.0, 1]],
        "writes": [
            {"id": 0, "key": "k", "seq": 1, "acked_at": 0.5, "reached": {"e0": 0.6, "e1": 2.2}},
            {"id": 1, "key": "k", "seq": None, "acked_at": None, "reached": {}},
        ],
    }


def test_coverage_lines_rise_to_one_per_acked_write() -> None:
    lines = coverage_lines(_report())
    assert len(lines) == 1
    pts = lines[0]
    assert pts[0] == (0.5, 0.0) and pts[-1] == (2.2, 1.0)
    assert [f for _, f in pts] == sorted(f for _, f in pts)


def test_svg_is_well_formed_with_both_panels(tmp_path: Path) -> None:
    svg = render_svg(_report())
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2  # one write + the agreement line
    assert len(root.findall(f"{ns}line")) == 4  # two events on two panels
    path = plot_report(_report(), tmp_path)
    assert path.exists() and path.stat().st_size > 0
