"""`Backend`: what one testnet mode does for a `Testnet`, behind one small interface.

`Testnet` (harness.py) keeps what every mode shares: the fault policy (`LinkFaults`), the event
log, the convergence loop and the public API.  A backend owns the nodes themselves:

- `backend_sim.SimBackend`: in-process nodes on one `SimNetwork`, virtual time, seeded scheduler;
- `backend_tcp.TcpBackend`: in-process nodes over real sockets on 127.0.0.1 (optionally TLS);
- `backend_procs.ProcessBackend`: one OS process per node (`procs.ProcessCluster`).

The two in-process backends share their node bookkeeping (`inproc.InProcessBackend`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.gossip.config import GossipConfig
from edgekv.gossip.transport import Transport, TransportStats
from edgekv.node.edge import EdgeNode
from edgekv.node.faults import LinkFaults
from edgekv.node.tlsconfig import TlsConfig
from edgekv.origin.client import OriginClient
from edgekv.origin.server import Origin
from edgekv.testnet.checker import BatchRead
from edgekv.testnet.clients import HighSeq, SimClient

__all__ = ["Backend", "NetSpec", "Node", "Observation", "Reader", "TestnetClient"]

Node = Origin | EdgeNode
TestnetClient = SimClient | OriginClient | HighSeq
Reader = Callable[[str, str], bytes | None]  # (store, key) -> served bytes
Observation = tuple[float, int, dict[str, int], TransportStats]  # see Testnet.observe


@dataclass(frozen=True)
class NetSpec:
    """What every backend is told about the testnet it runs."""

    edge_names: tuple[str, ...]
    seed: int
    cluster_id: str
    seed_peers: int
    faults: LinkFaults
    signing_key: Ed25519PrivateKey  # the origin's; every edge verifies its signatures
    config: GossipConfig | None = None
    persistent: bool = False  # edges keep a data_dir (a restarted edge comes back with state)


class Backend(Protocol):
    """One testnet mode.  Names are "origin" and the spec's edge names."""

    tls_dir: Path | None  # with TLS: ca.pem, NAME.pem, NAME-key.pem per node

    async def start(self, stack: AsyncExitStack, root: Path) -> TestnetClient:
        """Start every node (data under `root`); what must be undone goes on `stack`."""

    def cancel(self) -> None:
        """Cancel the nodes' tasks (before `stack` is closed)."""

    def node(self, name: str) -> Node | None:
        """The in-process node `name`, None while it is down."""

    def live(self, name: str) -> bool: ...

    def live_edges(self) -> list[str]: ...

    def address_of(self, name: str) -> str: ...

    def tls_config(self, name: str) -> TlsConfig | None: ...

    # faults beyond the shared policy
    def isolate(self, name: str) -> None: ...

    def heal(self) -> None: ...

    def faults_changed(self) -> None:
        """The shared `LinkFaults` changed (processes read it from a file)."""

    async def crash(self, name: str) -> None: ...

    async def restart(self, name: str) -> None: ...

    async def attach(self, name: str) -> Transport: ...

    # observation
    def has_reference(self) -> bool:
        """Whether agreement can be judged now (in process: while the origin is up)."""

    def batch_source(self) -> Callable[[], dict[str, BatchRead]] | None:
        """See `Testnet.batch_readers`."""

    def readers(self) -> dict[str, Reader]: ...

    def node_info(self, name: str) -> tuple[int, int]: ...

    def snapshot_progress(self, name: str) -> dict[str, Any] | None: ...

    def digests(self) -> dict[str, int]: ...

    def watermarks(self) -> dict[str, int]: ...

    def agreement(self) -> tuple[float, int]: ...

    def observe(self) -> Observation: ...

    def stats(self) -> TransportStats: ...
