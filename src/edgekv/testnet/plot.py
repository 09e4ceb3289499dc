"""The experiment's plots, each chosen for one question (matplotlib, the optional `plot` extra).

- `lag_heatmap`: who was behind, when, and how far?  Edges x time, colour = seconds behind the
  origin (log scale; white = caught up, blue-grey = down), faults outlined on the rows they cut
  off.  Above every time plot, a fault lane: one bar per fault with its short id (F1, F2...),
  placed so that no two labels overlap; report.html's fault table is the legend.
- `propagation_over_time`: how long did writes take to arrive, and when was it slow?  p50, p99
  and max per time bin of ack time, to each edge and to the last edge (log scale).
- `traffic_over_time`: what did the network carry?  Messages/s and bytes/s by message type.
- `propagation_cdf`: how did the faults change propagation?  One CDF per phase (before, during
  and after each fault episode).

With 1,000 edges the heatmap shows one row per group of edges (the worst of the group).
matplotlib is imported lazily (Agg backend); `available()` says whether it is installed, and
without it the report has its tables and says how to get the plots.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from edgekv.testnet.timeline import (
    Fault,
    faults_from_events,
    lag_matrix,
    phases,
    propagation_series,
    run_end,
    time_bin,
    traffic_series,
)

__all__ = [
    "PLOTS",
    "available",
    "lag_heatmap",
    "lane_layout",
    "propagation_cdf",
    "propagation_over_time",
    "render_plots",
    "traffic_over_time",
]

MAX_ROWS = 200  # heatmap rows; more edges are grouped
MAX_LANES = 4
WIDTH_IN = 11.0
DPI = 100
KIND_COLOURS = {
    "partition": "#1f77b4",
    "isolate": "#9467bd",
    "block": "#ff7f0e",
    "crash": "#444444",
    "set_loss": "#2ca02c",
    "set_latency": "#8c564b",
}
DOWN_COLOUR = "#b0c4de"


def available() -> bool:
    """Whether matplotlib (the `plot` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lane_layout(
    faults: Sequence[Fault], t_end: float, seconds_per_char: float
) -> list[tuple[Fault, int, bool]]:
    """(fault, lane, labelled): bars go to the first lane where they do not overlap; a label
    (its id, `seconds_per_char` wide per character) is drawn only where it overlaps nothing."""
    bar_end: list[float] = []  # per lane: where the last bar ends
    label_end: list[float] = []  # per lane: where the last label ends
    out = []
    for f in faults:
        end = f.end if f.end is not None else t_end
        lane = next((i for i, e in enumerate(bar_end) if e <= f.start), None)
        if lane is None:
            if len(bar_end) < MAX_LANES:
                lane = len(bar_end)
                bar_end.append(-math.inf)
                label_end.append(-math.inf)
            else:
                lane = min(range(len(bar_end)), key=lambda i: bar_end[i])
        width = (len(f.id) + 0.5) * seconds_per_char
        labelled = label_end[lane] <= f.start and bar_end[lane] <= f.start
        bar_end[lane] = max(bar_end[lane], end)
        if labelled:
            label_end[lane] = f.start + width
        out.append((f, lane, labelled))
    return out


def _kind_patches(faults: Sequence[Fault]) -> list[Any]:
    from matplotlib.patches import Patch

    kinds = list(dict.fromkeys(f.kind for f in faults))
    return [Patch(facecolor=KIND_COLOURS.get(k, "#d62728"), alpha=0.35, label=k) for k in kinds]


def _draw_lane(
    ax: Any, faults: Sequence[Fault], t_end: float, title: str, legend: bool = True
) -> None:
    fig = ax.figure
    axes_in = ax.get_position().width * fig.get_figwidth()
    spc = t_end / max(axes_in, 1.0) * 7 * 0.62 / 72  # 7 pt characters
    layout = lane_layout(faults, t_end, spc)
    lanes = 1 + max((lane for _, lane, _ in layout), default=0)
    for f, lane, labelled in layout:
        end = f.end if f.end is not None else t_end
        y = lanes - 1 - lane
        colour = KIND_COLOURS.get(f.kind, "#d62728")
        ax.broken_barh(
            [(f.start, max(end - f.start, t_end * 0.002))],
            (y + 0.1, 0.8),
            facecolors=colour,
            alpha=0.35,
            edgecolor=colour,
        )
        if labelled:
            ax.text(
                f.start,
                y + 0.5,
                f" {f.id}",
                va="center",
                ha="left",
                fontsize=7,
                color="black",
                clip_on=True,
            )
    ax.set_ylim(0, lanes)
    ax.set_yticks([])
    ax.set_xlim(0, t_end)
    ax.tick_params(labelbottom=False)
    ax.set_ylabel("faults", rotation=0, ha="right", va="center", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    if faults and legend:
        ax.legend(
            handles=_kind_patches(faults),
            loc="center left",
            fontsize=7,
            frameon=False,
            bbox_to_anchor=(1.0, 0.5),
        )


def _figure(report: dict[str, Any], rows: int, height: float) -> tuple[Any, Any, list[Any]]:
    plt = _plt()
    ratios = [0.9] + [6.0 / rows] * rows
    fig, axes = plt.subplots(
        rows + 1,
        1,
        figsize=(WIDTH_IN, height),
        sharex=True,
        gridspec_kw={"height_ratios": ratios, "hspace": 0.12},
    )
    return plt, fig, list(axes)


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _context(report: dict[str, Any]) -> tuple[list[Fault], float, str]:
    faults = faults_from_events(report["events"], report.get("event_nodes"))
    title = (
        f"{report['scenario']} ({report['network']}, seed {report['seed']}, "
        f"{report['checker']['edges']} edges)"
    )
    return faults, max(run_end(report), 1e-3), title


def lag_heatmap(report: dict[str, Any]) -> bytes | None:
    """PNG: seconds behind the origin per edge over time (None without lag samples)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch, Rectangle

    lag = lag_matrix(report)
    if lag is None:
        return None
    faults, t_end, title = _context(report)
    n = len(lag.edges)
    group = max(1, math.ceil(n / MAX_ROWS))
    rows = math.ceil(n / group)
    raw = np.array(
        [
            [np.nan if v is None or d else v for v, d in zip(r, dn, strict=True)]
            for r, dn in zip(lag.seconds, lag.down, strict=True)
        ],
        dtype=float,
    )
    data = np.full((rows, raw.shape[1]), np.nan)
    for g in range(rows):
        block = raw[g * group : (g + 1) * group]
        if np.isfinite(block).any():
            data[g] = np.nanmax(np.where(np.isfinite(block), block, -1.0), axis=0)
            data[g][data[g] < 0] = np.nan
    data[np.isfinite(data) & (data < 1e-3)] = 1e-4  # caught up: below the scale (white)
    height = 3.2 + min(6.0, 0.16 * rows)
    plt, fig, (lane, ax) = _figure(report, 1, height)
    # the floor of the colour scale: the run's median propagation (what "not behind" looks like)
    floor = min(0.5, max(0.01, float(report["checker"]["propagation"]["p50"])))
    cmap = plt.get_cmap("inferno_r").with_extremes(under="white", bad=DOWN_COLOUR)
    vmax = max(1.0, float(np.nanmax(data)) if np.isfinite(data).any() else 1.0)
    times = lag.times
    dt = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else 0.1
    im = ax.imshow(
        data,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=LogNorm(vmin=floor, vmax=max(vmax, floor * 10)),
        extent=(times[0] - dt / 2, times[-1] + dt / 2, rows, 0),
    )
    row_of = {e: i // group for i, e in enumerate(lag.edges)}
    for f in faults:
        if not f.nodes:
            continue
        end = f.end if f.end is not None else t_end
        idx = sorted({row_of[x] for x in f.nodes if x in row_of})
        colour = KIND_COLOURS.get(f.kind, "#d62728")
        start_run = 0
        for k in range(1, len(idx) + 1):
            if k == len(idx) or idx[k] != idx[k - 1] + 1:
                lo, hi = idx[start_run], idx[k - 1] + 1
                ax.add_patch(
                    Rectangle(
                        (f.start, lo),
                        end - f.start,
                        hi - lo,
                        fill=False,
                        edgecolor=colour,
                        lw=1.4,
                        ls="--",
                    )
                )
                start_run = k
    step = max(1, math.ceil(rows / 25))
    ticks = list(range(0, rows, step))
    ax.set_yticks([t + 0.5 for t in ticks])
    labels = [
        lag.edges[t * group]
        if group == 1
        else f"{lag.edges[t * group]}…{lag.edges[min(n, (t + 1) * group) - 1]}"
        for t in ticks
    ]
    ax.set_yticklabels(labels, fontsize=7 if rows > 12 else 8)
    ax.set_xlabel("time since the workload started (s)")
    ax.set_ylabel("edge" if group == 1 else f"edges (worst of {group} per row)")
    bar = fig.colorbar(im, ax=[lane, ax], pad=0.01, fraction=0.03, extend="both")
    bar.set_label("seconds behind the origin (oldest write it lacks)")
    handles = [
        Patch(facecolor=DOWN_COLOUR, label="down"),
        Patch(
            facecolor="white",
            edgecolor="#999",
            label=f"< {floor * 1000:.0f} ms (median propagation)",
        ),
        Patch(fill=False, edgecolor="#1f77b4", ls="--", label="outline: rows a fault hit"),
    ]
    handles += [
        Patch(facecolor=p.get_facecolor(), label=f"fault: {p.get_label()}")
        for p in _kind_patches(faults)
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=min(6, len(handles)),
        fontsize=8,
        frameon=False,
    )
    _draw_lane(lane, faults, t_end, f"Lag behind the origin per edge — {title}", legend=False)
    ax.set_xlim(0, t_end)
    return _png(plt, fig)


def _shade(axes: Sequence[Any], faults: Sequence[Fault], t_end: float) -> None:
    for f in faults:
        end = f.end if f.end is not None else t_end
        for a in axes:
            a.axvspan(f.start, end, color=KIND_COLOURS.get(f.kind, "#d62728"), alpha=0.08, lw=0)


def _finish(
    plt: Any,
    fig: Any,
    axes: list[Any],
    faults: Sequence[Fault],
    t_end: float,
    xlabel: str,
    title: str,
) -> bytes:
    """Shade the faults on the panels, label the x axis, draw the lane, and render."""
    _shade(axes[1:], faults, t_end)
    axes[-1].set_xlabel(xlabel)
    _draw_lane(axes[0], faults, t_end, title)
    axes[-1].set_xlim(0, t_end)
    return _png(plt, fig)


def propagation_over_time(report: dict[str, Any]) -> bytes | None:
    """PNG: p50/p99/max propagation per bin of ack time, to each edge and to the last edge."""
    faults, t_end, title = _context(report)
    width = time_bin(t_end)
    starts, series = propagation_series(report, width)
    if not starts:
        return None
    plt, fig, (lane, each, last) = _figure(report, 2, 6.0)
    mids = [s + width / 2 for s in starts]
    styles = {"p50": ("#2ca02c", "-"), "p99": ("#ff7f0e", "-"), "max": ("#d62728", ":")}
    for ax, name, what in ((each, "each", "ack → each edge"), (last, "last", "ack → last edge")):
        for q, (colour, ls) in styles.items():
            ys = [math.nan if v is None else max(v, 1e-3) for v in series[f"{name} {q}"]]
            ax.plot(mids, ys, color=colour, ls=ls, lw=1.4, marker=".", ms=3, label=q)
        ax.set_yscale("log")
        ax.set_ylabel(f"{what} (s)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    xlabel = f"ack time (s), bins of {width:g} s"
    return _finish(
        plt, fig, [lane, each, last], faults, t_end, xlabel, f"Propagation over time — {title}"
    )


def traffic_over_time(report: dict[str, Any]) -> bytes | None:
    """PNG: node-to-node messages/s and bytes/s, stacked by message type."""
    faults, t_end, title = _context(report)
    width = time_bin(t_end)
    starts, msgs, nbytes = traffic_series(report, width)
    if not starts:
        return None
    from matplotlib.ticker import EngFormatter

    plt, fig, (lane, top, bottom) = _figure(report, 2, 6.0)
    colours = plt.get_cmap("tab10").colors
    kinds = list(msgs)
    xs = [s for s in starts for _ in (0, 1)]
    xs = [x + (width if i % 2 else 0) for i, x in enumerate(xs)]
    for ax, data, unit in ((top, msgs, "messages/s"), (bottom, nbytes, "bytes/s")):
        ys = [[v for v in data[k] for _ in (0, 1)] for k in kinds]
        ax.stackplot(
            xs,
            ys,
            labels=kinds,
            colors=[colours[i % 10] for i in range(len(kinds))],
            alpha=0.85,
            lw=0,
        )
        ax.set_ylabel(unit)
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(True, alpha=0.3)
    top.legend(
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        title="type",
        title_fontsize=8,
        frameon=False,
    )
    title = f"Node-to-node traffic by message type — {title}"
    return _finish(
        plt, fig, [lane, top, bottom], faults, t_end, f"time (s), bins of {width:g} s", title
    )


def propagation_cdf(report: dict[str, Any]) -> bytes | None:
    """PNG: the CDF of ack -> each edge propagation, one curve per phase."""
    faults, t_end, title = _context(report)
    curves = []
    for ph in phases(faults, t_end):
        lat = sorted(
            max(float(t) - float(w["acked_at"]), 1e-3)
            for w in report["writes"]
            if w.get("acked_at") is not None and ph.start <= float(w["acked_at"]) < ph.end
            for t in w["reached"].values()
        )
        if lat:
            curves.append((ph, lat))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN * 0.75, 4.2))
    colours = plt.get_cmap("tab10").colors
    for i, (ph, lat) in enumerate(curves):
        ys = [(k + 1) / len(lat) for k in range(len(lat))]
        label = f"{ph.name} ({ph.start:.1f}-{min(ph.end, t_end):.1f} s, n={len(lat)})"
        ax.step(lat, ys, where="post", color=colours[i % 10], lw=1.6, label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("ack → edge propagation (s)")
    ax.set_ylabel("fraction of (write, edge) pairs")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Propagation by phase — {title}", fontsize=10, loc="left")
    return _png(plt, fig)


PLOTS = {
    "lag": ("Who was behind, when", lag_heatmap),
    "propagation": ("Propagation over time", propagation_over_time),
    "traffic": ("Messages and bytes per second", traffic_over_time),
    "cdf": ("Propagation CDF per phase", propagation_cdf),
}


def render_plots(report: dict[str, Any]) -> dict[str, bytes] | None:
    """Every plot as PNG bytes, by name (a plot without data is left out); None without
    matplotlib."""
    if not available():
        return None
    out = {}
    for name, (_, fn) in PLOTS.items():
        png = fn(report)
        if png is not None:
            out[name] = png
    return out
