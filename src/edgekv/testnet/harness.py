"""`Testnet`: an origin and N edges on one simulated or real network, with faults at hand.

    async with Testnet(edges=25, network="sim", latency=0.1, seed=1) as net:
        await net.client.create_store("s"); await net.client.put("s", "k", b"v")
        net.partition(["origin", "edge-0"], ["edge-1"]); net.heal()
        await net.crash("edge-3"); await net.restart("edge-3")
        assert await net.converged(timeout=5)

Modes.  `network="sim"`: every node gets a `SimTransport` of one `SimNetwork` whose `LinkFaults`
is seeded from `seed`; run it under trio with `sim_clock()` (an autojumping MockClock) for
virtual time (the node's wall clock is virtual too, so `written_at` and expiry follow it).  The
origin's log is then a simulated disk, written inline without fsync (worker threads would race
the virtual clock), and trio's scheduler is seeded: the same seed replays the same run.
`network="tcp"`: real sockets on 127.0.0.1, one `TcpTransport` per node, all sharing one
`LinkFaults` so the same faults apply.  `processes=True`: see `edgekv.testnet.procs`.

Crash model.  Each node's transport is wrapped in a `Plug`; a crash pulls the plug first (the
node can neither send nor receive, not even a goodbye), then cancels the node and closes the real
transport.  A restart builds a new node on the same address (and the same data_dir, if any).

`tls=True` (tcp only): a dev cluster CA and a certificate per node in `tls_dir`, TLS with mutual
authentication on every connection (`node/tlsconfig.py`); `tls_config(name)` gives a node's config.

Around it: `simenv` (seeded scheduler, inline threads, virtual clock, quiet GC for sim mode),
`plug` (the crash switch around each transport), `clients` (`SimClient`, `HighSeq`).
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.errors import InvalidInput, StoreNotFound
from edgekv.gossip.transport import TransportStats
from edgekv.node.faults import LinkFaults
from edgekv.testnet.clients import HighSeq, SimClient
from edgekv.testnet.plug import Plug
from edgekv.testnet.simenv import (
    InlineThreads,
    QuietGC,
    restore_scheduler,
    seed_scheduler,
    sim_clock,
)

__all__ = ["SimClient", "Testnet", "seed_scheduler", "sim_clock"]

logger = logging.getLogger("edgekv.testnet")

CLIENT = "client"
SIM_EPOCH_MS = 1_700_000_000_000  # virtual wall clock = this + virtual time
SIM_RESOLUTION = 0.001  # sim deliveries land on whole virtual ms (see SimNetwork.resolution)


@dataclass(eq=False)
class _Slot:
    """One node of the testnet and its lifecycle."""

    name: str
    role: str
    address: str = ""
    node: Any = None
    plug: Plug | None = None
    live: bool = False
    scope: anyio.CancelScope | None = None
    stopped: anyio.Event = field(default_factory=anyio.Event)
    data_dir: str | None = None
    readers: dict[str, Any] = field(default_factory=dict)  # store name -> KvStore
    reader: Callable[[str, str], bytes | None] | None = None
    retired: list[Plug] = field(default_factory=list)
    restarts: int = 0


class Testnet:
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
        config: Any = None,
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
        self.tls_dir: Path | None = None  # with tls: ca.pem, NAME.pem, NAME-key.pem per node
        self.faults = LinkFaults(seed, latency=latency, jitter=jitter, loss=loss)
        # a throwaway origin key: every edge verifies the origin's signatures (crdt/proofs.py)
        self.signing_key = Ed25519PrivateKey.generate()
        self._data_root = Path(data_dir) if data_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._rng = random.Random(seed)
        self._slots: dict[str, _Slot] = {}
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self._sim: Any = None
        self._procs: Any = None
        self.client: Any = None
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        # No shielding scope here: the task group in the stack was entered outside of it.
        try:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await self._stack.aclose()
        finally:
            if self._sim is not None:
                restore_scheduler()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def _start(self) -> None:
        self.t0 = anyio.current_time()
        if self.processes:
            from edgekv.testnet.procs import ProcessCluster

            root = self._data_dir_root()
            cluster = ProcessCluster(self.n_edges, root, seed=self.seed)
            cluster.write_faults(self.faults)  # the initial latency and loss
            self._procs = await self._stack.enter_async_context(cluster)
            import edgekv

            client = await self._stack.enter_async_context(
                edgekv.OriginClient(self._procs.origin_address, cluster_id="edgekv")
            )
            self.client = HighSeq(client, self._procs)
            return
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        names = ["origin", *self.edge_names]
        for name in names:
            self._slots[name] = _Slot(name, "origin" if name == "origin" else "edge")
        if self.network == "sim":
            seed_scheduler(self.seed)
            InlineThreads.install()
            self._stack.callback(InlineThreads.remove)
            QuietGC.install()
            self._stack.callback(QuietGC.remove)
            from edgekv.testnet.simnet import SimNetwork

            self._sim = SimNetwork(self.faults, resolution=SIM_RESOLUTION)
            self._tg.start_soon(self._sim.run)
            for slot in self._slots.values():
                slot.address = f"{slot.name}:1"  # nodes check host:port syntax; no port is bound
        else:
            if self.tls:
                self._make_certs()
            for slot in self._slots.values():
                plug = await self._tcp_transport(slot, "127.0.0.1:0")
                slot.address = plug.address
                slot.plug = plug
        root = self._data_dir_root()
        self._slots["origin"].data_dir = str(root / "origin")
        if self._data_root is not None:
            for name in self.edge_names:
                self._slots[name].data_dir = str(root / name)
        await self._tg.start(self._run_node, self._slots["origin"])
        for name in self.edge_names:
            await self._tg.start(self._run_node, self._slots[name])
        self.client = await self._stack.enter_async_context(self._make_client())

    def _data_dir_root(self) -> Path:
        if self._data_root is not None:
            self._data_root.mkdir(parents=True, exist_ok=True)
            return self._data_root
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgekv-testnet-")
        return Path(self._tmp.name)

    async def _tcp_transport(self, slot: _Slot, listen: str) -> Plug:
        from edgekv.node.tcp import TcpTransport

        assert self._tg is not None
        t = await TcpTransport.create(
            listen,
            task_group=self._tg,
            cluster_id=self.cluster_id,
            node_id=slot.name,
            role=slot.role,
            faults=self.faults,
            tls=self.tls_config(slot.name),
            **self._origin_tcp_options(slot),
        )
        # an edge confirms any claim of the origin's address; the origin lets nobody claim it
        origin = t.address if slot.role == "origin" else self._slots["origin"].address
        t.origins = frozenset({origin})
        return Plug(t, None)

    def _make_certs(self) -> None:
        """A cluster CA and a certificate per node, and one client certificate."""
        from edgekv.node.certs import write_dev_certs

        self.tls_dir = self._data_dir_root() / "tls"
        write_dev_certs(self.tls_dir, ["origin", *self.edge_names], clients=[CLIENT])

    def tls_config(self, name: str) -> Any:
        """The `TlsConfig` of node `name` (or of "client"); None without `tls=True`."""
        if self.tls_dir is None:
            return None
        from edgekv.node.tlsconfig import TlsConfig

        d = self.tls_dir
        return TlsConfig(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem")

    def _origin_tcp_options(self, slot: _Slot) -> dict[str, Any]:
        if slot.role != "origin":
            return {}

        async def on_client(peer: Any, stream: Any) -> None:
            from edgekv.origin.clientconn import serve_client

            node = slot.node
            if slot.live and node is not None:
                await serve_client(node, peer, stream)

        return {"on_client": on_client}

    def _wall_ms(self) -> Callable[[], int] | None:
        if self.network != "sim":
            return None
        return lambda: SIM_EPOCH_MS + int(anyio.current_time() * 1000)

    def _peers_of(self, slot: _Slot) -> list[str]:
        others = [n for n in self.edge_names if n != slot.name]
        k = min(self.seed_peers, len(others))
        chosen = self._rng.sample(others, k) if k else []
        return [self._slots[n].address for n in chosen]

    def _new_plug(self, slot: _Slot) -> Plug:
        assert self._sim is not None
        return Plug(self._sim.transport(slot.address), CLIENT)

    async def _run_node(
        self, slot: _Slot, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if slot.plug is None:
            slot.plug = self._new_plug(slot) if self._sim is not None else None
        assert slot.plug is not None
        plug = slot.plug
        slot.stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                slot.scope = scope
                node = self._make_node(slot, plug)
                async with node:
                    slot.node = node
                    slot.live = True
                    slot.readers = {}
                    slot.reader = None
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            slot.live = False
            with anyio.CancelScope(shield=True):
                try:
                    await plug.aclose()
                except Exception:
                    logger.debug("closing %s's transport failed", slot.name, exc_info=True)
            slot.stopped.set()

    def _make_node(self, slot: _Slot, plug: Plug) -> Any:
        import edgekv

        common: dict[str, Any] = {
            "cluster_id": self.cluster_id,
            "node_id": slot.name,
            "transport": plug,
        }
        wall = self._wall_ms()
        if wall is not None:
            common["wall_ms"] = wall
        if self.config is not None:
            common["config"] = self.config
        if slot.role == "origin":
            options: dict[str, Any] = {"wall_ms": wall} if wall is not None else {}
            if self._sim is not None:
                # A simulated disk: log writes inline (see InlineThreads), no fsync thread.
                options["synchronous"] = "NORMAL"
            return edgekv.Origin(
                slot.data_dir,
                listen=None,
                cluster_id=self.cluster_id,
                node_id=slot.name,
                transport=plug,
                gossip_config=self.config,
                rng=random.Random(f"{self.seed}/origin/{slot.restarts}"),
                signing_key=self.signing_key,
                **options,
            )
        return edgekv.EdgeNode(
            listen=slot.address,
            origin=self._slots["origin"].address,
            peers=self._peers_of(slot),
            data_dir=slot.data_dir,
            rng=random.Random(f"{self.seed}/{slot.name}/{slot.restarts}"),
            ready_timeout=0,  # the harness starts nodes one by one and waits for convergence itself
            origin_public_keys=[self.signing_key.public_key()],
            **common,
        )

    # --- nodes ------------------------------------------------------------------------------

    @property
    def edge_names(self) -> list[str]:
        return list(self._edge_names)

    @property
    def origin(self) -> Any:
        """The Origin (None while crashed)."""
        return self._slots["origin"].node if self._slots["origin"].live else None

    @property
    def edges(self) -> list[Any]:
        """The live EdgeNodes, in name order."""
        return [s.node for n, s in self._slots.items() if n != "origin" and s.live]

    def edge(self, name: str) -> Any:
        slot = self._slot(name)
        if not slot.live:
            raise InvalidInput(f"{name} is down")
        return slot.node

    def live(self, name: str) -> bool:
        return self._slot(name).live

    def live_edges(self) -> list[str]:
        if self._procs is not None:
            return list(self._procs.live_edges())
        return [n for n in self.edge_names if self._slots[n].live]

    def address_of(self, name: str) -> str:
        if self._procs is not None:
            return str(self._procs.address_of(name))
        return self._slot(name).address

    @property
    def persistent_edges(self) -> bool:
        """Whether a restarted edge comes back with its state (it has a data_dir)."""
        return self._data_root is not None

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise InvalidInput(
                f"no node named {name!r} (origin, edge-0 .. edge-{self.n_edges - 1})"
            )
        return slot

    def _log(self, action: str, detail: str = "", nodes: Sequence[str] = ()) -> None:
        self.events.append((anyio.current_time() - self.t0, action, detail))
        self.event_nodes.append(list(nodes))
        logger.info("testnet: %s %s", action, detail)

    # --- faults -----------------------------------------------------------------------------

    def _addresses(self, names: Iterable[str]) -> list[str]:
        return [self.address_of(n) for n in names]

    def _faults_changed(self) -> None:
        """Processes read the policy from a file (see procs.py); in-process nodes share it."""
        if self._procs is not None:
            self._procs.write_faults(self.faults)

    def partition(self, group_a: Sequence[str], group_b: Sequence[str] | None = None) -> None:
        """No message crosses between the groups (default b: every node not in a)."""
        if group_b is None:
            everyone = ["origin", *self.edge_names]
            group_b = [n for n in everyone if n not in set(group_a)]
        self.faults.partition(self._addresses(group_a), self._addresses(group_b))
        self._faults_changed()
        cut = group_b if "origin" in group_a else group_a if "origin" in group_b else []
        cut = cut or [*group_a, *group_b]  # the side without the origin (both if neither has it)
        self._log("partition", f"{len(group_a)} | {len(group_b)} nodes", cut)

    def isolate(self, name: str) -> None:
        if self._procs is not None:
            self._procs.isolate(name)
        else:
            self.faults.isolate(self._slot(name).address)
        self._log("isolate", name, [name])

    def block(self, src: str, dst: str) -> None:
        """Asymmetric: src -> dst is lost, dst -> src flows."""
        self.faults.block(self.address_of(src), self.address_of(dst))
        self._faults_changed()
        self._log("block", f"{src} -> {dst}", [src, dst])

    def heal(self) -> None:
        """Remove every partition, isolation and block (latency and loss stay)."""
        if self._procs is not None:
            self._procs.heal()
        self.faults.heal()
        self._faults_changed()
        self._log("heal")

    def set_latency(self, latency: float, jitter: float | None = None) -> None:
        """Default one-way latency (and jitter) of every link, in seconds."""
        changes: dict[str, object] = {"latency": latency}
        if jitter is not None:
            changes["jitter"] = jitter
        self.faults.set_default(**changes)
        self._faults_changed()
        self._log("set_latency", f"{latency * 1000:g} ms")

    def set_loss(self, p: float) -> None:
        if not 0 <= p <= 1:
            raise InvalidInput("loss must be a probability in [0, 1]")
        self.faults.set_default(loss=p)
        self._faults_changed()
        self._log("set_loss", f"{p:g}")

    async def crash(self, name: str) -> None:
        """Stop `name` abruptly: it sends nothing more, not even a goodbye."""
        if self._procs is not None:
            await self._procs.crash(name)
            self._log("crash", name, [name])
            return
        slot = self._slot(name)
        if not slot.live:
            raise InvalidInput(f"{name} is already down")
        assert slot.plug is not None and slot.scope is not None
        slot.plug.unplug()
        if self._sim is not None:
            self._sim.crash(slot.address)
        slot.scope.cancel()
        await slot.stopped.wait()
        slot.retired.append(slot.plug)
        slot.plug = None
        self._log("crash", name, [name])

    async def restart(self, name: str) -> None:
        """Start `name` again on the same address (and data_dir, if it has one)."""
        if self._procs is not None:
            await self._procs.restart(name)
            self._log("restart", name, [name])
            return
        slot = self._slot(name)
        if slot.live:
            raise InvalidInput(f"{name} is running")
        if self._sim is not None:
            self._sim.restore(slot.address)
            slot.plug = self._new_plug(slot)
        else:
            slot.plug = await self._tcp_transport(slot, slot.address)
        slot.restarts += 1
        assert self._tg is not None
        await self._tg.start(self._run_node, slot)
        self._log("restart", name, [name])

    # --- observation ------------------------------------------------------------------------

    @property
    def batch_readers(self) -> Callable[[], dict[str, Any]] | None:
        """For `probe_loop(batch_readers=...)`: across processes, reads that await one HTTP
        request per edge and store; None in one process (the plain readers are local calls)."""
        if self._procs is None:
            return None
        return self._procs.batch_readers  # type: ignore[no-any-return]

    def readers(self) -> dict[str, Callable[[str, str], bytes | None]]:
        """edge -> (store, key) -> served bytes, through the public read API, live edges only."""
        if self._procs is not None:
            return dict(self._procs.readers())
        out = {}
        for name in self._edge_names:
            slot = self._slots[name]
            if slot.live:
                if slot.reader is None:
                    slot.reader = self._reader(slot)
                out[name] = slot.reader
        return out

    def _reader(self, slot: _Slot) -> Callable[[str, str], bytes | None]:
        cache = slot.readers
        node = slot.node

        def read(store: str, key: str) -> bytes | None:
            kv = cache.get(store)
            if kv is None:
                try:
                    kv = cache[store] = node.open(store)
                except StoreNotFound:
                    return None
            try:
                value: bytes | None = kv.get(key)
            except StoreNotFound:
                cache.pop(store, None)
                return None
            return value

        return read

    def node_info(self, name: str) -> tuple[int, int]:
        """(peers known, messages sent so far) of a live node, for the live view."""
        if self._procs is not None:
            return self._procs.node_info(name)  # type: ignore[no-any-return]
        slot = self._slot(name)
        if not slot.live:
            return 0, 0
        peers = len(slot.node.runtime.gossip.peers())
        sent = sum(slot.plug.stats.sent_messages.values()) if slot.plug is not None else 0
        return peers, int(sent)

    def snapshot_progress(self, name: str) -> dict[str, Any] | None:
        """A live edge's snapshot progress (keys, total, rate, time left) while it syncs by
        snapshot (gossip/snapshot.py), else None; for the live view."""
        if self._procs is not None:
            return self._procs.snapshot_progress(name)  # type: ignore[no-any-return]
        slot = self._slot(name)
        if not slot.live or name == "origin":
            return None
        gossip = slot.node.runtime.gossip
        boot = getattr(gossip, "bootstrap", None)
        if boot is None or not boot.active:
            return None
        return boot.status(slot.node.runtime.now())  # type: ignore[no-any-return]

    def digests(self) -> dict[str, int]:
        """Live node -> replica digest (Merkle root over every store)."""
        if self._procs is not None:
            return dict(self._procs.digests())
        return {n: s.node.replica.root for n, s in self._slots.items() if s.live}

    def watermarks(self) -> dict[str, int]:
        if self._procs is not None:
            return dict(self._procs.watermarks())
        return {n: s.node.replica.watermark for n, s in self._slots.items() if s.live}

    def agreement(self) -> tuple[float, int]:
        """(fraction of live edges whose digest equals the origin's, distinct digests)."""
        if self._procs is not None:
            return self._procs.agreement()  # type: ignore[no-any-return]
        d = self.digests()
        origin = d.pop("origin", None)
        if not d:
            return 1.0, 1 if origin is not None else 0
        same = sum(1 for v in d.values() if v == origin)
        return same / len(d), len(set(d.values()) | ({origin} if origin is not None else set()))

    def observe(self) -> tuple[float, int, dict[str, int], TransportStats]:
        """(agreement, distinct digests, watermarks, stats) in one go, for report samplers
        (across processes: one status round instead of three)."""
        if self._procs is not None:
            return self._procs.observe()  # type: ignore[no-any-return]
        frac, distinct = self.agreement()
        return frac, distinct, self.watermarks(), self.stats()

    async def convergence_time(self, timeout: float = 5.0, poll: float = 0.02) -> float | None:  # noqa: ASYNC109 (contract)
        """Seconds until every live edge's digest equals the origin's; None after `timeout`."""
        start = anyio.current_time()
        with anyio.move_on_after(timeout):
            while True:
                if self._procs is not None or self.origin is not None:
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
        left out.
        """
        if self._procs is not None:
            return self._procs.stats()  # type: ignore[no-any-return]
        out = TransportStats()
        for slot in self._slots.values():
            plugs = [*slot.retired, *([slot.plug] if slot.plug is not None else [])]
            for plug in plugs:
                out.merge(plug.stats)
                for kind, n in plug.client_stats.sent_messages.items():
                    out.sent_messages[kind] -= n
                    out.sent_bytes[kind] -= plug.client_stats.sent_bytes[kind]
        out.sent_messages = +out.sent_messages
        out.sent_bytes = +out.sent_bytes
        return out

    async def attach(self, name: str = "intruder") -> Any:
        """A raw endpoint named `name` on this network, not a node: for tests and experiments
        that speak the protocol themselves (e.g. a hostile peer).  In tcp mode it holds the
        cluster's credentials (cluster id and key, if any).  Closed with the testnet."""
        if self._tg is None:
            raise InvalidInput("attach() needs a sim or tcp testnet that is running")
        if self._sim is not None:
            transport: Any = self._sim.transport(f"{name}:1")
        else:
            from edgekv.node.tcp import TcpTransport

            transport = await TcpTransport.create(
                "127.0.0.1:0", task_group=self._tg, cluster_id=self.cluster_id, node_id=name
            )
        self._stack.push_async_callback(transport.aclose)
        return transport

    # --- the client -------------------------------------------------------------------------

    def _make_client(self) -> Any:
        if self._sim is not None:
            client = SimClient(self._sim.transport(CLIENT), self._slots["origin"].address)
            assert self._tg is not None
            self._tg.start_soon(client.receive_loop)
            return client
        import edgekv

        return edgekv.OriginClient(
            self._slots["origin"].address,
            cluster_id=self.cluster_id,
            tls=self.tls_config(CLIENT),
        )
