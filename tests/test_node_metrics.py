"""Metrics: histogram buckets and quantiles, Prometheus text format."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from edgekv.gossip.transport import TransportStats
from edgekv.node.metrics import Histogram, NodeMetrics, render_prometheus


def test_histogram_buckets_are_cumulative_and_le() -> None:
    h = Histogram((10, 100, 1000))
    assert math.isnan(h.quantile(0.5))
    for v in (0, 10, 11, 100, 5000):
        h.observe(v)
    assert h.cumulative() == [(10.0, 2), (100.0, 4), (1000.0, 4), (math.inf, 5)]
    assert h.count == 5 and h.sum == 5121
    assert h.quantile(0.4) == 10 and h.quantile(0.8) == 100 and h.quantile(1.0) == math.inf
    with pytest.raises(ValueError):
        Histogram((10, 5))


def test_prometheus_text() -> None:
    stats = TransportStats()
    stats.record_sent("PUSH", 100)
    stats.record_sent("PUSH", 50)
    stats.record_received("ACK", 7)
    metrics = NodeMetrics()
    metrics.propagation_ms.observe(120)
    metrics.events["protocol_errors"] = 2
    text = render_prometheus(
        node_id='e"1',
        stats=stats,
        metrics=metrics,
        gossip_counters=Counter({"ae_rounds": 3, "ae_states_received": 4, "ae_removed": 1}),
        gauges={"watermark": 42, "lag_ms": 0.5},
        peer_states=["alive", "alive", "dead"],
    )
    lines = text.splitlines()
    assert 'edgekv_messages_sent_total{node="e\\"1",type="PUSH"} 2' in lines
    assert 'edgekv_bytes_sent_total{node="e\\"1",type="PUSH"} 150' in lines
    assert 'edgekv_messages_received_total{node="e\\"1",type="ACK"} 1' in lines
    assert 'edgekv_propagation_latency_ms_bucket{node="e\\"1",le="100"} 0' in lines
    assert 'edgekv_propagation_latency_ms_bucket{node="e\\"1",le="200"} 1' in lines
    assert 'edgekv_propagation_latency_ms_bucket{node="e\\"1",le="+Inf"} 1' in lines
    assert 'edgekv_propagation_latency_ms_count{node="e\\"1"} 1' in lines
    assert 'edgekv_antientropy_rounds_total{node="e\\"1"} 3' in lines
    assert 'edgekv_antientropy_repairs_total{node="e\\"1"} 5' in lines
    assert 'edgekv_node_events_total{node="e\\"1",event="protocol_errors"} 2' in lines
    assert 'edgekv_peers{node="e\\"1",state="alive"} 2' in lines
    assert 'edgekv_watermark{node="e\\"1"} 42' in lines
    assert 'edgekv_lag_ms{node="e\\"1"} 0.5' in lines
    assert text.endswith("\n")
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{", 1)[0]
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in typed or base in typed, line
