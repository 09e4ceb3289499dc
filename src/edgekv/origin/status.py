"""What an origin shows about itself: `GET /v1/status` (JSON) and `GET /metrics` (Prometheus).

Read-only views of a running `Origin` (server.py): its log and commit pipeline, its client
connections and its gossip peers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..gossip.transport import TransportStats
from ..node.fdbudget import fds_counters, fds_gauges, fds_status
from ..node.metrics import (
    NodeCollector,
    NodeMetrics,
    node_rejections,
    peer_field,
    peer_json,
)
from ..node.procinfo import process_info

if TYPE_CHECKING:
    from .server import Origin

__all__ = ["origin_metrics", "origin_status"]


def origin_status(origin: Origin) -> dict[str, Any]:
    """What `GET /v1/status` shows: the log, the commit pipeline, clients, gossip peers."""
    seq = origin.sequencer
    runtime = origin.runtime
    peers = {}
    rejected: dict[str, dict[str, int]] = {}
    if runtime is not None:
        peers = {a: peer_json(info) for a, info in runtime.gossip.peers().items()}
        rejected = _gossip_rejections(origin)
        for address, reasons in rejected.items():
            if address in peers:
                peers[address]["rejected"] = reasons
    return {
        "node_id": origin.node_id,
        "role": "origin",
        "address": origin.address or None,
        "http": origin.http_address or None,
        "watermark": origin.replica.watermark,
        "keys": len(origin.replica),
        "stores": origin.replica.store_names(),
        "root": f"{origin.replica.root:032x}",
        "log": {
            "high": seq.wal.high,
            "rows": seq.log_rows,
            "commits": seq.commits,
            "groups": seq.groups,
            "flushes": seq.flush_count,
            "flush_threads": seq.flush_threads,
            "kind": "sqlite" if origin.log_spec in (None, "sqlite") else "postgresql",
            "leading": origin.leading,
            "term": getattr(seq.wal, "term", None),
            "deduplicated": seq.deduplicated,
        },
        "clients": origin.clients,
        "idle_closed_clients": origin.idle_closed_clients,
        "client_pauses": origin.client_pauses,
        "peers": peers,
        "signing": None
        if origin.signer is None or origin.replica.proofs is None
        else {"key": origin.signer.key_id.hex(), "certificates": len(origin.replica.proofs)},
        "rejected_unsigned": dict(runtime.metrics.rejected) if runtime is not None else {},
        # peer -> reason -> items refused: the origin never applies a peer's states
        "rejected": rejected,
        "faults": None if origin.faults is None else origin.faults.to_spec(),
        "process": process_info(),
        "fds": fds_status(origin.transport),
        "transport": origin.transport.stats.total()
        if isinstance(getattr(origin.transport, "stats", None), TransportStats)
        else {},
    }


def origin_metrics(origin: Origin) -> str:
    """Prometheus text exposition of the origin (`GET /metrics`)."""
    seq, runtime = origin.sequencer, origin.runtime
    states: list[str] = []
    if runtime is not None:
        states = [str(peer_field(i, "state")) for i in runtime.gossip.peers().values()]
    return NodeCollector(
        node_id=origin.node_id,
        stats=runtime.transport.stats if runtime is not None else TransportStats(),
        metrics=runtime.metrics if runtime is not None else NodeMetrics(),
        gossip_counters=runtime.gossip.counters if runtime is not None else {},
        gauges={
            "keys": float(len(origin.replica)),
            "watermark": float(origin.replica.watermark),
            "origin_log_rows": float(seq.log_rows),
            "origin_clients": float(origin.clients),
            **fds_gauges(origin.transport),
        },
        counters={
            "origin_commits": float(seq.commits),
            "origin_commit_groups": float(seq.groups),
            "origin_log_flushes": float(seq.flush_count),
            **fds_counters(origin.transport),
        },
        peer_states=states,
        rejections=_gossip_rejections(origin),
    ).text()


def _gossip_rejections(origin: Origin) -> dict[str, dict[str, int]]:
    return {} if origin.runtime is None else node_rejections(origin.runtime)
