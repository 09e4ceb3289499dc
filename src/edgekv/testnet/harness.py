"""`Testnet`: an origin and N edges on one simulated or real network, with faults at hand.

    async with Testnet(edges=25, network="sim", latency=0.1, seed=1) as net:
        await net.client.create_store("s"); await net.client.put("s", "k", b"v")
        net.partition(["origin", "edge-0"], ["edge-1"]); net.heal()
        await net.crash("edge-3"); await net.restart("edge-3")
        assert await net.converged(timeout=5)

Modes.  Each mode is a backend behind one interface (`backend.Backend`); `Testnet` keeps the
fault policy, the event log and the convergence loop that all modes share.
`network="sim"` (`backend_sim`): one `SimNetwork` seeded from `seed`, virtual time under trio's
`sim_clock()`, a seeded scheduler: the same seed replays the same run.
`network="tcp"` (`backend_tcp`): real sockets on 127.0.0.1, all nodes sharing one `LinkFaults`;
`tls=True` adds a dev CA and mutual TLS (`tls_config(name)` gives a node's config).
`processes=True` (`backend_procs`): one OS process per node, see `edgekv.testnet.procs`.

Crash model (in process, `inproc`).  Each node's transport is wrapped in a `Plug`; a crash pulls
the plug first (the node can neither send nor receive, not even a goodbye), then cancels the
node and closes the real transport.  A restart builds a new node on the same address (and the
same data_dir, if any).

Around it: `simenv` (seeded scheduler, inline threads, virtual clock, quiet GC for sim mode),
`plug` (the crash switch around each transport), `clients` (`SimClient`, `HighSeq`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import AsyncResource
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.errors import InvalidInput
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.transport import Transport, TransportStats
from edgekv.node.edge import EdgeNode
from edgekv.node.faults import LinkFaults
from edgekv.node.tlsconfig import TlsConfig
from edgekv.origin.server import Origin
from edgekv.testnet.backend import Backend, NetSpec, Node, Observation, Reader, TestnetClient
from edgekv.testnet.backend_procs import ProcessBackend
from edgekv.testnet.backend_sim import SimBackend
from edgekv.testnet.backend_tcp import TcpBackend
from edgekv.testnet.checker import BatchRead
from edgekv.testnet.clients import SimClient
from edgekv.testnet.procs import ProcessCluster
from edgekv.testnet.simenv import seed_scheduler, sim_clock
from edgekv.testnet.simnet import SimNetwork

__all__ = ["SimClient", "Testnet", "seed_scheduler", "sim_clock"]

logger = logging.getLogger("edgekv.testnet")


class Testnet(AsyncResource):
    """An origin and `edges` edges on one network.  See the module docstring."""

    def __init__(
        self,
        edges: int = 25,
        network: str = "sim",
        processes: bool = False,
        latency: float = 0.1,
        jitter: float = 0.0,
        loss: float = 0.0,
        seed: int = 1,
        data_dir: str | Path | None = None,
        config: GossipConfig | None = None,
        *,
        seed_peers: int = 3,
        cluster_id: str = "edgekv-testnet",
        tls: bool = False,
    ) -> None:
        if network not in ("sim", "tcp"):
            raise InvalidInput(f"network must be 'sim' or 'tcp', got {network!r}")
        if processes and network == "sim":
            network = "tcp"
        if not 1 <= edges <= 100_000:
            raise InvalidInput("edges must be between 1 and 100000")
        self.network = network
        self.processes = processes
        self.n_edges = edges
        self._edge_names = [f"edge-{i}" for i in range(edges)]
        self.seed = seed
        self.config = config
        self.cluster_id = cluster_id
        self.seed_peers = seed_peers
        if tls and (network != "tcp" or processes):
            raise InvalidInput("tls=True needs network='tcp' (in-process nodes over real sockets)")
        self.tls = tls
        self.faults = LinkFaults(seed, latency=latency, jitter=jitter, loss=loss)
        # a throwaway origin key: every edge verifies the origin's signatures (crdt/proofs.py)
        self.signing_key = Ed25519PrivateKey.generate()
        self._data_root = Path(data_dir) if data_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        spec = NetSpec(
            edge_names=tuple(self._edge_names),
            seed=seed,
            cluster_id=cluster_id,
            seed_peers=seed_peers,
            faults=self.faults,
            signing_key=self.signing_key,
            config=config,
            persistent=self._data_root is not None,
        )
        self._backend: Backend
        self._sim: SimNetwork | None = None  # sim mode: the network (tests reach into it)
        self._procs: ProcessCluster | None = None  # processes mode: the cluster
        if processes:
            self._backend = ProcessBackend(spec)
        elif network == "sim":
            self._backend = SimBackend(spec)
        else:
            self._backend = TcpBackend(spec, tls=tls)
        self._stack = AsyncExitStack()
        self._client: TestnetClient | None = None
        self.events: list[tuple[float, str, str]] = []  # (time, action, detail) for reports
        self.event_nodes: list[list[str]] = []  # per event: the nodes it cut off or stopped
        self.t0 = 0.0

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Testnet:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def aclose(self) -> None:
        # No shielding scope here: the task group in the stack was entered outside of it.
        try:
            self._backend.cancel()
            await self._stack.aclose()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def _start(self) -> None:
        self.t0 = anyio.current_time()
        self._client = await self._backend.start(self._stack, self._data_dir_root())
        backend = self._backend
        self._sim = backend.network if isinstance(backend, SimBackend) else None
        self._procs = backend.cluster if isinstance(backend, ProcessBackend) else None

    def _data_dir_root(self) -> Path:
        if self._data_root is not None:
            self._data_root.mkdir(parents=True, exist_ok=True)
            return self._data_root
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgekv-testnet-")
        return Path(self._tmp.name)

    @property
    def client(self) -> TestnetClient:
        """What writes through the origin: an `OriginClient` (tcp, processes, wrapped in
        `HighSeq` there) or a `SimClient` (sim)."""
        if self._client is None:
            raise InvalidInput("the testnet is not running")
        return self._client

    @property
    def tls_dir(self) -> Path | None:
        """With `tls=True`: ca.pem, NAME.pem, NAME-key.pem per node (and "client")."""
        return self._backend.tls_dir

    def tls_config(self, name: str) -> TlsConfig | None:
        """The `TlsConfig` of node `name` (or of "client"); None without `tls=True`."""
        return self._backend.tls_config(name)

    # --- nodes ------------------------------------------------------------------------------

    @property
    def edge_names(self) -> list[str]:
        return list(self._edge_names)

    @property
    def origin(self) -> Origin | None:
        """The Origin (None while crashed, and with `processes=True`)."""
        node = self._backend.node("origin")
        return node if isinstance(node, Origin) else None

    @property
    def edges(self) -> list[EdgeNode]:
        """The live EdgeNodes, in name order (none with `processes=True`)."""
        nodes = (self._backend.node(n) for n in self._backend.live_edges())
        return [node for node in nodes if isinstance(node, EdgeNode)]

    def edge(self, name: str) -> Node:
        node = self._backend.node(name)
        if node is None:
            where = "runs in its own process" if self.processes else "is down"
            raise InvalidInput(f"{name} {where}")
        return node

    def live(self, name: str) -> bool:
        return self._backend.live(name)

    def live_edges(self) -> list[str]:
        return self._backend.live_edges()

    def address_of(self, name: str) -> str:
        return self._backend.address_of(name)

    @property
    def persistent_edges(self) -> bool:
        """Whether a restarted edge comes back with its state (it has a data_dir)."""
        return self._data_root is not None

    def _log(self, action: str, detail: str = "", nodes: Sequence[str] = ()) -> None:
        self.events.append((anyio.current_time() - self.t0, action, detail))
        self.event_nodes.append(list(nodes))
        logger.info("testnet: %s %s", action, detail)

    # --- faults -----------------------------------------------------------------------------

    def _addresses(self, names: Iterable[str]) -> list[str]:
        return [self.address_of(n) for n in names]

    def partition(self, group_a: Sequence[str], group_b: Sequence[str] | None = None) -> None:
        """No message crosses between the groups (default b: every node not in a)."""
        if group_b is None:
            everyone = ["origin", *self.edge_names]
            group_b = [n for n in everyone if n not in set(group_a)]
        self.faults.partition(self._addresses(group_a), self._addresses(group_b))
        self._backend.faults_changed()
        cut = group_b if "origin" in group_a else group_a if "origin" in group_b else []
        cut = cut or [*group_a, *group_b]  # the side without the origin (both if neither has it)
        self._log("partition", f"{len(group_a)} | {len(group_b)} nodes", cut)

    def isolate(self, name: str) -> None:
        self._backend.isolate(name)
        self._log("isolate", name, [name])

    def block(self, src: str, dst: str) -> None:
        """Asymmetric: src -> dst is lost, dst -> src flows."""
        self.faults.block(self.address_of(src), self.address_of(dst))
        self._backend.faults_changed()
        self._log("block", f"{src} -> {dst}", [src, dst])

    def heal(self) -> None:
        """Remove every partition, isolation and block (latency and loss stay)."""
        self._backend.heal()
        self.faults.heal()
        self._backend.faults_changed()
        self._log("heal")

    def set_latency(self, latency: float, jitter: float | None = None) -> None:
        """Default one-way latency (and jitter) of every link, in seconds."""
        if jitter is None:
            self.faults.set_default(latency=latency)
        else:
            self.faults.set_default(latency=latency, jitter=jitter)
        self._backend.faults_changed()
        self._log("set_latency", f"{latency * 1000:g} ms")

    def set_loss(self, p: float) -> None:
        if not 0 <= p <= 1:
            raise InvalidInput("loss must be a probability in [0, 1]")
        self.faults.set_default(loss=p)
        self._backend.faults_changed()
        self._log("set_loss", f"{p:g}")

    async def crash(self, name: str) -> None:
        """Stop `name` abruptly: it sends nothing more, not even a goodbye."""
        await self._backend.crash(name)
        self._log("crash", name, [name])

    async def restart(self, name: str) -> None:
        """Start `name` again on the same address (and data_dir, if it has one)."""
        await self._backend.restart(name)
        self._log("restart", name, [name])

    # --- observation ------------------------------------------------------------------------

    @property
    def batch_readers(self) -> Callable[[], dict[str, BatchRead]] | None:
        """For `probe_loop(batch_readers=...)`: across processes, reads that await one HTTP
        request per edge and store; None in one process (the plain readers are local calls)."""
        return self._backend.batch_source()

    def readers(self) -> dict[str, Reader]:
        """edge -> (store, key) -> served bytes, through the public read API, live edges only."""
        return self._backend.readers()

    def node_info(self, name: str) -> tuple[int, int]:
        """(peers known, messages sent so far) of a live node, for the live view."""
        return self._backend.node_info(name)

    def snapshot_progress(self, name: str) -> dict[str, Any] | None:
        """A live edge's snapshot progress (keys, total, rate, time left) while it syncs by
        snapshot (gossip/snapshot.py), else None; for the live view."""
        return self._backend.snapshot_progress(name)

    def digests(self) -> dict[str, int]:
        """Live node -> replica digest (Merkle root over every store)."""
        return self._backend.digests()

    def watermarks(self) -> dict[str, int]:
        return self._backend.watermarks()

    def agreement(self) -> tuple[float, int]:
        """(fraction of live edges whose digest equals the origin's, distinct digests)."""
        return self._backend.agreement()

    def observe(self) -> Observation:
        """(agreement, distinct digests, watermarks, stats) in one go, for report samplers
        (across processes: one status round instead of three)."""
        return self._backend.observe()

    async def convergence_time(self, timeout: float = 5.0, poll: float = 0.02) -> float | None:  # noqa: ASYNC109 (contract)
        """Seconds until every live edge's digest equals the origin's; None after `timeout`."""
        start = anyio.current_time()
        with anyio.move_on_after(timeout):
            while True:
                if self._backend.has_reference():
                    frac, _ = self.agreement()
                    if frac == 1.0:
                        return anyio.current_time() - start
                await anyio.sleep(poll)
        return None

    async def converged(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 (contract)
        """Whether all live edges' digests equal the origin's within `timeout` seconds."""
        return await self.convergence_time(timeout) is not None

    def stats(self) -> TransportStats:
        """Node-to-node traffic so far (every node, restarted ones included), by message type.

        Messages sent count once each (lost ones included); traffic to the test client is
        left out (across processes: totals from each live edge's status).
        """
        return self._backend.stats()

    async def attach(self, name: str = "intruder") -> Transport:
        """A raw endpoint named `name` on this network, not a node: for tests and experiments
        that speak the protocol themselves (e.g. a hostile peer).  In tcp mode it holds the
        cluster's credentials (cluster id and key, if any).  Closed with the testnet."""
        return await self._backend.attach(name)
