"""The cyclic garbage collector and bulk replica data.

Why: every `Register` is a heap-type object, so CPython's cyclic collector tracks each of the
millions a replica holds, and a full collection walks them all.  While a snapshot streams in,
the young registers of each chunk are promoted generation by generation and the growing heap
triggers full collections: measured at 1,000,000 keys, 1.0-1.5 s of collector time in 3.7 s
of receiving.  Registers and the containers of a replica never form reference cycles (they
are freed by reference counting alone), so the collector can never reclaim any of them.

Rule: once a large batch of replica objects exists (a chunk of a whole snapshot staged, a
snapshot installed, a replica loaded from disk), `settle()` moves every object the collector
tracks to its permanent generation (`gc.freeze`, O(1)).  Later collections skip them; they are
still freed by reference counting when dropped.  The cost: a reference cycle that is already
garbage at that moment (none is made on these paths) is kept until `gc.unfreeze()`.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> None:
    """Rule: exempt what exists now from future cyclic collections."""
    gc.freeze()
