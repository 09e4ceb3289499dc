"""A small hand-made experiment report with known answers, for the plot and page tests.

Writes every 0.1 s from 0 to 4 s (seq = index + 2), each served by every edge 0.05 s after
its ack, except: a partition F1 from 1.0 to 2.0 s cuts off the second half of the edges (they
serve what was acked meanwhile at 2.2 s), and edge-0 is down from 2.5 to 3.0 s (it serves
what was acked meanwhile at 3.1 s).  Watermarks are sampled every 0.1 s up to 4.5 s.
"""

from __future__ import annotations

from typing import Any, TypedDict


class _Write(TypedDict):
    id: int
    key: str
    seq: int
    acked_at: float
    reached: dict[str, float]


def synthetic_report(edges: int = 4) -> dict[str, Any]:
    names = [f"edge-{i}" for i in range(edges)]
    cut = names[edges // 2 :]
    writes: list[_Write] = []
    for i in range(40):
        acked = round(0.1 * i + 0.01, 6)
        reached: dict[str, float] = {}
        for e in names:
            t = acked + 0.05
            if e in cut and 1.0 <= acked < 2.0:
                t = 2.2
            if e == "edge-0" and 2.45 <= acked < 3.0:
                t = 3.1
            reached[e] = round(t, 6)
        writes.append(
            {"id": i, "key": f"k{i % 7}", "seq": i + 2, "acked_at": acked, "reached": reached}
        )
    times = [round(0.1 * k, 6) for k in range(46)]
    watermarks = []
    for t in times:
        row: list[int | None] = []
        for e in names:
            if e == "edge-0" and 2.5 <= t < 3.0:
                row.append(None)
                continue
            wm = 1
            for w in writes:
                if w["reached"][e] <= t + 1e-9:
                    wm = w["seq"]
                else:
                    break
            row.append(wm)
        watermarks.append(row)
    n = len(times)
    events = [
        [1.0, "partition", f"{1 + edges // 2} | {len(cut)} nodes"],
        [2.0, "heal", ""],
        [2.5, "crash", "edge-0"],
        [3.0, "restart", "edge-0"],
    ]
    return {
        "scenario": "synthetic",
        "seed": 1,
        "network": "sim",
        "config": {"description": "hand-made", "latency": 0.05, "loss": 0.0},
        "wall_seconds": 0.1,
        "timeline_end": 4.0,
        "convergence_after_timeline": 0.0,
        "writes_failed": 0,
        "lost": [],
        "events": events,
        "event_nodes": [cut, [], ["edge-0"], ["edge-0"]],
        "checker": {
            "edges": edges,
            "writes_issued": 40,
            "writes_acked": 40,
            "propagation": {"count": 160, "p50": 0.05, "p99": 1.19, "max": 1.19},
            "propagation_to_last_edge": {"count": 40, "p50": 0.05, "p99": 1.19, "max": 1.19},
            "unreached": 0,
            "violations": 0,
        },
        "violations": [],
        "messages": {
            "by_type": {"PUSH": 10 * n, "IHAVE": 5 * n},
            "bytes_by_type": {"PUSH": 1000 * n, "IHAVE": 200 * n},
            "total": 15 * n,
            "dropped": 0,
            "per_write": 15 * n / 40,
        },
        "agreement": [[t, 1.0, 1] for t in times],
        "recovery": [],
        "lag": {"edges": names, "times": times, "watermarks": watermarks},
        "traffic": {
            "times": times,
            "messages": {"PUSH": [10 * k for k in range(n)], "IHAVE": [5 * k for k in range(n)]},
            "bytes": {"PUSH": [1000 * k for k in range(n)], "IHAVE": [200 * k for k in range(n)]},
        },
        "writes": writes,
        "assertions": [
            {"name": "nothing_lost", "expected": True, "actual": {"lost": 0}, "passed": True}
        ],
        "passed": True,
    }
