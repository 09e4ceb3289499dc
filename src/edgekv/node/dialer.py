"""Outbound connections of one node, and the confirmation of the addresses peers claim.

Theory of operation
1. `Dialer.connect(address)` opens an authenticated connection as this node (TLS first when
   configured) and remembers its handshake transcript (the last `INITIATED_KEPT`), so that the
   peer can ask us whether we opened it (wire.py rule 6) and we can answer (`initiated`).
   Each connection is counted in the node's `FdBudget` until its `abort`/`aclose`; a dial
   the budget has no room for fails at once (`FdsExhausted`), one to an `essential` address
   (the node's origins) never does (fdbudget.py rule 3).
2. An inbound connection's handshake names the address its sender listens at: a claim.  It is
   *confirmed* by dialling that address and asking, in the handshake, whether the process
   there initiated the connection with this transcript: only the very process that connected
   can say yes, under the same node id.  `confirm` does that, with bounds: an address that is
   not configured is dialled only if its host is the connection's source host (a claim never
   aims us at a third host), at most `MAX_PROBES` probes run at once (more wait), one per
   address (later claims of it share its outcome), and a failed address is not probed again
   for `failed_backoff` seconds (`FAILED_BACKOFF` by default).  A probe sends only a HELLO
   (and AUTH): it carries no gossip.  The last `MAX_CONFIRMED` confirmed (address, node id) pairs
   are remembered, so reconnections are not probed again.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import anyio

from edgekv.node.backoff import Backoffs
from edgekv.node.fdbudget import FdBudget
from edgekv.node.framed import CONNECT_TIMEOUT, FramedStream, LinkOptions, parse_address

__all__ = ["Dialer", "same_host"]

logger = logging.getLogger("edgekv.tcp")

INITIATED_KEPT = 1024  # transcripts of recent outbound handshakes, for confirming them
MAX_PROBES = 16
MAX_CONFIRMED = 4096
FAILED_BACKOFF = 30.0


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def same_host(claimed_host: str, source: str) -> bool:
    """Whether `claimed_host` (an IP or a name) is the connection's `source` IP."""
    src = _ip(source)
    if src is None:
        return False
    ip = _ip(claimed_host)
    if ip is not None:
        return ip == src
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            infos = await anyio.getaddrinfo(claimed_host, None)
    except (OSError, TimeoutError):
        return False
    return any(_ip(str(info[4][0])) == src for info in infos)


class Dialer:
    """Opens this node's outbound connections and confirms claimed addresses (see module)."""

    def __init__(
        self,
        link: LinkOptions,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        fds: FdBudget | None = None,
    ) -> None:
        self.link = link  # its `advertise` is replaced by `address` at each connection
        self.connect_timeout = connect_timeout
        self.failed_backoff = FAILED_BACKOFF  # seconds before a failed address is probed again
        self.address = ""  # ours, as advertised (set once the transport is bound)
        self.fds = fds  # every connection counted in it (rule 1)
        self.essential: Callable[[str], bool] = lambda address: False  # e.g. our origins
        self._initiated: OrderedDict[bytes, None] = OrderedDict()
        self.confirmed: OrderedDict[str, str] = OrderedDict()  # address -> node id
        self._failed = Backoffs(MAX_CONFIRMED)  # address -> when it may be probed again
        self._probing = 0
        self._probe_done: anyio.Event | None = None
        self._pending: dict[str, anyio.Event] = {}  # address -> its probe running now

    def initiated(self, transcript: bytes) -> bool:
        """Whether this node opened the connection whose handshake had `transcript`."""
        return transcript in self._initiated

    async def connect(self, address: str, *, confirm: bytes | None = None) -> FramedStream:
        """An authenticated connection to `address` (rule 1); with `confirm`, a probe asking
        whether the peer initiated that transcript (its answer in `.confirmed`).  Raises
        `FdsExhausted` at once when the node's fd budget has no room for it (rule 1)."""
        fds = self.fds
        if fds is not None:
            fds.open_outbound(self.essential(address))
        try:
            conn = await FramedStream.connect(
                address,
                replace(self.link, advertise=self.address),
                connect_timeout=self.connect_timeout,
                confirm=confirm,
            )
        except BaseException:
            if fds is not None:
                fds.closed_outbound()
            raise
        if fds is not None:
            conn.on_close = fds.closed_outbound  # given back by its `abort` or `aclose`
        if confirm is None:
            self._initiated[conn.transcript] = None
            if len(self._initiated) > INITIATED_KEPT:
                self._initiated.popitem(last=False)
        return conn

    def is_confirmed(self, address: str, node_id: str) -> bool:
        return self.confirmed.get(address) == node_id

    async def confirm(
        self, claimed: str, node_id: str, transcript: bytes, source: str, *, configured: bool
    ) -> str:
        """Confirm that `claimed` is where the connection with `transcript` (from host `source`,
        node `node_id`) came from (rule 2).  Returns "" when confirmed, else why not."""
        while (running := self._pending.get(claimed)) is not None:
            await running.wait()  # one probe per address at a time: share its outcome
        if self.is_confirmed(claimed, node_id):
            self.confirmed.move_to_end(claimed)
            return ""
        if self._failed.active(claimed, anyio.current_time()):
            return "its address failed a probe recently"
        try:
            host, _port = parse_address(claimed)
        except ValueError:
            return "its address is malformed"
        if not configured and not await same_host(host, source):
            return "its address is on another host than the connection"
        done = self._pending[claimed] = anyio.Event()
        try:
            while self._probing >= MAX_PROBES:
                if self._probe_done is None:
                    self._probe_done = anyio.Event()
                await self._probe_done.wait()
            self._probing += 1
            try:
                ok = await self._probe(claimed, node_id, transcript)
            finally:
                self._probing -= 1
                if self._probe_done is not None:
                    self._probe_done.set()
                    self._probe_done = None
        finally:
            del self._pending[claimed]
            done.set()
        if ok:
            self._failed.pop(claimed, None)
            self.confirmed[claimed] = node_id
            self.confirmed.move_to_end(claimed)
            if len(self.confirmed) > MAX_CONFIRMED:
                self.confirmed.popitem(last=False)
            return ""
        self._failed.start(claimed, anyio.current_time() + self.failed_backoff)
        return "the process at its address did not confirm it"

    async def _probe(self, claimed: str, node_id: str, transcript: bytes) -> bool:
        try:
            conn = await self.connect(claimed, confirm=transcript)
        except Exception as exc:
            logger.info("%s: cannot confirm %s: %r", self.address, claimed, exc)
            return False
        await conn.abort()
        return conn.confirmed is True and conn.peer is not None and conn.peer.node_id == node_id
