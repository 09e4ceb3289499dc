"""Flushes of the write-ahead log: on the event loop, or in dedicated threads.

Inline (`threads=0`, the origin's default): `request(no)` runs `sync()` at once and reports
`on_done(no, error)` before it returns, as Redis does with `appendfsync always`.  The event
loop stops for the length of one fdatasync (about 0.3 ms on this kind of machine); everything
that arrives meanwhile waits in the socket buffers and joins the next commit group.  On a fast
disk this is the cheapest: a flush in a thread costs the event loop about 100 us of CPU
(waking the thread, handing the GIL back and forth a dozen times, and the loop's own wake-up
when the flush reports back), which under load was a quarter of the origin's CPU per write.

Threads (`threads=N`): N long-lived daemon threads block on a queue; `request(no)` queues a
flush, a thread runs `sync()` and reports `on_done(no, error)` on the event loop through the
loop's own thread-safe entry point (`TrioToken.run_sync_soon` under trio,
`call_soon_threadsafe` under asyncio).  The loop keeps serving during the flush and the
sequencer overlaps the flush of one group with the planning of the next: the choice for a
disk whose flushes take milliseconds.  (Not `to_thread.run_sync` per flush: trio's generic
thread hop costs about twice the CPU of this bare hand-off.)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

import sniffio

logger = logging.getLogger("edgekv.origin")

OnDone = Callable[[int, BaseException | None], None]


def loop_entry() -> Callable[..., object]:
    """The current event loop's thread-safe `call soon` function."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe


class Flusher:
    """Runs `sync` on request, inline or in `threads` daemon threads (see the module docstring)."""

    def __init__(self, sync: Callable[[], None], on_done: OnDone, threads: int = 0) -> None:
        self._sync = sync
        self._on_done = on_done
        self.inline = threads == 0
        self._call_soon = None if self.inline else loop_entry()
        self.handoff = True
        self._jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"edgekv-flush-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def request(self, no: int, *, handoff: bool = False) -> None:
        """Flush now; `on_done(no, error)` follows on the event loop.

        `handoff`: the caller has nothing else to do right now (a lone writer waits for this
        flush).  The woken thread needs the GIL before it can start the flush; yielding the
        CPU and the GIL lets it reach fdatasync (which releases the GIL) at once, rather than
        preempt this thread later and wait for the GIL.  Under load that yield only costs a
        system call per flush, so the sequencer asks for it only when idle.
        """
        if self.inline:
            self._on_done(no, self._run_sync())
            return
        self._jobs.put(no)
        if handoff and self.handoff:
            os.sched_yield()

    def _run_sync(self) -> BaseException | None:
        try:
            self._sync()
        except BaseException as exc:  # reported to the sequencer, which fails the writes
            return exc
        return None

    def close(self) -> None:
        """Let the threads exit once the flushes already requested are done."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            no = self._jobs.get()
            if no is None:
                return
            error = self._run_sync()
            call_soon = self._call_soon
            assert call_soon is not None  # threads run only when not inline
            try:
                call_soon(self._on_done, no, error)
            except Exception:  # the event loop is gone: nobody waits for this flush
                logger.debug("flush %d finished after the event loop closed", no)
