"""Node metrics: a fixed-bucket histogram and the Prometheus text exposition of a node.

Kept dependency-free (no prometheus_client): the admin HTTP API renders `render_prometheus`,
and `status()` dictionaries reuse the same numbers.  Counters that already live elsewhere
(transport traffic in `TransportStats`, gossip counters in `GossipNode.counters`) are read at
render time rather than copied, so there is one source of truth for each figure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgekv.gossip.transport import TransportStats

__all__ = [
    "LATENCY_BUCKETS_MS",
    "Histogram",
    "NodeMetrics",
    "antientropy_repairs",
    "antientropy_rounds",
    "merge_rejections",
    "node_rejections",
    "render_prometheus",
]

# Propagation latency buckets (ms): FastEdge promises 1-2 s, so resolve well below and above it.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 5000, 10000, 60000
)  # fmt: skip


class Histogram:
    """Cumulative-bucket histogram with Prometheus semantics (`le` upper bounds, +Inf implied)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_MS) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) pairs, ending with (+inf, count)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile `q` (nan when empty)."""
        if not self.count:
            return math.nan
        rank = q * self.count
        for bound, total in self.cumulative():
            if total >= rank:
                return bound
        return math.inf


class NodeMetrics:
    """Figures the runtime measures itself (the rest is read from transport and gossip)."""

    def __init__(self) -> None:
        self.propagation_ms = Histogram()
        self.changes_applied = 0
        self.events: Counter[str] = Counter()  # protocol_errors, request_errors, ...
        self.rejected: Counter[str] = Counter()  # peer -> messages with unsigned states
        self.last_written_at = 0  # highest written_at seen in an applied change (ms)


def antientropy_rounds(counters: Mapping[str, int]) -> int:
    return counters.get("ae_rounds", 0)


def antientropy_repairs(counters: Mapping[str, int]) -> int:
    """Keys this node repaired through anti-entropy: states taken from a peer plus keys
    removed because they were deleted and purged elsewhere."""
    return counters.get("ae_states_received", 0) + counters.get("ae_removed", 0)


_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _metric(name: str) -> str:
    return _NAME_OK.sub("_", name)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    if isinstance(x, int) or float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def render_prometheus(
    *,
    node_id: str,
    stats: TransportStats,
    metrics: NodeMetrics,
    gossip_counters: Mapping[str, int],
    gauges: Mapping[str, float],
    peer_states: Iterable[str] = (),
    counters: Mapping[str, float] | None = None,
    rejections: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """The Prometheus text format (version 0.0.4) for one node."""
    lines: list[str] = []
    node = f'node="{_label(node_id)}"'

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    for direction in ("sent", "received"):
        msgs = getattr(stats, f"{direction}_messages")
        nbytes = getattr(stats, f"{direction}_bytes")
        family(f"edgekv_messages_{direction}_total", "counter", f"Messages {direction}, by type.")
        for kind in sorted(msgs):
            lines.append(
                f'edgekv_messages_{direction}_total{{{node},type="{_label(kind)}"}} {msgs[kind]}'
            )
        family(f"edgekv_bytes_{direction}_total", "counter", f"Frame bytes {direction}, by type.")
        for kind in sorted(nbytes):
            lines.append(
                f'edgekv_bytes_{direction}_total{{{node},type="{_label(kind)}"}} {nbytes[kind]}'
            )
    family("edgekv_messages_dropped_total", "counter", "Outbound copies that never arrived.")
    lines.append(f"edgekv_messages_dropped_total{{{node}}} {stats.dropped}")

    hist = metrics.propagation_ms
    family(
        "edgekv_propagation_latency_ms",
        "histogram",
        "Origin written_at to local apply, wall-clock ms, per applied change.",
    )
    for bound, total in hist.cumulative():
        lines.append(f'edgekv_propagation_latency_ms_bucket{{{node},le="{_num(bound)}"}} {total}')
    lines.append(f"edgekv_propagation_latency_ms_sum{{{node}}} {_num(hist.sum)}")
    lines.append(f"edgekv_propagation_latency_ms_count{{{node}}} {hist.count}")

    family("edgekv_changes_applied_total", "counter", "Key state changes applied locally.")
    lines.append(f"edgekv_changes_applied_total{{{node}}} {metrics.changes_applied}")

    family("edgekv_antientropy_rounds_total", "counter", "Anti-entropy sessions started here.")
    lines.append(f"edgekv_antientropy_rounds_total{{{node}}} {antientropy_rounds(gossip_counters)}")
    family(
        "edgekv_antientropy_repairs_total",
        "counter",
        "Keys repaired here by anti-entropy (states received plus keys removed as purged elsewhere).",
    )
    lines.append(
        f"edgekv_antientropy_repairs_total{{{node}}} {antientropy_repairs(gossip_counters)}"
    )
    family("edgekv_gossip_events_total", "counter", "Gossip core counters (anti-entropy, ...).")
    for name in sorted(gossip_counters):
        lines.append(
            f'edgekv_gossip_events_total{{{node},event="{_label(name)}"}} {gossip_counters[name]}'
        )
    family("edgekv_node_events_total", "counter", "Runtime events (protocol errors, ...).")
    for name in sorted(metrics.events):
        lines.append(
            f'edgekv_node_events_total{{{node},event="{_label(name)}"}} {metrics.events[name]}'
        )

    family(
        "edgekv_rejected_unsigned_total",
        "counter",
        "Messages rejected because a state was not signed by the origin, by sending peer.",
    )
    for peer in sorted(metrics.rejected):
        lines.append(
            f'edgekv_rejected_unsigned_total{{{node},peer="{_label(peer)}"}} '
            f"{metrics.rejected[peer]}"
        )

    peers = Counter(peer_states)
    family("edgekv_peers", "gauge", "Known peers by membership state.")
    for state in sorted(peers):
        lines.append(f'edgekv_peers{{{node},state="{_label(state)}"}} {peers[state]}')

    family(
        "edgekv_peer_rejections_total",
        "counter",
        "Items refused from a peer (states the origin never applies, hostile claims), by reason.",
    )
    for peer in sorted(rejections or {}):
        reasons = (rejections or {})[peer]
        for reason in sorted(reasons):
            lines.append(
                f'edgekv_peer_rejections_total{{{node},peer="{_label(peer)}",'
                f'reason="{_label(reason)}"}} {reasons[reason]}'
            )

    for name in sorted(gauges):
        metric = f"edgekv_{_metric(name)}"
        family(metric, "gauge", name.replace("_", " ").capitalize() + ".")
        lines.append(f"{metric}{{{node}}} {_num(gauges[name])}")
    for name in sorted(counters or {}):
        metric = f"edgekv_{_metric(name)}_total"
        family(metric, "counter", name.replace("_", " ").capitalize() + ".")
        lines.append(f"{metric}{{{node}}} {_num((counters or {})[name])}")
    return "\n".join(lines) + "\n"


def merge_rejections(
    *parts: Mapping[str, Mapping[str, int]],
) -> dict[str, dict[str, int]]:
    """peer (or remote host) -> reason -> count, summed over the gossip core and transport."""
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for who, reasons in part.items():
            mine = out.setdefault(who, {})
            for reason, n in reasons.items():
                mine[reason] = mine.get(reason, 0) + n
    return out


def node_rejections(runtime: Any) -> dict[str, dict[str, int]]:
    """peer (or remote host) -> reason -> count, for a node's `NodeRuntime`: what its gossip
    core refused (gossip/authority.py), messages with unsigned states (crdt/proofs.py) and
    connections its transport refused for a claim (node/tcp.py)."""
    rejections = getattr(runtime.gossip, "rejections", None)
    unsigned = {peer: {"unsigned_state": n} for peer, n in runtime.metrics.rejected.items()}
    refused = getattr(runtime.transport.stats, "refused_claims", {})
    return merge_rejections(rejections() if rejections else {}, unsigned, refused)


def peer_field(info: Any, name: str) -> Any:
    """One field of a gossip peer record (a dataclass or a mapping)."""
    if isinstance(info, Mapping):
        return info.get(name)
    return getattr(info, name, None)


def peer_json(info: Any) -> Any:
    """A gossip peer record as JSON-safe plain values (for `/status`)."""
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        out = dataclasses.asdict(info)
    elif isinstance(info, Mapping):
        out = dict(info)
    else:
        return str(info)
    return {
        k: (v if isinstance(v, int | float | str | bool | None) else str(v)) for k, v in out.items()
    }
