"""report.html: one self-contained page per experiment (no network, no script needed to read it).

The scenario and seed, the headline figures, the assertions, the fault table (which edges each
fault cut off, for how long, how far behind they fell, how long they took to catch up after it:
also the legend of the plots' fault ids), and the plots inlined as base64 PNG.  Without
matplotlib the page keeps its tables and says how to get the plots.
"""

from __future__ import annotations

import base64
import json
import shutil
from html import escape
from pathlib import Path
from typing import Any

from edgekv.testnet.plot import PLOTS, render_plots
from edgekv.testnet.timeline import compact_names, fault_summary

__all__ = ["headless_chromium", "render_html"]

MAX_FAULT_ROWS = 60  # more faults: the rest behind a <details>

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#1b1b1b;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid
#ddd;padding-bottom:4px}.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:white;font-weight:600}
.badge.pass{background:#137333}.badge.fail{background:#b3261e}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:0.92em}.noplots{background:#fff4e5;border:1px solid #f0c36d;
padding:8px 12px}details{margin:4px 0}pre{background:#f7f7f7;padding:8px;overflow:auto;
font-size:0.85em}
"""

_QUESTIONS = {
    "lag": "Which edges were behind the origin, when, and by how much: one row per edge, colour "
    "= age of the oldest acknowledged write the edge did not hold yet; faults outlined on the "
    "rows they cut off, their ids (F1, F2…) in the lane above and in the fault table.",
    "propagation": "How long writes took to reach each edge and the last edge, by the time "
    "they were acknowledged (p50, p99, max per bin); shaded spans are faults.",
    "traffic": "What the edges sent each other: messages and bytes per second by message type.",
    "cdf": "How each fault episode changed propagation: the distribution of ack → edge "
    "times for writes acknowledged before, during and after it.",
}


def _num(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        cells = (
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _headline(report: dict[str, Any]) -> str:
    c = report["checker"]
    p, last = c["propagation"], c["propagation_to_last_edge"]
    msgs = report.get("messages", {})
    conv = report.get("convergence_after_timeline")
    rows = [
        ["edges", str(c["edges"])],
        [
            "writes acked / issued (failed)",
            f"{c['writes_acked']} / {c['writes_issued']} ({report.get('writes_failed', 0)})",
        ],
        [
            "propagation ack → each edge p50 / p99 / max",
            f"{p['p50']:.3f} / {p['p99']:.3f} / {p['max']:.3f} s",
        ],
        [
            "propagation ack → last edge p50 / p99 / max",
            f"{last['p50']:.3f} / {last['p99']:.3f} / {last['max']:.3f} s",
        ],
        ["node-to-node messages per write", _num(msgs.get("per_write"), digits=2)],
        ["digests equal after the timeline", "not converged" if conv is None else f"{conv:.3f} s"],
        [
            "unreached / lost / violations",
            f"{c['unreached']} / {len(report.get('lost', []))} / {c['violations']}",
        ],
        ["wall time", _num(report.get("wall_seconds"), " s", 1)],
    ]
    return _table(["measure", "value"], [[escape(a), escape(b)] for a, b in rows], {1})


def _assertions(report: dict[str, Any]) -> str:
    items = report.get("assertions", [])
    if not items:
        return "<p>No assertions.</p>"
    rows = []
    for a in items:
        verdict = (
            '<span class="pass">pass</span>' if a["passed"] else '<span class="fail">FAIL</span>'
        )
        expected = "true" if a["name"] == "nothing_lost" else f"≤ {a['expected']}"
        rows.append([escape(a["name"]), escape(expected), escape(json.dumps(a["actual"])), verdict])
    return _table(["assertion", "expected", "actual", "verdict"], rows)


def _fault_rows(faults: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for f in faults:
        end = "still on" if f["end"] is None else f"{f['end']:.2f}"
        up = f["catch_up_max"]
        catch = (
            "—"
            if not f["edges"]
            else (
                f"{up:.2f} s"
                if f["all_caught_up"] and up is not None
                else f'<span class="fail">not caught up</span>{"" if up is None else f" (others ≤ {up:.2f} s)"}'
            )
        )
        who = escape(compact_names(f["nodes"])) if f["nodes"] else "every link"
        if len(f["edges"]) > 1:
            detail = _table(
                ["edge", "max seqs behind", "max s behind", "caught up after end"],
                [
                    [
                        escape(e["edge"]),
                        str(e["max_seqs"]),
                        f"{e['max_seconds']:.2f}",
                        "not caught up" if e["catch_up"] is None else f"{e['catch_up']:.2f} s",
                    ]
                    for e in f["edges"]
                ],
                {1, 2, 3},
            )
            who += f"<details><summary>per edge</summary>{detail}</details>"
        rows.append(
            [
                f"<b>{escape(f['id'])}</b>",
                escape(f["kind"]),
                f"{f['start']:.2f}&nbsp;-&nbsp;{end}",
                f"{f['duration']:.2f} s",
                who,
                str(f["max_seqs_behind"]),
                f"{f['max_seconds_behind']:.2f} s",
                catch,
            ]
        )
    return rows


def _faults(report: dict[str, Any]) -> str:
    faults = report.get("faults")
    if faults is None:
        faults = fault_summary(report)
    if not faults:
        return "<p>No faults were injected.</p>"
    head = [
        "id",
        "fault",
        "from - to (s)",
        "lasted",
        "edges cut off / stopped",
        "max seqs behind",
        "max time behind",
        "slowest catch-up after its end",
    ]
    rows = _fault_rows(faults)
    html = _table(head, rows[:MAX_FAULT_ROWS], {3, 5, 6, 7})
    if len(rows) > MAX_FAULT_ROWS:
        rest = _table(head, rows[MAX_FAULT_ROWS:], {3, 5, 6, 7})
        html += (
            f"<details><summary>{len(rows) - MAX_FAULT_ROWS} more faults</summary>{rest}</details>"
        )
    note = (
        '<p class="sub">Behind = seqs acknowledged to the workload that the edge\'s watermark '
        "does not cover yet, and the age of the oldest of them; measured from the fault's start "
        "until the edge caught up.  Catch-up = from the fault's end (heal, restart) until the "
        "edge's watermark reached the highest seq acknowledged at that end (sampling "
        f"resolution {_sample_step(report)}).  A restarted edge without a data directory "
        "starts empty, so it is behind by everything until it has re-synced.</p>"
    )
    return html + note


def _sample_step(report: dict[str, Any]) -> str:
    times = (report.get("lag") or {}).get("times") or []
    if len(times) < 2:
        return "n/a"
    return f"{(times[-1] - times[0]) / (len(times) - 1):.2f} s"


def _plots(report: dict[str, Any], plots: dict[str, bytes] | None) -> str:
    if plots is None:
        return (
            '<p class="noplots" id="no-plots">The plots need matplotlib, which is not '
            "installed: <code>pip install 'edgekv[plot]'</code>, then run the experiment "
            "again.  The tables above hold every figure.</p>"
        )
    out = []
    for name, (title, _) in PLOTS.items():
        png = plots.get(name)
        if png is None:
            out.append(f'<p id="plot-{name}">{escape(title)}: no data in this run.</p>')
            continue
        data = base64.b64encode(png).decode("ascii")
        caption = _QUESTIONS[name]
        if name == "traffic" and list((report.get("traffic") or {}).get("messages", {})) == ["ALL"]:
            caption += (
                "  Across processes only each live edge's total is known (its /status "
                "counters, no split by type, the origin left out; a restarted edge counts "
                "from 0 again)."
            )
        out.append(
            f'<figure id="plot-{name}"><img alt="{escape(title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{escape(title)}.</b> '
            f"{escape(caption)}</figcaption></figure>"
        )
    return "\n".join(out)


def _messages(report: dict[str, Any]) -> str:
    m = report.get("messages", {})
    by_type, nbytes = m.get("by_type", {}), m.get("bytes_by_type", {})
    if not by_type:
        return ""
    rows = [
        [escape(k), str(v), str(nbytes.get(k, 0))]
        for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
    ]
    return "<h2>Messages by type (whole run)</h2>" + _table(
        ["type", "messages", "bytes"], rows, {1, 2}
    )


def _replay(report: dict[str, Any]) -> str:
    if report.get("replay"):
        return str(report["replay"])
    return (
        f"edgekv experiment {report['scenario']} --seed {report['seed']} "
        f"--network {report['network']} --out DIR"
    )


def render_html(report: dict[str, Any], plots: dict[str, bytes] | bool | None = True) -> str:
    """The page for `report`; `plots`: PNGs by name, None for none, True to render them."""
    pngs = render_plots(report) if plots is True else plots if plots is not False else None
    cfg = report.get("config", {})
    passed = report.get("passed", True)
    badge = (
        '<span class="badge pass">passed</span>'
        if passed
        else '<span class="badge fail">FAILED</span>'
    )
    name = report["scenario"]
    title = "edgekv testnet run" if name == "testnet" else f"edgekv experiment: {name}"
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)} {badge}</h1>",
        f'<p class="sub" id="scenario">{escape(str(cfg.get("description", "")))}<br>'
        f"network <b>{escape(str(report['network']))}</b>, seed <b>{report['seed']}</b>, "
        f"{report['checker']['edges']} edges, latency {_num(cfg.get('latency'), ' s')}, "
        f"loss {_num(cfg.get('loss'))}.  Replay: <code>{escape(_replay(report))}</code>"
        " (with the same options).</p>",
        '<h2>Summary</h2><div id="summary">',
        _headline(report),
        '</div><h2>Assertions</h2><div id="assertions">',
        _assertions(report),
        "</div><h2>Faults: who was cut off, how far behind, how long to catch up</h2>",
        '<div id="faults">',
        _faults(report),
        '</div><h2>Plots</h2><div id="plots">',
        _plots(report, pngs),
        "</div>",
        _messages(report),
        "<h2>Scenario</h2><details><summary>configuration</summary><pre>",
        escape(json.dumps(cfg, indent=1)),
        "</pre></details></body></html>\n",
    ]
    return "".join(parts)


def headless_chromium(profile: Path) -> list[str] | None:
    """The start of a command line that runs Debian's Chromium headless, offline, with a
    throwaway profile in `profile` (add e.g. `--screenshot=F` or `--dump-dom` and the page's
    file URI); None when no chromium is installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return None
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-proxy-server",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
