"""Node metrics: a fixed-bucket histogram and the Prometheus exposition of a node.

The node keeps its own figures (a `Histogram` of propagation times in ms, counters); a
prometheus_client custom collector (`NodeCollector`) exposes them, in seconds as Prometheus has
it, and the admin HTTP API serves `NodeCollector.text()`; `status()` dictionaries reuse the same
numbers.  Counters that already live elsewhere
(transport traffic in `TransportStats`, gossip counters in `GossipNode.counters`) are read at
render time rather than copied, so there is one source of truth for each figure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edgekv.gossip.transport import TransportStats, named

__all__ = [
    "LATENCY_BUCKETS_MS",
    "Histogram",
    "NodeCollector",
    "NodeMetrics",
    "antientropy_repairs",
    "antientropy_rounds",
    "merge_rejections",
    "node_rejections",
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

    def count_rejected(self, peer: str) -> None:
        """One message with unsigned states from `peer` (at most `MAX_NAMED` peers by name)."""
        self.rejected[named(self.rejected, peer)] += 1


def antientropy_rounds(counters: Mapping[str, int]) -> int:
    return counters.get("ae_rounds", 0)


def antientropy_repairs(counters: Mapping[str, int]) -> int:
    """Keys this node repaired through anti-entropy: states taken from a peer plus keys
    removed because they were deleted and purged elsewhere."""
    return counters.get("ae_states_received", 0) + counters.get("ae_removed", 0)


_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _metric(name: str) -> str:
    return _NAME_OK.sub("_", name)


def _describe(name: str) -> str:
    return name.replace("_", " ").capitalize() + "."


@dataclasses.dataclass(kw_only=True, eq=False)
class NodeCollector:
    """One node's figures as Prometheus metric families (a prometheus_client custom
    collector), read from their sources each time it is collected.

    Times are in seconds, as Prometheus has it: the propagation histogram's bounds and sum, and
    any gauge named `*_ms` (exposed as `*_seconds`).
    """

    node_id: str
    stats: TransportStats
    metrics: NodeMetrics
    gossip_counters: Mapping[str, int]
    gauges: Mapping[str, float]
    peer_states: Sequence[str] = ()
    counters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rejections: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        """The Prometheus text format (version 0.0.4) for this node."""
        return generate_latest(self).decode()

    def collect(self) -> Iterator[Metric]:
        node, stats, metrics = self.node_id, self.stats, self.metrics
        for direction in ("sent", "received"):
            msgs = getattr(stats, f"{direction}_messages")
            nbytes = getattr(stats, f"{direction}_bytes")
            yield _by(
                f"edgekv_messages_{direction}",
                f"Messages {direction}, by type.",
                node,
                "type",
                msgs,
            )
            yield _by(
                f"edgekv_bytes_{direction}",
                f"Frame bytes {direction}, by type.",
                node,
                "type",
                nbytes,
            )
        yield _one(
            "edgekv_messages_dropped", "Outbound copies that never arrived.", node, stats.dropped
        )
        yield _one(
            "edgekv_senders_evicted",
            "Per-peer send queues closed because max_senders were open (their frames dropped).",
            node,
            stats.senders_evicted,
        )

        hist = metrics.propagation_ms
        family = HistogramMetricFamily(
            "edgekv_propagation_latency_seconds",
            "Origin written_at to local apply, wall-clock seconds, per applied change.",
            labels=["node"],
        )
        buckets = [
            ("+Inf" if le == math.inf else repr(le / 1000), float(n)) for le, n in hist.cumulative()
        ]
        family.add_metric([node], buckets, hist.sum / 1000)
        yield family

        yield _one(
            "edgekv_changes_applied",
            "Key state changes applied locally.",
            node,
            metrics.changes_applied,
        )
        counters = self.gossip_counters
        yield _one(
            "edgekv_antientropy_rounds",
            "Anti-entropy sessions started here.",
            node,
            antientropy_rounds(counters),
        )
        yield _one(
            "edgekv_antientropy_repairs",
            "Keys repaired here by anti-entropy (states received plus keys removed as purged"
            " elsewhere).",
            node,
            antientropy_repairs(counters),
        )
        yield _by(
            "edgekv_gossip_events",
            "Gossip core counters (anti-entropy, ...).",
            node,
            "event",
            counters,
        )
        yield _by(
            "edgekv_node_events",
            "Runtime events (protocol errors, ...).",
            node,
            "event",
            metrics.events,
        )
        yield _by(
            "edgekv_rejected_unsigned",
            "Messages rejected because a state was not signed by the origin, by sending peer.",
            node,
            "peer",
            metrics.rejected,
        )
        peers = GaugeMetricFamily(
            "edgekv_peers", "Known peers by membership state.", labels=["node", "state"]
        )
        for state, n in sorted(Counter(self.peer_states).items()):
            peers.add_metric([node, state], n)
        yield peers
        refused = CounterMetricFamily(
            "edgekv_peer_rejections",
            "Items refused from a peer (states the origin never applies, hostile claims), by reason.",
            labels=["node", "peer", "reason"],
        )
        for peer in sorted(self.rejections):
            reasons = self.rejections[peer]
            for reason in sorted(reasons):
                refused.add_metric([node, peer, reason], reasons[reason])
        yield refused

        for name in sorted(self.gauges):
            value = self.gauges[name]
            if name.endswith("_ms"):
                name, value = name.removesuffix("_ms") + "_seconds", value / 1000
            gauge = GaugeMetricFamily(f"edgekv_{_metric(name)}", _describe(name), labels=["node"])
            gauge.add_metric([node], value)
            yield gauge
        for name in sorted(self.counters):
            yield _one(f"edgekv_{_metric(name)}", _describe(name), node, self.counters[name])


def _one(name: str, help_text: str, node: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=["node"])
    family.add_metric([node], value)
    return family


def _by(
    name: str, help_text: str, node: str, label: str, values: Mapping[str, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=["node", label])
    for key in sorted(values):
        family.add_metric([node, key], values[key])
    return family


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
