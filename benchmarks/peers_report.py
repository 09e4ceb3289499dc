"""The ratio table and chart of bench_peers.py: edgekv / peer for every figure both measured.

`Figures` collects (measure, system) -> value as bench_peers measures them; `ratio_table`
renders the markdown table (with the machine it ran on), `chart` the PNG (matplotlib, the
optional `plot` extra; without it the table says how to get the chart).
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

PEERS = ("Redis", "etcd")


@dataclass
class Figures:
    """measure -> system -> value, plus whether a lower value is better for each measure."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    lower_better: dict[str, bool] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def add(self, measure: str, system: str, value: float, unit: str, lower: bool = True) -> None:
        if math.isfinite(value):
            self.values.setdefault(measure, {})[system] = value
            self.lower_better[measure] = lower
            self.units[measure] = unit


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({model})"


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3g}"


def ratio_table(fig: Figures) -> list[str]:
    lines = [
        "| measure | edgekv | Redis | edgekv / Redis | etcd | edgekv / etcd | better |",
        "|---|---|---|---|---|---|---|",
    ]
    for measure, by in fig.values.items():
        ours = by.get("edgekv")
        if ours is None:
            continue
        unit = fig.units[measure]
        cells = [measure, f"{_fmt(ours)} {unit}"]
        for peer in PEERS:
            theirs = by.get(peer)
            if theirs is None or theirs <= 0:
                cells += ["", ""]
                continue
            cells += [f"{_fmt(theirs)} {unit}", f"{ours / theirs:,.3g}x"]
        cells.append("lower" if fig.lower_better[measure] else "higher")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def chart(fig: Figures, path: Path) -> bool:
    """A horizontal bar chart of edgekv / peer per measure (log scale, 1 = equal), each bar
    oriented so that right of 1 means edgekv is better; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows: list[tuple[str, str, float]] = []
    for measure, by in fig.values.items():
        ours = by.get("edgekv")
        for peer in PEERS:
            theirs = by.get(peer)
            if ours is None or theirs is None or ours <= 0 or theirs <= 0:
                continue
            advantage = theirs / ours if fig.lower_better[measure] else ours / theirs
            rows.append((measure, peer, advantage))
    if not rows:
        return False
    colours = {"Redis": "#c0392b", "etcd": "#2874a6"}
    figure, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.4))
    labels = [f"{m} vs {p}" for m, p, _ in rows]
    ax.barh(range(len(rows)), [a for _, _, a in rows], color=[colours[p] for _, p, _ in rows])
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        "edgekv's advantage (peer / edgekv for times and memory, edgekv / peer for rates)"
    )
    ax.set_title("edgekv vs Redis and etcd, same machine, same work (right of 1: edgekv better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
