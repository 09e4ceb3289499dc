"""Peers in a back-off: each until a deadline, on whatever clock the caller reads."""

from __future__ import annotations

__all__ = ["MAX_BACKOFFS", "Backoffs"]

MAX_BACKOFFS = 1024
"""Peers a back-off table holds by default: a hostile peer can name any number of addresses,
so every such table is bounded."""


class Backoffs(dict[str, float]):
    """Peer -> the end of its back-off.  At most `limit` peers are held: past it, the back-off
    started longest ago ends early (the table stays bounded whatever peers do).  A dict, so
    that `if backoffs:` (asked per message) costs what an empty dict's does."""

    __slots__ = ("limit",)

    def __init__(self, limit: int = MAX_BACKOFFS) -> None:
        super().__init__()
        self.limit = limit

    def start(self, peer: str, until: float) -> None:
        """`peer` is in a back-off until `until` (a later start replaces an earlier one)."""
        self.pop(peer, None)  # a restarted back-off counts as the newest
        self[peer] = until
        if len(self) > self.limit:
            del self[next(iter(self))]

    def active(self, peer: str, now: float) -> bool:
        """Whether `peer` is in a back-off at `now` (one that has ended is forgotten)."""
        until = self.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self[peer]
        return False
