"""The runtime every node shares and the edge node built on it.

- `runtime`: NodeRuntime, the anyio driver of one sans-IO GossipNode over one Transport.
- `edge`: EdgeNode (local reads, writes through the origin, watch, persistence, admin HTTP).
- `kvstore`: KvStore, the FastEdge-style read/write API over one store of the replica.
- `watch`: `store.watch(prefix)`, the stream of changes applied on an edge.
- `persistence`: the edge replica in SQLite, flushed in batches, corruption detected.
- `admin_http`, `metrics`: the edge's admin HTTP API and Prometheus metrics.
- `tcp`, `faults`: the TCP transport and the seeded link-fault policy.

Nothing is imported here, so `import edgekv.node.tcp` stays cheap; use `edgekv.EdgeNode`.
"""
