"""`InProcessBackend`: the node bookkeeping the sim and tcp testnet modes share.

Every node runs in this process, in the backend's task group, as an `Origin` or an `EdgeNode`
over a transport wrapped in a `Plug`.  A crash pulls the plug first (the node can neither send
nor receive, not even a goodbye), then cancels the node and closes the real transport; a
restart builds a new node on the same address (and the same data_dir, if any).  The subclasses
say how a node's transport is made (`_plug`, `_replug`), what clock it reads and what client
the testnet gets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from edgekv.clock import wall_clock_ms
from edgekv.errors import InvalidInput, StoreNotFound
from edgekv.gossip.snapshot import SnapshotClient
from edgekv.gossip.transport import TransportStats
from edgekv.node.edge import EdgeNode
from edgekv.node.tlsconfig import TlsConfig
from edgekv.node.watch import EdgeStore
from edgekv.origin.server import Origin
from edgekv.testnet.backend import NetSpec, Node, Observation, Reader, TestnetClient
from edgekv.testnet.checker import BatchRead
from edgekv.testnet.plug import Plug

__all__ = ["CLIENT", "InProcessBackend", "Slot"]

logger = logging.getLogger("edgekv.testnet")

CLIENT = "client"  # the test client's name (its traffic is counted apart, see Plug)


@dataclass(eq=False)
class Slot:
    """One node of the testnet and its lifecycle."""

    name: str
    role: str
    address: str = ""
    node: Node | None = None
    plug: Plug | None = None
    live: bool = False
    scope: anyio.CancelScope | None = None
    stopped: anyio.Event = field(default_factory=anyio.Event)
    data_dir: str | None = None
    readers: dict[str, EdgeStore] = field(default_factory=dict)  # store name -> its KvStore
    reader: Reader | None = None
    retired: list[Plug] = field(default_factory=list)
    restarts: int = 0


class InProcessBackend:
    """Nodes in this process; the sim and tcp backends fill in the transport and the clock."""

    #: the origin's SQLite synchronous mode (sim: a simulated disk, no fsync)
    origin_synchronous = "FULL"

    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec
        self.tls_dir: Path | None = None
        self._rng = random.Random(spec.seed)
        self._slots: dict[str, Slot] = {}
        for name in ("origin", *spec.edge_names):
            self._slots[name] = Slot(name, "origin" if name == "origin" else "edge")
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # --- what a mode provides ----------------------------------------------------------------

    async def _prepare(self, root: Path) -> None:
        """Before any node starts: set up the network and every slot's address."""
        raise NotImplementedError

    async def _plug(self, slot: Slot) -> Plug:
        """A new transport for `slot`, at its address."""
        raise NotImplementedError

    def _on_crash(self, slot: Slot) -> None:
        """After `slot`'s plug is pulled, before its node is cancelled."""

    async def _make_client(self) -> TestnetClient:
        raise NotImplementedError

    def wall_ms(self) -> Callable[[], int] | None:
        """The nodes' wall clock (None: the real one)."""
        return None

    def tls_config(self, name: str) -> TlsConfig | None:
        return None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, stack: AsyncExitStack, root: Path) -> TestnetClient:
        self._stack = stack
        stack.callback(self._closed)  # runs once the task group below has exited
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        await self._prepare(root)
        self._slots["origin"].data_dir = str(root / "origin")
        if self.spec.persistent:
            for name in self.spec.edge_names:
                self._slots[name].data_dir = str(root / name)
        for slot in self._slots.values():
            await self._tg.start(self._run_node, slot)
        return await self._make_client()

    def _closed(self) -> None:
        """Called after every node has stopped."""

    def cancel(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise InvalidInput("the testnet is not running")
        return self._tg

    @property
    def stack(self) -> AsyncExitStack:
        if self._stack is None:
            raise InvalidInput("the testnet is not running")
        return self._stack

    async def _run_node(
        self, slot: Slot, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if slot.plug is None:
            slot.plug = await self._plug(slot)
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

    def _peers_of(self, slot: Slot) -> list[str]:
        others = [n for n in self.spec.edge_names if n != slot.name]
        k = min(self.spec.seed_peers, len(others))
        chosen = self._rng.sample(others, k) if k else []
        return [self._slots[n].address for n in chosen]

    def _make_node(self, slot: Slot, plug: Plug) -> Node:
        spec = self.spec
        wall = self.wall_ms()
        if slot.role == "origin":
            return Origin(
                slot.data_dir,
                listen=None,
                cluster_id=spec.cluster_id,
                node_id=slot.name,
                transport=plug,
                gossip_config=spec.config,
                rng=random.Random(f"{spec.seed}/origin/{slot.restarts}"),
                signing_key=spec.signing_key,
                synchronous=self.origin_synchronous,
                wall_ms=wall if wall is not None else wall_clock_ms,
            )
        return EdgeNode(
            listen=slot.address,
            origin=self._slots["origin"].address,
            peers=self._peers_of(slot),
            data_dir=slot.data_dir,
            rng=random.Random(f"{spec.seed}/{slot.name}/{slot.restarts}"),
            ready_timeout=0,  # the harness starts nodes one by one and waits for convergence itself
            origin_public_keys=[spec.signing_key.public_key()],
            cluster_id=spec.cluster_id,
            node_id=slot.name,
            transport=plug,
            wall_ms=wall,
            config=spec.config,
        )

    # --- nodes -------------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise InvalidInput(
                f"no node named {name!r} (origin, edge-0 .. edge-{len(self.spec.edge_names) - 1})"
            )
        return slot

    def node(self, name: str) -> Node | None:
        slot = self.slot(name)
        return slot.node if slot.live else None

    def live(self, name: str) -> bool:
        return self.slot(name).live

    def live_edges(self) -> list[str]:
        return [n for n in self.spec.edge_names if self._slots[n].live]

    def address_of(self, name: str) -> str:
        return self.slot(name).address

    def isolate(self, name: str) -> None:
        self.spec.faults.isolate(self.slot(name).address)

    def heal(self) -> None:
        pass  # the shared policy is all there is

    def faults_changed(self) -> None:
        pass  # every node reads the shared policy

    async def crash(self, name: str) -> None:
        slot = self.slot(name)
        if not slot.live:
            raise InvalidInput(f"{name} is already down")
        assert slot.plug is not None and slot.scope is not None
        slot.plug.unplug()
        self._on_crash(slot)
        slot.scope.cancel()
        await slot.stopped.wait()
        slot.retired.append(slot.plug)
        slot.plug = None

    async def restart(self, name: str) -> None:
        slot = self.slot(name)
        if slot.live:
            raise InvalidInput(f"{name} is running")
        slot.plug = await self._replug(slot)
        slot.restarts += 1
        await self.task_group.start(self._run_node, slot)

    async def _replug(self, slot: Slot) -> Plug:
        """A new transport for a crashed node about to restart."""
        return await self._plug(slot)

    # --- observation -------------------------------------------------------------------------

    def has_reference(self) -> bool:
        return self._slots["origin"].live

    def batch_source(self) -> Callable[[], dict[str, BatchRead]] | None:
        return None  # the plain readers are local calls

    def readers(self) -> dict[str, Reader]:
        out = {}
        for name in self.spec.edge_names:
            slot = self._slots[name]
            if slot.live:
                if slot.reader is None:
                    slot.reader = self._reader(slot)
                out[name] = slot.reader
        return out

    def _reader(self, slot: Slot) -> Reader:
        cache = slot.readers
        node = slot.node
        assert isinstance(node, EdgeNode)

        def read(store: str, key: str) -> bytes | None:
            kv = cache.get(store)
            if kv is None:
                try:
                    kv = cache[store] = node.open(store)
                except StoreNotFound:
                    return None
            try:
                value = kv.get(key)
            except StoreNotFound:
                cache.pop(store, None)
                return None
            return value

        return read

    def node_info(self, name: str) -> tuple[int, int]:
        slot = self.slot(name)
        if not slot.live or slot.node is None or slot.node.runtime is None:
            return 0, 0
        peers = len(slot.node.runtime.gossip.peers())
        sent = sum(slot.plug.stats.sent_messages.values()) if slot.plug is not None else 0
        return peers, int(sent)

    def snapshot_progress(self, name: str) -> dict[str, Any] | None:
        slot = self.slot(name)
        if not slot.live or not isinstance(slot.node, EdgeNode):
            return None
        runtime = slot.node.runtime
        boot = getattr(runtime.gossip, "bootstrap", None)
        if not isinstance(boot, SnapshotClient) or not boot.active:
            return None
        return boot.status(runtime.now())

    def digests(self) -> dict[str, int]:
        return {n: node.replica.root for n, node in self._live_nodes().items()}

    def watermarks(self) -> dict[str, int]:
        return {n: node.replica.watermark for n, node in self._live_nodes().items()}

    def _live_nodes(self) -> dict[str, Node]:
        return {n: s.node for n, s in self._slots.items() if s.live and s.node is not None}

    def agreement(self) -> tuple[float, int]:
        d = self.digests()
        origin = d.pop("origin", None)
        if not d:
            return 1.0, 1 if origin is not None else 0
        same = sum(1 for v in d.values() if v == origin)
        return same / len(d), len(set(d.values()) | ({origin} if origin is not None else set()))

    def observe(self) -> Observation:
        frac, distinct = self.agreement()
        return frac, distinct, self.watermarks(), self.stats()

    def stats(self) -> TransportStats:
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
