"""What a node process holds: resident memory, open file descriptors and async tasks.

Why: a soak run (`edgekv soak`) samples these from every node's status to tell whether
anything grows over time; a leak of memory, sockets or tasks shows there first.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

import sniffio

__all__ = ["open_fds", "process_info", "rss_bytes", "task_count"]


_own_statm: tuple[int, int] | None = None  # (pid, fd): this process's /proc/self/statm, open


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (default: this process) in bytes, from /proc; 0 elsewhere.

    This process's statm stays open once read: a process out of file descriptors (an accept
    flood) must still see its real RSS.  Falling back to `ru_maxrss` then reported the peak,
    which after fork and exec includes the parent's pages at the fork (a test runner's
    hundreds of MiB), as a jump of the child's RSS."""
    try:
        if pid is None:
            return _pages(_read_own_statm())
        with open(f"/proc/{pid}/statm") as f:
            return _pages(f.read())
    except (OSError, ValueError, IndexError):
        if pid is None and not os.path.exists("/proc/self"):  # no /proc: the peak, at least
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return 0


def _pages(statm: str | bytes) -> int:
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _read_own_statm() -> bytes:
    global _own_statm
    me = os.getpid()
    if _own_statm is None or _own_statm[0] != me:  # (a forked child reopens its own)
        _own_statm = (me, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    return os.pread(_own_statm[1], 256, 0)


with contextlib.suppress(OSError):  # open now, while descriptors are surely free
    _read_own_statm()


def open_fds(pid: int | None = None) -> int:
    """Open file descriptors of `pid` (default: this process); -1 if unknown."""
    try:
        return len(os.listdir(f"/proc/{pid or 'self'}/fd"))
    except OSError:
        return -1


def task_count() -> int:
    """Tasks alive in the running event loop (trio or asyncio); -1 outside one."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return -1
    if library == "trio":
        import trio

        root = trio.lowlevel.current_root_task()
        count, stack = 0, [] if root is None else [root]
        while stack:
            task = stack.pop()
            count += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return count
    import asyncio

    return len(asyncio.all_tasks())


def process_info() -> dict[str, Any]:
    """{"pid", "rss_bytes", "fds", "tasks"} of this process (for a node's status)."""
    return {"pid": os.getpid(), "rss_bytes": rss_bytes(), "fds": open_fds(), "tasks": task_count()}
