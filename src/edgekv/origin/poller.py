"""One epoll for the reads of every client connection (trio on Linux, plain sockets).

Why: with one task per connection, each request costs the origin a task wake-up, a `recv`
that first fails with EAGAIN, and two `epoll_ctl` calls as trio re-arms the socket (trio
registers interest per wait).  With 64 clients each sending one request at a time, that was
more than half of the origin's CPU per write.  Here every client socket is registered once,
level-triggered, in an epoll object of our own; one task waits until that epoll's descriptor is
readable (trio watches it like any fd), takes every ready socket in one `epoll.poll(0)`, and
lets each connection `recv` and handle what arrived.

Theory of operation
1. `ClientConnection.run` registers itself when its socket is a plain non-blocking one under
   trio (`sockio.direct_socket`) and this poller exists; otherwise it keeps its reader task.
2. Level-triggered: a connection that leaves bytes unread (it read one chunk, or it stopped at
   its in-flight limit) is simply reported again, so nothing is lost between rounds.  A
   connection at its in-flight limit `pause`s its socket (interest 0) and `resume`s when a
   write completes.
3. Each round ends in trio's `wait_readable`, a checkpoint, so the sequencer and the answer
   path run between rounds; the poller never blocks on one connection.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio

logger = logging.getLogger("edgekv.origin")

_IN = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1


class ClientPoller:
    """Readable-socket dispatch for many connections through one epoll (see module doc)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self.rounds = 0

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    def add(self, fd: int, on_readable: Callable[[], None]) -> None:
        self._epoll.register(fd, _IN)
        self._handlers[fd] = on_readable

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # already closed: the kernel dropped it
                pass

    def pause(self, fd: int) -> None:
        if fd in self._handlers:
            self._epoll.modify(fd, 0)

    def resume(self, fd: int) -> None:
        if fd in self._handlers:
            self._epoll.modify(fd, _IN)

    async def run(self) -> None:
        """Dispatch readable sockets until cancelled."""
        epoll, handlers = self._epoll, self._handlers
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                self.rounds += 1
                for fd, _ in epoll.poll(0):
                    handler = handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler()
                    except Exception:  # one connection's bug must not stop the others
                        logger.exception("client read handler failed")
                        self.remove(fd)
        finally:
            epoll.close()
