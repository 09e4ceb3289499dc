"""Candidates: unvouched addresses awaiting a configured peer's word (membership.py rule 8).

A row about an unknown address that comes from a peer this node was not configured with is
not taken: the address waits here, never dialled nor gossiped.  Each ping interval the member
table asks one configured peer about a batch of them (`batch`); an address that peer vouches
for joins the table (`discard`), one still unvouched after CANDIDATE_ASKS asks is dropped.  The
queue is bounded: past MAX_CANDIDATES an address is dropped at once.  Both drops are counted
as `members_unvouched`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from itertools import islice

__all__ = ["CANDIDATES_PER_ROUND", "CANDIDATE_ASKS", "MAX_CANDIDATES", "Candidates"]

MAX_CANDIDATES = 1024  # unvouched addresses awaiting a configured peer's word
CANDIDATE_ASKS = 3  # asks about one candidate before it is dropped
CANDIDATES_PER_ROUND = 64  # candidates asked about per ping interval, in one MEMBERS ask


class Candidates:
    """The queue of unvouched addresses, oldest ask first (pure: no I/O, no clock)."""

    __slots__ = ("_asks", "counters")

    def __init__(self, counters: Counter[str]) -> None:
        self._asks: dict[str, int] = {}  # address -> asks so far, in queue order
        self.counters = counters

    def __bool__(self) -> bool:
        return bool(self._asks)

    def __len__(self) -> int:
        return len(self._asks)

    def add(self, address: str) -> None:
        """An unknown address named by a peer that does not vouch."""
        if address in self._asks:
            return
        if len(self._asks) >= MAX_CANDIDATES:
            self.counters["members_unvouched"] += 1
            return
        self._asks[address] = 0

    def discard(self, address: str) -> bool:
        """`address` is not a candidate any more (it spoke to us, or was vouched for); True
        when it was one."""
        return self._asks.pop(address, None) is not None

    def batch(self, known: Callable[[str], bool]) -> list[str]:
        """The next addresses to ask a configured peer about (at most CANDIDATES_PER_ROUND),
        each moved to the back of the queue; those `known` by now are dropped from it, those
        asked about CANDIDATE_ASKS times already too (counted)."""
        asks = self._asks
        out: list[str] = []
        for address in list(islice(asks, CANDIDATES_PER_ROUND)):
            n = asks.pop(address)
            if known(address):
                continue
            if n >= CANDIDATE_ASKS:
                self.counters["members_unvouched"] += 1
                continue
            asks[address] = n + 1
            out.append(address)
        return out
