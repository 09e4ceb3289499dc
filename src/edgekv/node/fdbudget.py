"""File descriptors held by a node's connections, against one budget below the fd limit.

Theory of operation (issue #12)
1. The fd limit is the process's, not a port's: every inbound connection on every port (the
   gossip/client port, the HTTP ports) and every outbound connection (senders, claim probes)
   holds one descriptor, counted in one `FdBudget` (`held`).  A daemon runs one node, so
   its transport's budget, shared with its HTTP server, is the process's.
2. An inbound connection is admitted only while `held < limit()` = the fd limit minus
   `reserve`: beyond it every port closes new ones at once (`inbound_room`; counted in
   `refused_inbound` and in the port's `refused_connections`), so a flood on several ports
   together meets closed connections, never EMFILE.
3. An outbound dial may use a quarter of the reserve beyond that (a flood of inbound
   connections cannot cut a node off from its peers); past it a dial fails at once with
   `FdsExhausted` (an OSError, EMFILE) counted in `refused_outbound`.  A dial to one of the
   node's origins is never refused: an edge always reaches its origin.
4. The rest of the reserve stays free for the process's own files: SQLite, logs, /proc,
   listeners, TLS.  Far from the limit nothing changes: the per-port caps (listener.py)
   are met first.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from edgekv.node.limits import fd_limit

__all__ = ["FdBudget", "FdsExhausted", "fds_counters", "fds_gauges", "fds_status"]


class FdsExhausted(OSError):
    """An outbound dial refused: the process is at its connection budget (rule 3)."""

    def __init__(self, held: int) -> None:
        super().__init__(errno.EMFILE, f"{held} connections hold the process's fd budget")


class FdBudget:
    """Descriptors held by one node's connections (see the module docstring)."""

    def __init__(self, reserve: int = 64, *, limit: Callable[[], int] = fd_limit) -> None:
        self.reserve = reserve
        self._fd_limit = limit
        self.inbound = 0
        self.outbound = 0
        self.peak = 0
        self.refused_inbound = 0
        self.refused_outbound = 0

    @property
    def held(self) -> int:
        return self.inbound + self.outbound

    def limit(self) -> int:
        """Connections at once, inbound ones (rule 2)."""
        return max(1, self._fd_limit() - self.reserve)

    def inbound_room(self) -> bool:
        """Whether a new inbound connection may stay (rule 2)."""
        return self.held < self.limit()

    def opened_inbound(self) -> None:
        self.inbound += 1
        self._peaked()

    def closed_inbound(self) -> None:
        self.inbound -= 1

    def open_outbound(self, essential: bool = False) -> None:
        """Count a dial in, or raise `FdsExhausted` (rule 3); `essential`: to an origin."""
        if not essential and self.held >= self.limit() + self.reserve // 4:
            self.refused_outbound += 1
            raise FdsExhausted(self.held)
        self.outbound += 1
        self._peaked()

    def closed_outbound(self) -> None:
        self.outbound -= 1

    def _peaked(self) -> None:
        if self.held > self.peak:
            self.peak = self.held

    def status(self) -> dict[str, Any]:
        """Figures for a node's status (`fds`) and metrics."""
        return {
            "limit": self.limit(),
            "reserve": self.reserve,
            "held": self.held,
            "inbound": self.inbound,
            "outbound": self.outbound,
            "peak": self.peak,
            "refused_inbound": self.refused_inbound,
            "refused_outbound": self.refused_outbound,
        }


def _of(transport: object) -> FdBudget | None:
    fds = getattr(transport, "fds", None)
    return fds if isinstance(fds, FdBudget) else None


def fds_status(transport: object) -> dict[str, Any] | None:
    """The `fds` section of a node's status (None: a transport without an fd budget)."""
    fds = _of(transport)
    return None if fds is None else fds.status()


def fds_gauges(transport: object) -> dict[str, float]:
    """Metrics gauges `fds_held` and `fds_limit` of a node's transport (none without one)."""
    fds = _of(transport)
    return {} if fds is None else {"fds_held": float(fds.held), "fds_limit": float(fds.limit())}


def fds_counters(transport: object) -> dict[str, float]:
    """Metrics counters of connections refused for the fd budget, inbound and outbound."""
    fds = _of(transport)
    if fds is None:
        return {}
    return {
        "fds_refused_inbound": float(fds.refused_inbound),
        "fds_refused_outbound": float(fds.refused_outbound),
    }
