"""The experiment plot: fraction of edges holding each write over time, and digest agreement.

Top panel: one line per write (up to `MAX_LINES`, evenly sampled), rising from its ack to 1.0
as edges first serve it.  Bottom panel: the fraction of live edges whose digest equals the
origin's.  Fault events (partition, heal, crash...) are vertical marks on both.  PNG through
matplotlib when the `plot` extra is installed (imported lazily, Agg backend); otherwise an SVG
written by hand with plain polylines, so the plot never needs a dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["coverage_lines", "plot_report", "render_svg"]

MAX_LINES = 200
W, H, PAD = 900, 560, 50
PANEL_H = (H - 3 * PAD) // 2


def coverage_lines(
    report: dict[str, Any], max_lines: int = MAX_LINES
) -> list[list[tuple[float, float]]]:
    """Per write: step points (time, fraction of edges that served it by then)."""
    n_edges = max(1, int(report["checker"]["edges"]))
    writes = [w for w in report["writes"] if w["acked_at"] is not None]
    if len(writes) > max_lines:
        step = len(writes) / max_lines
        writes = [writes[int(i * step)] for i in range(max_lines)]
    lines = []
    for w in writes:
        pts = [(float(w["acked_at"]), 0.0)]
        for i, t in enumerate(sorted(w["reached"].values()), 1):
            pts.append((float(t), pts[-1][1]))
            pts.append((float(t), i / n_edges))
        lines.append(pts)
    return lines


def _t_max(report: dict[str, Any], lines: list[list[tuple[float, float]]]) -> float:
    ts = [p[0] for line in lines for p in line] + [s[0] for s in report["agreement"]]
    ts += [e[0] for e in report["events"]]
    return float(max([1e-9, *ts]))


def render_svg(report: dict[str, Any]) -> str:
    """The plot as a standalone SVG document."""
    lines = coverage_lines(report)
    t_max = _t_max(report, lines)

    def x(t: float) -> float:
        return PAD + (W - 2 * PAD) * max(t, 0.0) / t_max

    def y(frac: float, panel: int) -> float:
        top = PAD + panel * (PANEL_H + PAD)
        return top + PANEL_H * (1.0 - frac)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    titles = (
        "fraction of edges serving each write",
        "fraction of edges whose digest equals the origin's",
    )
    for panel, title in enumerate(titles):
        top = PAD + panel * (PANEL_H + PAD)
        out.append(
            f'<rect x="{PAD}" y="{top}" width="{W - 2 * PAD}" height="{PANEL_H}" fill="none" stroke="#999"/>'
        )
        out.append(f'<text x="{PAD}" y="{top - 8}">{escape(title)}</text>')
        out.append(
            f'<text x="{PAD - 30}" y="{top + 10}">1.0</text><text x="{PAD - 30}" y="{top + PANEL_H}">0.0</text>'
        )
    out.append(f'<text x="{W - PAD - 120}" y="{H - 12}">time (s), 0 .. {t_max:.2f}</text>')
    for t, action, detail in report["events"]:
        for panel in (0, 1):
            top = PAD + panel * (PANEL_H + PAD)
            out.append(
                f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + PANEL_H}" stroke="#d62728" stroke-dasharray="4,3"/>'
            )
        out.append(
            f'<text x="{x(t) + 2:.1f}" y="{PAD + 12}" fill="#d62728">{escape(action)} {escape(str(detail))}</text>'
        )
    for pts in lines:
        poly = " ".join(f"{x(t):.1f},{y(f, 0):.1f}" for t, f in pts)
        out.append(
            f'<polyline points="{poly}" fill="none" stroke="#1f77b4" stroke-opacity="0.35"/>'
        )
    agreement = report["agreement"]
    if agreement:
        poly = " ".join(f"{x(t):.1f},{y(f, 1):.1f}" for t, f, _ in agreement)
        out.append(f'<polyline points="{poly}" fill="none" stroke="#2ca02c" stroke-width="1.5"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _render_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = coverage_lines(report)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for pts in lines:
        top.plot([p[0] for p in pts], [p[1] for p in pts], color="#1f77b4", alpha=0.3, lw=0.8)
    top.set_ylabel("fraction of edges serving")
    top.set_title(f"{report['scenario']} ({report['network']}, seed {report['seed']})")
    ag = report["agreement"]
    bottom.plot([a[0] for a in ag], [a[1] for a in ag], color="#2ca02c")
    bottom.set_ylabel("digest agreement")
    bottom.set_xlabel("time (s)")
    for t, action, _ in report["events"]:
        for ax in (top, bottom):
            ax.axvline(t, color="#d62728", ls="--", lw=0.8)
        top.annotate(action, (t, 1.0), fontsize=7, color="#d62728")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write plot.png (matplotlib available) or plot.svg into `out_dir`; returns the path."""
    out = Path(out_dir)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        path = out / "plot.svg"
        path.write_text(render_svg(report), encoding="utf-8")
        return path
    path = out / "plot.png"
    _render_png(report, path)
    return path
