"""Resource limits of a node's network side: connection caps, timeouts and queue sizes in bytes.

Why: nothing a peer or client does may crash a node or grow its memory without bound (issue
#12).  Every listening port counts its connections (in total, per source address, and those
still in their handshake) and refuses what is over a cap by closing it at once; an accept
error (out of file descriptors, buffers) is counted and retried after a back-off instead of
stopping the listener; a connection silent for `idle_timeout` is closed.  Queues are bounded
in bytes: the inbox (a reader stops reading while it is full), each peer's send queue (frames
beyond it are dropped and counted; at most `max_senders` of them, each closed after
`sender_idle_timeout` unused) and a client connection's unsent answers (its reads pause).
All of these, plus frames still arriving, also draw on `node_bytes` per node (half for the
gossip transport, half for client connections, each a `ByteBudget`): whatever the number of
connections, their buffers together stay within it (a reader waits for room before reading
more, a send that does not fit is dropped and counted, a client connection stops being
read), so 1,000 connections cannot add up their per-connection caps.

`NetLimits.add_arguments(parser)` adds one `--flag` per field to a CLI and `from_args` reads
them back, so every limit is configurable from Python and from the command line alike.
"""

from __future__ import annotations

import argparse
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import anyio

from ..errors import InvalidInput

__all__ = ["DEFAULT_NET_LIMITS", "ByteBudget", "NetLimits", "fd_limit"]


