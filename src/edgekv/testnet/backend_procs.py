"""`ProcessBackend`: the testnet's `processes=True` mode, one OS process per node.

The processes, their fault file and their HTTP status are `procs.ProcessCluster`'s; this
adapts it to the `Backend` interface.  No node lives in this process: `node()` is None, reads
and status go over each edge's admin HTTP API, and the client (a real `OriginClient`) is
wrapped in `HighSeq` so that "converged" can mean "every live edge holds the highest acked seq".
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from edgekv.errors import InvalidInput
from edgekv.gossip.transport import Transport, TransportStats
from edgekv.node.tlsconfig import TlsConfig
from edgekv.origin.client import OriginClient
from edgekv.testnet.backend import NetSpec, Node, Observation, Reader, TestnetClient
from edgekv.testnet.checker import BatchRead
from edgekv.testnet.clients import HighSeq
from edgekv.testnet.procs import ProcessCluster

__all__ = ["ProcessBackend"]


class ProcessBackend:
    """Every node its own process over TCP on 127.0.0.1 (see `procs`)."""

    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec
        self.tls_dir: Path | None = None
        self.cluster: ProcessCluster | None = None

    @property
    def procs(self) -> ProcessCluster:
        if self.cluster is None:
            raise InvalidInput("the testnet is not running")
        return self.cluster

    async def start(self, stack: AsyncExitStack, root: Path) -> TestnetClient:
        cluster = ProcessCluster(len(self.spec.edge_names), root, seed=self.spec.seed)
        cluster.write_faults(self.spec.faults)  # the initial latency and loss
        self.cluster = await stack.enter_async_context(cluster)
        client = await stack.enter_async_context(
            OriginClient(cluster.origin_address, cluster_id="edgekv")
        )
        return HighSeq(client, cluster)

    def cancel(self) -> None:
        pass  # closing the cluster kills every process

    def node(self, name: str) -> Node | None:
        self.address_of(name)  # a known name
        return None  # not in this process

    def live(self, name: str) -> bool:
        proc = self.procs.procs.get(name)
        if proc is None:
            raise InvalidInput(f"no node named {name!r}")
        return proc.alive and not proc.stopped

    def live_edges(self) -> list[str]:
        return self.procs.live_edges()

    def address_of(self, name: str) -> str:
        return self.procs.address_of(name)

    def tls_config(self, name: str) -> TlsConfig | None:
        return None

    def isolate(self, name: str) -> None:
        self.procs.isolate(name)

    def heal(self) -> None:
        self.procs.heal()

    def faults_changed(self) -> None:
        self.procs.write_faults(self.spec.faults)

    async def crash(self, name: str) -> None:
        await self.procs.crash(name)

    async def restart(self, name: str) -> None:
        await self.procs.restart(name)

    async def attach(self, name: str) -> Transport:
        raise InvalidInput("attach() needs a sim or tcp testnet that is running")

    def has_reference(self) -> bool:
        return True  # converged means: every live edge holds the highest acked seq

    def batch_source(self) -> Callable[[], dict[str, BatchRead]] | None:
        return self.procs.batch_readers

    def readers(self) -> dict[str, Reader]:
        return self.procs.readers()

    def node_info(self, name: str) -> tuple[int, int]:
        return self.procs.node_info(name)

    def snapshot_progress(self, name: str) -> dict[str, Any] | None:
        return self.procs.snapshot_progress(name)

    def digests(self) -> dict[str, int]:
        return self.procs.digests()

    def watermarks(self) -> dict[str, int]:
        return self.procs.watermarks()

    def agreement(self) -> tuple[float, int]:
        return self.procs.agreement()

    def observe(self) -> Observation:
        return self.procs.observe()

    def stats(self) -> TransportStats:
        return self.procs.stats()
