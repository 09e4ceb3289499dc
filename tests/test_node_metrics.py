"""Metrics: histogram buckets and quantiles, Prometheus text format."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgekv.gossip.transport import TransportStats
from edgekv.node.metrics import Histogram, NodeCollector, NodeMetrics


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
    text = NodeCollector(
        node_id='e"1',
        stats=stats,
        metrics=metrics,
        gossip_counters=Counter({"ae_rounds": 3, "ae_states_received": 4, "ae_removed": 1}),
        gauges={"watermark": 42, "lag_ms": 0.5},
        peer_states=["alive", "alive", "dead"],
    ).text()
    lines = text.splitlines()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"node": 'e"1', **labels}.items())))]

    assert 'edgekv_messages_sent_total{node="e\\"1",type="PUSH"} 2.0' in lines  # escaped
    assert value("edgekv_bytes_sent_total", type="PUSH") == 150
    assert value("edgekv_messages_received_total", type="ACK") == 1
    # 120 ms, in seconds as Prometheus has it
    assert value("edgekv_propagation_latency_seconds_bucket", le="0.1") == 0
    assert value("edgekv_propagation_latency_seconds_bucket", le="0.2") == 1
    assert value("edgekv_propagation_latency_seconds_bucket", le="+Inf") == 1
    assert value("edgekv_propagation_latency_seconds_count") == 1
    assert value("edgekv_propagation_latency_seconds_sum") == pytest.approx(0.12)
    assert value("edgekv_antientropy_rounds_total") == 3
    assert value("edgekv_antientropy_repairs_total") == 5
    assert value("edgekv_node_events_total", event="protocol_errors") == 2
    assert value("edgekv_peers", state="alive") == 2
    assert value("edgekv_watermark") == 42
    assert value("edgekv_lag_seconds") == pytest.approx(0.0005)  # the node's lag_ms
    assert text.endswith("\n")
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{", 1)[0]
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in typed or base in typed, line
