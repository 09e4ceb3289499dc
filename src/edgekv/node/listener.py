"""A listening port's accept loop with connection caps and accept-error survival (issue #12).

`ConnectionCaps` counts one port's inbound connections: in total, per source address and
those still in their handshake; `over_cap(host)` says why a new one must be refused (empty when
it may stay).  `accept_loop` accepts until the listener closes: a connection over a cap is
closed at once (counted in `stats.refused_connections`); a transient accept error (out of file
descriptors, buffers or memory; a connection aborted before it was accepted) is counted in
`stats.accept_errors` and retried after a back-off starting at `limits.accept_backoff` and
doubling up to 1 s, so a flood past the fd limit never stops the listener.  The TCP transport
uses both for its gossip port.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from edgekv.gossip.transport import TransportStats
from edgekv.node.limits import NetLimits

__all__ = ["ConnectionCaps", "accept_loop"]

logger = logging.getLogger("edgekv.tcp")

_ACCEPT_BACKOFF_MAX = 1.0
# accept() failures that say "not now": the listener counts them, backs off and keeps listening
_TRANSIENT_ACCEPT = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "ECONNABORTED", "EPROTO", "EPERM")
    if hasattr(errno, name)
)


class ConnectionCaps:
    """Open inbound connections of one port, in total, per source host and in handshake."""

    def __init__(self, limits: NetLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.handshaking = 0
        self.per_address: dict[str, int] = {}

    def over_cap(self, host: str) -> str:
        """Why a new connection from `host` must be refused; "" when it may stay."""
        limits = self.limits
        if self.connections >= limits.connection_cap():
            return f"{self.connections} connections open"
        if self.handshaking >= limits.max_handshaking:
            return f"{self.handshaking} connections in their handshake"
        if self.per_address.get(host, 0) >= limits.max_per_address:
            return f"{limits.max_per_address} connections from that address"
        return ""

    def opened(self, host: str) -> None:
        self.connections += 1
        self.handshaking += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1

    def authenticated(self) -> None:
        self.handshaking -= 1

    def closed(self, host: str, handshaking: bool) -> None:
        self.connections -= 1
        if handshaking:
            self.handshaking -= 1
        left = self.per_address.get(host, 1) - 1
        if left > 0:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)


Handler = Callable[[anyio.abc.SocketStream, str], Coroutine[Any, Any, None]]


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
    limits = caps.limits
    backoff = 0.0
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            code = getattr(cause, "errno", None)
            stats.accept_errors += 1
            backoff = min(max(backoff * 2, limits.accept_backoff), _ACCEPT_BACKOFF_MAX)
            if code not in _TRANSIENT_ACCEPT:
                logger.error("%s: accept failed: %r", name(), cause or exc)
            else:
                logger.warning(
                    "%s: accept failed (%s), retrying in %.2f s",
                    name(),
                    errno.errorcode.get(code or 0, code),
                    backoff,
                )
            await anyio.sleep(backoff)
            continue
        backoff = 0.0
        try:
            host = str(stream.extra(anyio.abc.SocketAttribute.remote_address)[0])
        except Exception:
            host = "?"
        reason = caps.over_cap(host)
        if reason:
            stats.refused_connections += 1
            logger.info("%s: refusing a connection from %s: %s", name(), host, reason)
            await anyio.aclose_forcefully(stream)
            continue
        caps.opened(host)
        tg.start_soon(handle, stream, host)