def fd_limit() -> int:
    """This process's soft limit on open file descriptors (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class NetLimits:
    """Connection caps, timeouts (seconds) and queue sizes (bytes) of one node's transport."""

    max_connections: int = 4096
    """Inbound connections at once on a listening port (capped further by the fd limit)."""
    max_per_address: int = 1024
    """Inbound connections at once from one source IP address."""
    max_handshaking: int = 256
    """Inbound connections at once that have not finished their handshake."""
    fd_reserve: int = 64
    """File descriptors kept free for the node's own use: connections are capped at the
    process's fd limit minus this, so a flood meets a closed connection, not EMFILE."""
    handshake_timeout: float = 5.0
    """An inbound connection must finish its handshake within this."""
    idle_timeout: float = 300.0
    """An inbound connection that sends nothing (and awaits no answer) this long is closed."""
    accept_backoff: float = 0.1
    """After a failed accept (EMFILE, ENFILE, ENOBUFS, ...) the listener waits this long,
    doubling up to 1 s while failures continue."""
    inbox_bytes: int = 16 << 20
    """Received frames waiting to be handled, in bytes; readers pause while it is full."""
    send_queue_bytes: int = 4 << 20
    """Frames queued to one peer, in bytes; more are dropped (and counted) until it drains."""
    max_senders: int = 1024
    """Peers with a send queue (and its task and connection) at once; a new peer beyond it
    evicts the one sent to least recently (node/senders.py rule 4)."""
    sender_idle_timeout: float = 60.0
    """A peer's send queue that stays empty this long is closed with its connection."""
    client_unsent_bytes: int = 8 << 20
    """Answers to one client connection not yet taken by its socket; reading from it pauses
    beyond this (a client that does not read its answers stops being read)."""
    node_bytes: int = 256 << 20
    """All of the above together, for every connection of the node, plus frames still
    arriving: half for the gossip transport, half for client connections, each a `ByteBudget`
    (readers pause, sends are dropped beyond it), so neither can starve the other."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
                    raise InvalidInput(f"NetLimits.{f.name} must be a finite number > 0")
            elif type(value) is not int or value < (0 if f.name == "fd_reserve" else 1):
                raise InvalidInput(f"NetLimits.{f.name} must be a positive integer")

    def connection_cap(self) -> int:
        """`max_connections`, lowered so that the process keeps `fd_reserve` descriptors free."""
        return max(1, min(self.max_connections, fd_limit() - self.fd_reserve))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """One `--flag` per limit (e.g. `--max-connections`, `--idle-timeout`), default unset."""
        group = parser.add_argument_group("network limits (see edgekv.node.limits)")
        for f in fields(NetLimits):
            kind = float if f.type == "float" else int
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                type=kind,
                default=None,
                dest=f"limit_{f.name}",
                metavar="SECONDS" if kind is float else "N",
                help=f"{_HELP[f.name]} (default {getattr(DEFAULT_NET_LIMITS, f.name)})",
            )

    @staticmethod
    def from_args(args: argparse.Namespace) -> NetLimits:
        """The limits set by `add_arguments` flags (defaults for those not given)."""
        given = {
            f.name: getattr(args, f"limit_{f.name}")
            for f in fields(NetLimits)
            if getattr(args, f"limit_{f.name}", None) is not None
        }
        return replace(DEFAULT_NET_LIMITS, **given)


DEFAULT_NET_LIMITS = NetLimits()

_HELP = {
    "max_connections": "inbound connections at once per port",
    "max_per_address": "inbound connections at once from one source IP",
    "max_handshaking": "inbound connections at once still in their handshake",
    "fd_reserve": "file descriptors kept free (connections capped below the fd limit)",
    "handshake_timeout": "seconds an inbound connection has to finish its handshake",
    "idle_timeout": "seconds of silence before an inbound connection is closed",
    "accept_backoff": "first back-off after a failed accept (doubles up to 1 s)",
    "inbox_bytes": "received frames waiting to be handled, in bytes",
    "send_queue_bytes": "frames queued to one peer, in bytes (more are dropped)",
    "max_senders": "peers with a send queue and connection at once (least recent evicted)",
    "sender_idle_timeout": "seconds before an empty send queue to a peer is closed",
    "client_unsent_bytes": "a client's writes in flight plus unsent answers, in bytes",
    "node_bytes": "bytes all connections of the node may hold together (queues, frames)",
}


class ByteBudget:
    """Bytes held for connections by one node, against one `limit` (see the module docstring).

    `take(n)` and `give(n)` move the count (a caller may overshoot by what it already holds);
    `fits(n)` says whether `n` more bytes stay within the limit; `await room()` waits until the
    count is below the limit, `await fit(n)` until `n` more bytes fit; `on_room(cb, below)`
    calls `cb()` once when the count next drops below `below` (default: the limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._room: anyio.Event | None = None
        self._given: anyio.Event | None = None  # set at the next give (`given`)
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._wake_below = -1  # the highest mark a callback waits for

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def fits(self, n: int) -> bool:
        return self.used + n <= self.limit

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        if n < 0:
            self._freed()

    def give(self, n: int) -> None:
        self.used -= n
        self._freed()

    def _freed(self) -> None:
        if self._given is not None:
            self._given.set()
            self._given = None
        used = self.used
        if used >= self.limit:
            return
        if self._room is not None:
            self._room.set()
            self._room = None
        if used < self._wake_below:
            due = [cb for below, cb in self._callbacks if used < below]
            self._callbacks = [(b, cb) for b, cb in self._callbacks if used >= b]
            self._wake_below = max((b for b, _ in self._callbacks), default=-1)
            for cb in due:
                cb()

    async def room(self) -> None:
        """Return once the count is below the limit (at once if it is)."""
        while self.used >= self.limit:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def fit(self, n: int, own: int = 0) -> None:
        """Return once `n` more bytes fit within the limit, or nothing is held but the caller's
        own `own` bytes (so a request for more than the whole limit is served alone).
        Cancelling it leaves nothing behind (unlike `on_room`)."""
        while not self.fits(n) and self.used > own:
            if self._given is None:
                self._given = anyio.Event()
            await self._given.wait()

    def on_room(self, callback: Callable[[], None], below: int | None = None) -> None:
        """Call `callback()` once, when the count next drops below `below` (the limit)."""
        mark = self.limit if below is None else below
        self._callbacks.append((mark, callback))
        self._wake_below = max(self._wake_below, mark)
