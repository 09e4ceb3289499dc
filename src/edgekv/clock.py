"""The wall clock every node reads by default (nodes take `wall_ms=` to run on another one,
e.g. a testnet's virtual time)."""

from __future__ import annotations

import time

__all__ = ["wall_clock_ms"]


def wall_clock_ms() -> int:
    """Wall-clock time in whole milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
