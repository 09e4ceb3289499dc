"""What a finished experiment did to whom: faults, per-edge lag, and series over time.

Pure functions over a report (the dict `run_experiment` returns, or a loaded report.json); the
plots (`plot.py`) and the page (`html.py`) draw what these compute, and nothing here needs
matplotlib.

- *Faults* come from the harness's event log: a partition, isolation or block lasts until the
  next heal, a crash until that node's restart (or the end), a loss or latency change until the
  next change of the same kind.  Each gets a short id (F1, F2...) and the nodes it cut off.
  Faults that follow each other closely (a rolling restart) form one *episode*: the propagation
  CDF compares the phases before, during and after each episode.
- *Lag* of an edge at a sample time: in seqs, the highest seq acknowledged to the workload by
  then minus the edge's watermark; in seconds, the age of the oldest acknowledged write above
  that watermark (the edge cannot yet serve it).  While an edge is down it keeps the watermark
  it last reported (it serves nothing newer), so its lag grows; the heatmap shows it as down.
- *Catch-up* after a fault: from the fault's end (heal, restart) until the edge's watermark
  first reaches the highest seq acknowledged at that end (sampling resolution).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekv.testnet.checker import percentile

__all__ = [
    "EdgeImpact",
    "Fault",
    "LagMatrix",
    "Phase",
    "compact_names",
    "episodes",
    "fault_impacts",
    "faults_from_events",
    "lag_matrix",
    "phases",
    "propagation_series",
    "time_bin",
    "traffic_series",
]

_STARTS = {"partition", "isolate", "block"}
_SHORT = {
    "partition": "partition",
    "isolate": "isolate",
    "block": "block",
    "crash": "crash",
    "set_loss": "loss",
    "set_latency": "latency",
}


@dataclass(slots=True)
class Fault:
    """One fault interval and the nodes it affected (empty for a network-wide condition)."""

    id: str
    kind: str  # partition | isolate | block | crash | set_loss | set_latency
    start: float
    end: float | None  # None: still on when the run ended
    nodes: list[str]
    detail: str

    @property
    def label(self) -> str:
        """A one-line description for legends and tables."""
        who = compact_names(self.nodes) if self.nodes else "every link"
        if self.kind == "partition":
            return f"partition ({self.detail}): {who} cut off"
        if self.kind == "crash":
            return f"crash + restart {who}"
        if self.kind in ("set_loss", "set_latency"):
            return f"{_SHORT[self.kind]} {self.detail} on {who}"
        return f"{self.kind} {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def faults_from_events(
    events: Sequence[Sequence[Any]], event_nodes: Sequence[Sequence[str]] | None = None
) -> list[Fault]:
    """Fault intervals from the harness's (time, action, detail) log, in start order."""
    nodes_of = list(event_nodes or [])
    open_links: list[Fault] = []
    down: dict[str, Fault] = {}
    condition: dict[str, Fault] = {}
    out: list[Fault] = []
    for i, (t, action, detail) in enumerate(events):
        nodes = list(nodes_of[i]) if i < len(nodes_of) else []
        t = float(t)
        if action in _STARTS:
            if not nodes and action == "isolate":
                nodes = [str(detail)]
            f = Fault("", action, t, None, nodes, str(detail))
            open_links.append(f)
            out.append(f)
        elif action == "heal":
            for f in open_links:
                f.end = t
            open_links = []
        elif action == "crash":
            name = nodes[0] if nodes else str(detail)
            f = Fault("", "crash", t, None, [name], name)
            down[name] = f
            out.append(f)
        elif action == "restart":
            name = nodes[0] if nodes else str(detail)
            if name in down:
                down.pop(name).end = t
        elif action in ("set_loss", "set_latency"):
            prev = condition.pop(action, None)
            if prev is not None:
                prev.end = t
            if not (action == "set_loss" and str(detail) in ("0", "0.0")):
                f = Fault("", action, t, None, [], str(detail))
                condition[action] = f
                out.append(f)
    out.sort(key=lambda f: f.start)
    for n, f in enumerate(out, 1):
        f.id = f"F{n}"
    return out


