"""A listening port's accept loop with connection caps and accept-error survival (issue #12).

`ConnectionCaps` counts one port's inbound connections: in total, per source address and
those still in their handshake, and in the node's `FdBudget` shared by all its ports and its
outbound connections (fdbudget.py); `over_cap(host)` says why a new one must be refused
(empty when it may stay).  `accept_loop` accepts until the listener closes: a connection
over a cap, or arriving when the process is near its fd limit, is closed at once (counted in `stats.refused_connections`); a transient accept error (out of file
descriptors, buffers or memory; a connection aborted before it was accepted) is counted in
`stats.accept_errors` and retried after a back-off starting at `accept_backoff` and doubling
up to 1 s (`accept_failed`), so a flood past the fd limit never stops the listener.  The TCP
transport uses both for its gossip port; the HTTP servers (httpserve.py) run `accept_each`, the
same loop over trio's listener or a raw socket under asyncio.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.abc

from edgekv.gossip.transport import TransportStats
from edgekv.node.fdbudget import FdBudget
from edgekv.node.limits import NetLimits, fd_limit

__all__ = ["ConnectionCaps", "accept_each", "accept_failed", "accept_loop"]

logger = logging.getLogger("edgekv.tcp")

ACCEPT_BACKOFF_MAX = 1.0
# accept() failures that say "not now": the listener counts them, backs off and keeps listening
_TRANSIENT_ACCEPT = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "ECONNABORTED", "EPROTO", "EPERM")
    if hasattr(errno, name)
)


_NO_FDS = "the process is near its fd limit"


class ConnectionCaps:
    """Open inbound connections of one port, in total, per source host and in handshake;
    with `fds`, also counted in the node's `FdBudget` shared by all its ports (fdbudget.py)."""

    def __init__(
        self,
        max_connections: int,
        max_per_address: int,
        max_handshaking: int,
        *,
        fd_reserve: int = 0,
        accept_backoff: float = 0.1,
        fds: FdBudget | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.max_handshaking = max_handshaking
        self.fd_reserve = fd_reserve
        self.accept_backoff = accept_backoff
        self.fds = fds
        self.connections = 0
        self.handshaking = 0
        self.per_address: dict[str, int] = {}

    @classmethod
    def of(cls, limits: NetLimits, fds: FdBudget | None = None) -> ConnectionCaps:
        return cls(
            limits.max_connections,
            limits.max_per_address,
            limits.max_handshaking,
            fd_reserve=limits.fd_reserve,
            accept_backoff=limits.accept_backoff,
            fds=fds,
        )

    def cap(self) -> int:
        """`max_connections`, lowered so that the process keeps `fd_reserve` descriptors free."""
        return max(1, min(self.max_connections, fd_limit() - self.fd_reserve))

    def over_cap(self, host: str) -> str:
        """Why a new connection from `host` must be refused; "" when it may stay."""
        if self.connections >= self.cap():
            return f"{self.connections} connections open"
        if self.handshaking >= self.max_handshaking:
            return f"{self.handshaking} connections in their handshake"
        if self.per_address.get(host, 0) >= self.max_per_address:
            return f"{self.max_per_address} connections from that address"
        if self.fds is not None and not self.fds.inbound_room():
            return _NO_FDS
        return ""

    def admit(self, host: str, stats: TransportStats, name: str) -> bool:
        """Count a new connection from `host` in, or refuse it (counted and logged)."""
        reason = self.over_cap(host)
        if reason:
            stats.refused_connections += 1
            if reason is _NO_FDS and self.fds is not None:
                self.fds.refused_inbound += 1
            logger.info("%s: refusing a connection from %s: %s", name, host, reason)
            return False
        self.opened(host)
        return True

    def opened(self, host: str) -> None:
        self.connections += 1
        self.handshaking += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        if self.fds is not None:
            self.fds.opened_inbound()

    def authenticated(self) -> None:
        self.handshaking -= 1

    def closed(self, host: str, handshaking: bool) -> None:
        self.connections -= 1
        if self.fds is not None:
            self.fds.closed_inbound()
        if handshaking:
            self.handshaking -= 1
        left = self.per_address.get(host, 1) - 1
        if left > 0:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)


Handler = Callable[[anyio.abc.SocketStream, str], Coroutine[Any, Any, None]]
Conn = TypeVar("Conn")


def accept_failed(exc: BaseException, stats: TransportStats, backoff: float, name: str) -> float:
    """Count and log a failed accept; the back-off to wait before the next one."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    code = getattr(cause, "errno", None)
    stats.accept_errors += 1
    if code not in _TRANSIENT_ACCEPT:
        logger.error("%s: accept failed: %r", name, cause or exc)
    else:
        logger.warning(
            "%s: accept failed (%s), retrying in %.2f s",
            name,
            errno.errorcode.get(code or 0, code),
            backoff,
        )
    return backoff


async def accept_each(
    accept: Callable[[], Awaitable[tuple[Conn, str] | None]],
    start: Callable[[Conn, str], None],
    close: Callable[[Conn], Awaitable[None]],
    *,
    caps: ConnectionCaps,
    stats: TransportStats,
    name: Callable[[], str],
) -> None:
    """The accept loop of any listener (anyio's, trio's, a raw socket under asyncio):
    `accept()` returns the next connection and its source host (None once the listener is
    closed); each within the caps is handed to `start(conn, host)`, the others to `close`.
    Accept errors are counted and backed off (`accept_failed`)."""
    backoff = 0.0
    while True:
        try:
            accepted = await accept()
        except (anyio.BrokenResourceError, OSError) as exc:
            backoff = min(max(backoff * 2, caps.accept_backoff), ACCEPT_BACKOFF_MAX)
            await anyio.sleep(accept_failed(exc, stats, backoff, name()))
            continue
        if accepted is None:
            return
        backoff = 0.0
        conn, host = accepted
        if not caps.admit(host, stats, name()):
            await close(conn)
            continue
        start(conn, host)


async def accept_loop(
    listener: anyio.abc.SocketListener,
    tg: anyio.abc.TaskGroup,
    handle: Handler,
    *,
    caps: ConnectionCaps,
    stats: TransportStats,
    name: Callable[[], str],
) -> None:
    """Accept until `listener` closes; each connection within the caps runs `handle(stream,
    host)` in `tg` (which must call `caps.authenticated()`/`caps.closed()`).  `name()` is the
    address used in log lines."""

    async def accept() -> tuple[anyio.abc.SocketStream, str] | None:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return None
        try:
            host = str(stream.extra(anyio.abc.SocketAttribute.remote_address)[0])
        except Exception:
            host = "?"
        return stream, host

    def start(stream: anyio.abc.SocketStream, host: str) -> None:
        tg.start_soon(handle, stream, host)

    await accept_each(accept, start, anyio.aclose_forcefully, caps=caps, stats=stats, name=name)
