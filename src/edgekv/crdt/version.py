"""Versions: the origin's sequence number plus its wall-clock stamp.

LWW order is by `seq` alone: the origin hands out consecutive seqs and never reuses one, so
two versions with the same seq are the same write.  `written_at` (origin wall clock, ms) is
metadata used for propagation figures and `get_entry`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """The version of a write: `seq` orders, `written_at` (ms since the epoch) informs."""

    seq: int
    written_at: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """A plain value with its version and absolute expiry (ms since the epoch, or None)."""

    value: bytes
    version: Version
    expires_at: int | None