def episodes(faults: Sequence[Fault], t_end: float) -> list[tuple[float, float, list[Fault]]]:
    """Faults merged into episodes: overlapping ones, and ones whose gap is no longer than the
    longer of the two (a rolling restart is one episode, two far-apart partitions are two)."""
    out: list[tuple[float, float, list[Fault]]] = []
    for f in sorted(faults, key=lambda f: f.start):
        end = f.end if f.end is not None else t_end
        if out:
            s, e, fs = out[-1]
            last = fs[-1]
            last_len = (last.end if last.end is not None else t_end) - last.start
            if f.start <= e or f.start - e <= max(last_len, end - f.start):
                out[-1] = (s, max(e, end), [*fs, f])
                continue
        out.append((f.start, end, [f]))
    return out


def fault_ids(fs: Sequence[Fault]) -> str:
    return fs[0].id if len(fs) == 1 else f"{fs[0].id}-{fs[-1].id}"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start: float
    end: float


def phases(faults: Sequence[Fault], t_end: float) -> list[Phase]:
    """Before the first episode, during each, and after each (until the next one starts)."""
    eps = episodes(faults, t_end)
    if not eps:
        return [Phase("no fault", 0.0, t_end)]
    out = [Phase("before faults", 0.0, eps[0][0])] if eps[0][0] > 0 else []
    for i, (s, e, fs) in enumerate(eps):
        ids = fault_ids(fs)
        out.append(Phase(f"during {ids}", s, e))
        nxt = eps[i + 1][0] if i + 1 < len(eps) else float("inf")
        if nxt > e:
            out.append(Phase(f"after {ids}", e, nxt))
    return out


def compact_names(names: Sequence[str]) -> str:
    """'edge-6…edge-11 (6)' for runs of consecutive edges, comma-separated otherwise."""
    if not names:
        return "-"
    idx: list[int] = []
    other: list[str] = []
    for n in names:
        if n.startswith("edge-") and n[5:].isdigit():
            idx.append(int(n[5:]))
        else:
            other.append(n)
    runs: list[str] = []
    idx.sort()
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        runs.append(f"edge-{idx[i]}" if i == j else f"edge-{idx[i]}…edge-{idx[j]}")
        i = j + 1
    parts = other + runs
    text = ", ".join(parts[:4]) + (f", … ({len(parts) - 4} more runs)" if len(parts) > 4 else "")
    return text if len(names) == 1 else f"{text} ({len(names)} nodes)"


# --- lag -------------------------------------------------------------------------------------


@dataclass(slots=True)
class LagMatrix:
    """Per edge and sample time: seqs and seconds behind.  A down edge is as far behind as its
    last watermark says (it serves nothing newer); None before its first sample."""

    edges: list[str]
    times: list[float]
    seqs: list[list[int | None]]  # [edge][sample]
    seconds: list[list[float | None]]
    down: list[list[bool]]  # [edge][sample]: no watermark (crashed, stopped, unreachable)
    reference: list[int]  # highest acked seq at each sample time


class _Acked:
    """Acked writes as they accumulate over time, queried by seq."""

    def __init__(self, writes: Sequence[dict[str, Any]]) -> None:
        acked = [(float(w["acked_at"]), int(w["seq"])) for w in writes if w.get("seq") is not None]
        self.by_time = sorted(acked)
        self.i = 0
        self.seqs: list[int] = []
        self.at: list[float] = []
        self.high = 0

    def advance(self, t: float) -> None:
        while self.i < len(self.by_time) and self.by_time[self.i][0] <= t:
            at, seq = self.by_time[self.i]
            k = bisect.bisect_left(self.seqs, seq)
            self.seqs.insert(k, seq)
            self.at.insert(k, at)
            self.high = max(self.high, seq)
            self.i += 1

    def oldest_above(self, wm: int) -> float | None:
        """Ack time of the lowest acked seq above `wm`, or None if it holds them all."""
        k = bisect.bisect_right(self.seqs, wm)
        return self.at[k] if k < len(self.seqs) else None


