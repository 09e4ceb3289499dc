"""`SimBackend`: the testnet's `network="sim"` mode.

Every node gets a `SimTransport` of one `SimNetwork` whose `LinkFaults` is seeded from the
testnet's seed; run it under trio with `sim_clock()` (an autojumping MockClock) for virtual
time.  The nodes' wall clock is virtual too (`SIM_EPOCH_MS` + virtual time), so `written_at`
and expiry follow it.  The origin's log is a simulated disk, written inline without fsync
(worker threads would race the virtual clock), and trio's scheduler is seeded: the same seed
replays the same run (see `simenv`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from edgekv.gossip.transport import Transport
from edgekv.testnet.backend import NetSpec, TestnetClient
from edgekv.testnet.clients import SimClient
from edgekv.testnet.inproc import CLIENT, InProcessBackend, Slot
from edgekv.testnet.plug import Plug
from edgekv.testnet.simenv import InlineThreads, QuietGC, restore_scheduler, seed_scheduler
from edgekv.testnet.simnet import SimNetwork

__all__ = ["SIM_EPOCH_MS", "SIM_RESOLUTION", "SimBackend"]

SIM_EPOCH_MS = 1_700_000_000_000  # virtual wall clock = this + virtual time
SIM_RESOLUTION = 0.001  # sim deliveries land on whole virtual ms (see SimNetwork.resolution)


def _virtual_wall_ms() -> int:
    return SIM_EPOCH_MS + int(anyio.current_time() * 1000)


class SimBackend(InProcessBackend):
    """In-process nodes on one simulated network, in virtual time."""

    origin_synchronous = "NORMAL"  # a simulated disk: log writes inline, no fsync thread

    def __init__(self, spec: NetSpec) -> None:
        super().__init__(spec)
        self.network: SimNetwork | None = None
        self._seeded = False

    @property
    def net(self) -> SimNetwork:
        assert self.network is not None, "the sim network starts with the testnet"
        return self.network

    async def _prepare(self, root: Path) -> None:
        stack = self.stack
        seed_scheduler(self.spec.seed)
        self._seeded = True
        InlineThreads.install()
        stack.callback(InlineThreads.remove)
        QuietGC.install()
        stack.callback(QuietGC.remove)
        self.network = SimNetwork(self.spec.faults, resolution=SIM_RESOLUTION)
        self.task_group.start_soon(self.network.run)
        for slot in self._slots.values():
            slot.address = f"{slot.name}:1"  # nodes check host:port syntax; no port is bound

    def _closed(self) -> None:
        if self._seeded:
            self._seeded = False
            restore_scheduler()

    async def _plug(self, slot: Slot) -> Plug:
        return Plug(self.net.transport(slot.address), CLIENT)

    def _on_crash(self, slot: Slot) -> None:
        self.net.crash(slot.address)

    async def _replug(self, slot: Slot) -> Plug:
        self.net.restore(slot.address)
        return await self._plug(slot)

    def wall_ms(self) -> Callable[[], int] | None:
        return _virtual_wall_ms

    async def _make_client(self) -> TestnetClient:
        client = SimClient(self.net.transport(CLIENT), self._slots["origin"].address)
        self.task_group.start_soon(client.receive_loop)
        return await self.stack.enter_async_context(client)

    async def attach(self, name: str) -> Transport:
        transport = self.net.transport(f"{name}:1")
        self.stack.push_async_callback(transport.aclose)
        return transport
