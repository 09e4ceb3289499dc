"""What a node process holds: resident memory, open file descriptors and async tasks.

Why: a soak run (`edgekv soak`) samples these from every node's status to tell whether
anything grows over time; a leak of memory, sockets or tasks shows there first.
"""

from __future__ import annotations

import os
import resource
from typing import Any

import sniffio

__all__ = ["open_fds", "process_info", "rss_bytes", "task_count"]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (default: this process) in bytes, from /proc; 0 elsewhere."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid is None:  # no /proc: the peak is better than nothing
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return 0


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