def lag_matrix(report: dict[str, Any]) -> LagMatrix | None:
    """The lag of every edge at every sample (see the module docstring); None if not sampled."""
    lag = report.get("lag")
    if not lag or not lag.get("times"):
        return None
    edges: list[str] = list(lag["edges"])
    times = [float(t) for t in lag["times"]]
    acked = _Acked(report["writes"])
    seqs: list[list[int | None]] = [[] for _ in edges]
    secs: list[list[float | None]] = [[] for _ in edges]
    down: list[list[bool]] = [[] for _ in edges]
    last: list[int | None] = [None for _ in edges]
    reference = []
    for t, row in zip(times, lag["watermarks"], strict=True):
        acked.advance(t)
        reference.append(acked.high)
        for e, wm in enumerate(row):
            down[e].append(wm is None)
            if wm is not None:
                last[e] = int(wm)
            held = last[e]
            if held is None:
                seqs[e].append(None)
                secs[e].append(None)
                continue
            seqs[e].append(max(0, acked.high - held))
            oldest = acked.oldest_above(held)
            secs[e].append(0.0 if oldest is None else round(max(0.0, t - oldest), 6))
    return LagMatrix(edges, times, seqs, secs, down, reference)


@dataclass(slots=True)
class EdgeImpact:
    """What one fault did to one edge."""

    edge: str
    max_seqs: int
    max_seconds: float
    catch_up: float | None  # seconds from the fault's end to holding all acked by then


@dataclass(slots=True)
class FaultImpact:
    fault: Fault
    edges: list[EdgeImpact] = field(default_factory=list)

    def worst(self) -> tuple[int, float, float | None, bool]:
        """(max seqs, max seconds, slowest catch-up, every edge caught up)."""
        if not self.edges:
            return 0, 0.0, None, True
        ups = [e.catch_up for e in self.edges]
        done = [u for u in ups if u is not None]
        return (
            max(e.max_seqs for e in self.edges),
            max(e.max_seconds for e in self.edges),
            max(done) if done else None,
            len(done) == len(ups),
        )


def fault_impacts(
    faults: Sequence[Fault], lag: LagMatrix | None, t_end: float
) -> list[FaultImpact]:
    """Per fault and affected edge: how far behind it fell (from the fault's start until it
    caught up) and how long it took to catch up after the fault's end."""
    out = []
    row = {e: i for i, e in enumerate(lag.edges)} if lag is not None else {}
    for f in faults:
        imp = FaultImpact(f)
        out.append(imp)
        if lag is None:
            continue
        end = f.end if f.end is not None else t_end
        k_end = bisect.bisect_left(lag.times, end)
        target = lag.reference[min(k_end, len(lag.times) - 1)] if lag.times else 0
        names = f.nodes or lag.edges
        for name in names:
            i = row.get(name)
            if i is None:
                continue
            up_at: int | None = None
            for k in range(k_end, len(lag.times)):
                wm_lag = lag.seqs[i][k]
                if (
                    wm_lag is not None
                    and not lag.down[i][k]
                    and lag.reference[k] - wm_lag >= target
                ):
                    up_at = k
                    break
            k0 = bisect.bisect_left(lag.times, f.start)
            k1 = (up_at if up_at is not None else len(lag.times) - 1) + 1
            s = [v for v in lag.seqs[i][k0:k1] if v is not None]
            ms = [v for v in lag.seconds[i][k0:k1] if v is not None]
            catch = None if up_at is None else round(max(0.0, lag.times[up_at] - end), 6)
            imp.edges.append(EdgeImpact(name, max(s, default=0), max(ms, default=0.0), catch))
    return out


# --- series over time ------------------------------------------------------------------------


def time_bin(t_end: float) -> float:
    """The bin width of the series: one second for runs of 20 s or more, finer below."""
    if t_end >= 20:
        return 1.0
    for b in (0.5, 0.25, 0.1, 0.05):
        if t_end / b >= 20:
            return b
    return 0.05


