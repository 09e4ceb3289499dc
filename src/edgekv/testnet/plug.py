"""`Plug`: the transport wrapper a `Testnet` puts around each node's endpoint.

Pulling the plug is the first step of a crash: the node can neither send nor receive, not even
a goodbye.  The plug also counts traffic to the test client apart, so `Testnet.stats()` reports
node-to-node traffic only.
"""

from __future__ import annotations

import anyio

from edgekv.gossip.transport import Envelope, Transport, TransportStats
from edgekv.gossip.wire import Message, encode_frame, type_name

__all__ = ["Plug"]


class Plug:
    """A transport wrapper the harness can unplug (crash), counting client-bound traffic apart."""

    def __init__(self, inner: Transport, client: str | None) -> None:
        self.inner = inner
        self.plugged = True
        self.client = client
        self.client_stats = TransportStats()  # traffic to the test client, not node-to-node
        self._stopped = anyio.Event()

    @property
    def stats(self) -> TransportStats:
        return self.inner.stats

    @stats.setter
    def stats(self, value: TransportStats) -> None:
        self.inner.stats = value

    @property
    def address(self) -> str:
        return self.inner.address

    async def send(self, peer: str, message: Message) -> None:
        if not self.plugged:
            await anyio.lowlevel.checkpoint()
            return
        if peer == self.client:
            self.client_stats.record_sent(type_name(message["t"]), len(encode_frame(message)))
        await self.inner.send(peer, message)

    async def receive(self) -> Envelope:
        # No cancel scope per call (hot path): a crash unplugs, then cancels the node itself.
        while self.plugged:
            env = await self.inner.receive()
            if self.plugged:
                return env
        await self._stopped.wait()  # unplugged: silence until closed
        raise anyio.ClosedResourceError

    def link_rtts(self) -> dict[str, float]:
        return self.inner.link_rtts()

    def unplug(self) -> None:
        self.plugged = False

    async def aclose(self) -> None:
        self._stopped.set()
        await self.inner.aclose()
