"""Peers in a back-off: each until a deadline, on whatever clock the caller reads."""

from __future__ import annotations

__all__ = ["Backoffs"]


class Backoffs:
    """Peer -> the end of its back-off.  With `limit`, at most that many peers are held: past
    it, the back-off started longest ago ends early (the table stays bounded whatever peers
    do)."""

    __slots__ = ("_until", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._until: dict[str, float] = {}

    def start(self, peer: str, until: float) -> None:
        """`peer` is in a back-off until `until` (a later start replaces an earlier one)."""
        table = self._until
        table.pop(peer, None)  # a restarted back-off counts as the newest
        table[peer] = until
        if self.limit is not None and len(table) > self.limit:
            del table[next(iter(table))]

    def active(self, peer: str, now: float) -> bool:
        """Whether `peer` is in a back-off at `now` (one that has ended is forgotten)."""
        until = self._until.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[peer]
        return False

    def clear(self) -> None:
        self._until.clear()

    def __len__(self) -> int:
        return len(self._until)
