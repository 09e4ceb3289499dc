"""What an edge reports about itself: `/status` (JSON), `/metrics` (Prometheus text) and the
progress lines of a snapshot (`event=snapshot`, `log_progress`).

Kept apart from node/edge.py (lifecycle, reads, writes): these read the node's parts (replica,
runtime, persistence, watch hub, snapshot progress) and change nothing.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio

from edgekv.node.fdbudget import fds_counters, fds_gauges, fds_status
from edgekv.node.metrics import (
    NodeCollector,
    antientropy_repairs,
    antientropy_rounds,
    node_rejections,
    peer_field,
    peer_json,
)
from edgekv.node.procinfo import process_info

if TYPE_CHECKING:
    from edgekv.node.edge import EdgeNode

__all__ = ["edge_metrics_text", "edge_status", "log_progress"]

PROGRESS_EVERY = 1.0  # seconds between progress lines while a snapshot streams

progress_logger = logging.getLogger("edgekv.snapshot")  # the daemon shows it at INFO


async def log_progress(node: EdgeNode) -> None:
    """Progress lines while a snapshot streams (and one when it is installed)."""
    was_active = False
    while True:
        await anyio.sleep(PROGRESS_EVERY)
        runtime = node._runtime
        if runtime is None:
            continue
        boot = node.gossip.bootstrap
        if boot.active or was_active:
            st = boot.status(runtime.now())
            progress_logger.info(
                "event=snapshot node=%s state=%s source=%s keys=%d total=%d bytes=%d"
                " keys_per_s=%.0f seconds_left=%.1f resumes=%d watermark=%d",
                node.node_id,
                st["state"] if boot.active else "installed",
                st["source"],
                st["keys"],
                st["total_keys"],
                st["bytes"],
                st["keys_per_s"],
                st["seconds_left"],
                st["resumes"],
                node.replica.watermark,
            )
        was_active = boot.active


def _proofs_status(node: EdgeNode) -> dict[str, Any] | None:
    """Origin-signed writes: keys accepted and certificates kept (None: not verifying)."""
    proofs = node.replica.proofs
    if proofs is None:
        return None
    return {"keys": [k.hex() for k in proofs.keys], "certificates": len(proofs)}


def edge_status(node: EdgeNode) -> dict[str, Any]:
    """Node id, address, watermark, lag behind the origin, peers, digest roots, counters."""
    replica = node.replica
    runtime = node._runtime
    now_ms = node._wall_ms()
    peers: dict[str, Any] = {}
    # the lag is measured against the origin's own figure (what it told this node itself)
    # and what this replica holds: another peer's claim never moves it
    known_high = replica.covered.high
    origin_watermark: int | None = None
    rejected: dict[str, dict[str, int]] = {}
    if runtime is not None:
        gossip = node.gossip
        for address, info in gossip.peers().items():
            peers[address] = peer_json(info)
        rejected = node_rejections(runtime)
        for address, reasons in rejected.items():
            if address in peers:
                peers[address]["rejected"] = reasons
        if gossip.authority.heard_origin:
            origin_watermark = gossip.origin_watermark
            known_high = max(known_high, origin_watermark)
    lag_seqs = max(0, known_high - replica.watermark)
    last = runtime.metrics.last_written_at if runtime is not None else 0
    pending = replica.trees_pending
    out: dict[str, Any] = {
        "node_id": node.node_id,
        "role": "edge",
        "address": node._transport.address if node._transport is not None else None,
        "http": node.http_address,
        "origin": node.origin if runtime is None else runtime.resolve(node.origin),
        "watermark": replica.watermark,
        "covered_high": replica.covered.high,
        "purged": replica.purged,
        "origin_watermark": origin_watermark,
        "lag_seqs": lag_seqs,
        # ms since the newest write applied here was made, when behind (0 when caught up)
        "lag_ms": max(0, now_ms - last) if lag_seqs and last else 0,
        "keys": len(replica),
        "stores": replica.store_names(),
        "syncing": runtime is None or not runtime.running or node.gossip.bootstrap.active,
        # the Merkle trees are being built (after a restart's load or a snapshot: no roots,
        # no anti-entropy meanwhile)
        "trees_pending": pending,
        "ready": node.is_ready(),
        "snapshot": None if runtime is None else node.gossip.bootstrap.status(runtime.now()),
        "roots": None
        if pending
        else {name or "<meta>": f"{root:032x}" for name, root in replica.roots().items()},
        "root": None if pending else f"{replica.root:032x}",
        "peers": peers,
        "rejected": rejected,  # peer -> reason -> items refused from it (hostile claims)
        "watchers": node.hub.count(),
        # the link-fault policy in force (testnets, `--fault-file`), None without one
        "faults": None if node.faults is None else node.faults.to_spec(),
        "process": process_info(),
        "fds": fds_status(node._transport),
        "verification": _proofs_status(node),
        "rejected_unsigned": dict(runtime.metrics.rejected) if runtime is not None else {},
    }
    if runtime is not None:
        counters = runtime.gossip.counters
        out["antientropy"] = {
            "rounds": antientropy_rounds(counters),
            "repairs": antientropy_repairs(counters),
        }
        hist = runtime.metrics.propagation_ms
        out["propagation_ms"] = {  # bucket upper bounds (JSON-safe: None when unknown)
            "count": hist.count,
            "p50_le": _json_number(hist.quantile(0.5)),
            "p99_le": _json_number(hist.quantile(0.99)),
        }
        out["counters"] = {
            "gossip": dict(counters),
            "node": dict(runtime.metrics.events),
            "transport": runtime.transport.stats.total(),
            "changes_applied": runtime.metrics.changes_applied,
        }
    if node._persist is not None:
        out["persistence"] = {
            "path": str(node._persist.path),
            "persisted_watermark": node._persist.persisted_watermark,
            "flushes": node._persist.flushes,
            "rows_written": node._persist.rows_written,
            "flush_failures": node._persist.failures,
            "flush_held": node._persist.held(),  # a whole snapshot streams (persistence rule 6)
            "loaded_keys": node.load_report.keys if node.load_report else 0,
            "load_seconds": node.load_report.seconds if node.load_report else 0.0,
            "corrupt_moved_to": node.load_report.corrupt_moved_to if node.load_report else None,
        }
    return out


def edge_metrics_text(node: EdgeNode) -> str:
    """Prometheus text exposition of this node."""
    runtime = node.runtime
    replica = node.replica
    states = [str(peer_field(info, "state")) for info in runtime.gossip.peers().values()]
    status = edge_status(node)
    gauges = {
        "keys": float(len(replica)),
        "watermark": float(replica.watermark),
        "lag_seqs": float(status["lag_seqs"]),
        "lag_ms": float(status["lag_ms"]),
        "watchers": float(node.hub.count()),
        **fds_gauges(runtime.transport),
    }
    if node._persist is not None:
        gauges["persisted_watermark"] = float(node._persist.persisted_watermark)
    return NodeCollector(
        node_id=node.node_id,
        stats=runtime.transport.stats,
        metrics=runtime.metrics,
        gossip_counters=runtime.gossip.counters,
        gauges=gauges,
        peer_states=states,
        counters=fds_counters(runtime.transport),
        rejections=node_rejections(runtime),
    ).text()


def _json_number(x: float) -> float | None:
    return x if math.isfinite(x) else None