def propagation_series(
    report: dict[str, Any], width: float
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Per bin of ack time: p50/p99/max of ack->each edge and of ack->last edge (seconds)."""
    n_edges = int(report["checker"]["edges"])
    each: dict[int, list[float]] = {}
    last: dict[int, list[float]] = {}
    for w in report["writes"]:
        if w.get("acked_at") is None:
            continue
        a = float(w["acked_at"])
        b = int(a // width)
        lat = [float(t) - a for t in w["reached"].values()]
        each.setdefault(b, []).extend(lat)
        if len(lat) == n_edges and lat:
            last.setdefault(b, []).append(max(lat))
    if not each:
        return [], {}
    bins = range(min(each), max(each) + 1)
    starts = [round(b * width, 6) for b in bins]
    series: dict[str, list[float | None]] = {}
    for name, data in (("each", each), ("last", last)):
        for q, label in ((50, "p50"), (99, "p99"), (100, "max")):
            series[f"{name} {label}"] = [
                percentile(data[b], q) if data.get(b) else None for b in bins
            ]
    return starts, series


def traffic_series(
    report: dict[str, Any], width: float, top: int = 7
) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """Per bin: messages/s and bytes/s by message type (the `top` busiest, the rest 'other')."""
    tr = report.get("traffic")
    if not tr or len(tr.get("times", ())) < 2:
        return [], {}, {}
    times = [float(t) for t in tr["times"]]
    edges_t: list[float] = []
    idx: list[int] = []
    t = times[0]
    while t <= times[-1] + 1e-9:
        k = bisect.bisect_left(times, t - 1e-9)
        if k < len(times) and (not idx or k != idx[-1]):
            edges_t.append(times[k])
            idx.append(k)
        t += width
    if len(idx) < 2:
        return [], {}, {}

    def rates(cum: dict[str, list[int]]) -> dict[str, list[float]]:
        return {
            kind: [
                max(0.0, (values[b] - values[a]) / (times[b] - times[a]))
                for a, b in itertools.pairwise(idx)
            ]
            for kind, values in cum.items()
        }

    def grouped(data: dict[str, list[float]], keep: list[str]) -> dict[str, list[float]]:
        out = {k: data[k] for k in keep if k in data}
        rest = [data[k] for k in data if k not in keep]
        if rest:
            out["other"] = [sum(col) for col in zip(*rest, strict=True)]
        return out

    msgs, nbytes = rates(tr["messages"]), rates(tr["bytes"])
    by_count = sorted(msgs, key=lambda k: -sum(msgs[k]))
    by_bytes = sorted(nbytes, key=lambda k: -sum(nbytes[k]))
    keep = by_count
    if len(by_count) > top + 1:  # the busiest by count, and the heaviest by bytes
        keep = list(dict.fromkeys(by_count[: top - 2] + by_bytes[:2] + by_count))[:top]
    return edges_t[:-1], grouped(msgs, keep), grouped(nbytes, keep)


def run_end(report: dict[str, Any]) -> float:
    """The last time the report covers (the last sample, or the timeline's end)."""
    times = (report.get("lag") or {}).get("times") or []
    return float(max([float(report.get("timeline_end") or 0.0), *times[-1:]]))


def fault_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON-ready: every fault with the edges it affected, how far behind they fell and how
    long they took to catch up after it (the summary table of report.html)."""
    t_end = run_end(report)
    faults = faults_from_events(report["events"], report.get("event_nodes"))
    out = []
    for imp in fault_impacts(faults, lag_matrix(report), t_end):
        f = imp.fault
        max_seqs, max_secs, catch, all_up = imp.worst()
        out.append(
            {
                **f.as_json(),
                "duration": round((f.end if f.end is not None else t_end) - f.start, 6),
                "max_seqs_behind": max_seqs,
                "max_seconds_behind": max_secs,
                "catch_up_max": catch,
                "all_caught_up": all_up,
                "edges": [
                    {
                        "edge": e.edge,
                        "max_seqs": e.max_seqs,
                        "max_seconds": e.max_seconds,
                        "catch_up": e.catch_up,
                    }
                    for e in imp.edges
                ],
            }
        )
    return out
