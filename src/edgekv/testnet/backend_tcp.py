"""`TcpBackend`: the testnet's `network="tcp"` mode.

Real sockets on 127.0.0.1, one `TcpTransport` per node, all sharing the testnet's `LinkFaults`
so the same faults apply as in sim mode.  With `tls=True`: a dev cluster CA and a certificate
per node in `tls_dir`, TLS with mutual authentication on every connection (`node/tlsconfig.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from edgekv.gossip.transport import Transport
from edgekv.gossip.wire import PeerIdentity
from edgekv.node.certs import write_dev_certs
from edgekv.node.tcp import FramedStream, TcpTransport
from edgekv.node.tlsconfig import TlsConfig
from edgekv.origin.client import OriginClient
from edgekv.origin.clientconn import serve_client
from edgekv.origin.server import Origin
from edgekv.testnet.backend import NetSpec, TestnetClient
from edgekv.testnet.inproc import CLIENT, InProcessBackend, Slot
from edgekv.testnet.plug import Plug

__all__ = ["TcpBackend"]


class TcpBackend(InProcessBackend):
    """In-process nodes over real sockets on 127.0.0.1."""

    def __init__(self, spec: NetSpec, *, tls: bool = False) -> None:
        super().__init__(spec)
        self.tls = tls

    async def _prepare(self, root: Path) -> None:
        if self.tls:
            self.tls_dir = root / "tls"
            names = ["origin", *self.spec.edge_names]
            write_dev_certs(self.tls_dir, names, clients=[CLIENT])
        for slot in self._slots.values():
            slot.plug = await self._transport(slot, "127.0.0.1:0")
            slot.address = slot.plug.address

    async def _plug(self, slot: Slot) -> Plug:
        return await self._transport(slot, slot.address)

    async def _transport(self, slot: Slot, listen: str) -> Plug:
        t = await TcpTransport.create(
            listen,
            task_group=self.task_group,
            cluster_id=self.spec.cluster_id,
            node_id=slot.name,
            role=slot.role,
            faults=self.spec.faults,
            tls=self.tls_config(slot.name),
            on_client=self._on_client(slot) if slot.role == "origin" else None,
        )
        # an edge confirms any claim of the origin's address; the origin lets nobody claim it
        origin = t.address if slot.role == "origin" else self._slots["origin"].address
        t.origins = frozenset({origin})
        return Plug(t, None)

    @staticmethod
    def _on_client(slot: Slot) -> Callable[[PeerIdentity, FramedStream], Awaitable[None]]:
        async def on_client(peer: PeerIdentity, stream: FramedStream) -> None:
            node = slot.node
            if slot.live and isinstance(node, Origin):
                await serve_client(node, peer, stream)

        return on_client

    def tls_config(self, name: str) -> TlsConfig | None:
        """The `TlsConfig` of node `name` (or of "client"); None without TLS."""
        if self.tls_dir is None:
            return None
        d = self.tls_dir
        return TlsConfig(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem")

    async def _make_client(self) -> TestnetClient:
        client = OriginClient(
            self._slots["origin"].address,
            cluster_id=self.spec.cluster_id,
            tls=self.tls_config(CLIENT),
        )
        return await self.stack.enter_async_context(client)

    async def attach(self, name: str) -> Transport:
        transport = await TcpTransport.create(
            "127.0.0.1:0", task_group=self.task_group, cluster_id=self.spec.cluster_id, node_id=name
        )
        self.stack.push_async_callback(transport.aclose)
        return transport
