"""The cyclic garbage collector, the C heap and bulk replica data.

Why: a `Register` written in Python would be a heap-type object that CPython's cyclic collector
tracks, each of the millions a replica holds, and a full collection would walk them all.  While
a snapshot streamed in, the young registers of each chunk were promoted generation by
generation and the growing heap triggered full collections: measured at 1,000,000 keys,
1.0-1.5 s of collector time in 3.7 s of receiving.  On CPython registers are now untracked
(crdt/untracked.py); the rule still covers what else a replica's load leaves tracked (the
Merkle leaf lists, zsets, blooms) and other interpreters.  Registers and the containers of a replica never form reference cycles (they
are freed by reference counting alone), so the collector can never reclaim any of them.

Rule 1: once a large batch of replica objects exists (a chunk of a whole snapshot staged, a
snapshot installed, a replica loaded from disk), `settle()` moves every object the collector
tracks to its permanent generation (`gc.freeze`, O(1)).  Later collections skip them; they are
still freed by reference counting when dropped.  The cost: a reference cycle that is already
garbage at that moment (none is made on these paths) is kept until `gc.unfreeze()`.

Rule 2: after a large batch of temporaries has been freed (a load from disk, every ~100,000
rows persisted: decoded messages, row lists, SQLite's own buffers), `release()` hands the free
pages of the C heap back to the OS (glibc `malloc_trim(0)`).  glibc keeps them otherwise:
its trim threshold grows with the largest block freed (up to 64 MiB), and freed blocks in the
middle of the heap are never returned by `free`.  Measured on an edge loaded with 1,000,000
keys through gossip: about 20 MiB of its RSS.  A trim walks the whole heap (~15 ms of CPU at
half a GiB), so callers make it rare and call it off the event loop (ctypes releases the GIL).
It is a no-op where the C library has no `malloc_trim` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import cast

__all__ = ["release", "settle"]


def settle() -> None:
    """Rule 1: exempt what exists now from future cyclic collections."""
    gc.freeze()


def _find_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


_TRIM = _find_trim()


def release() -> bool:
    """Rule 2: return the C heap's free pages to the OS; True when that was possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
