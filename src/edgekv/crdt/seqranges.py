"""Sets of seqs as sorted disjoint closed ranges: what a replica has applied.

A replica's `watermark` is the end of the range that starts at seq 1: every seq at or below it
has had its effect applied (directly, or through a newer state of the same key).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class SeqRanges:
    """Disjoint, sorted, non-adjacent closed ranges of seqs (seqs start at 1)."""

    __slots__ = ("_his", "_los")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._los: list[int] = []
        self._his: list[int] = []
        for lo, hi in ranges:
            self.add(lo, hi)

    def add(self, lo: int, hi: int) -> None:
        """Add the closed range [lo, hi] (no-op when hi < lo)."""
        if hi < lo:
            return
        los, his = self._los, self._his
        # first range that could touch [lo, hi]: the one whose hi >= lo - 1
        i = bisect_right(his, lo - 2)
        j = i
        while j < len(los) and los[j] <= hi + 1:
            lo = min(lo, los[j])
            hi = max(hi, his[j])
            j += 1
        los[i:j] = [lo]
        his[i:j] = [hi]

    def update(self, other: SeqRanges | Iterable[tuple[int, int]]) -> None:
        for lo, hi in other:
            self.add(lo, hi)

    @property
    def watermark(self) -> int:
        """Highest seq w such that every seq in 1..w is present (0 when seq 1 is missing)."""
        if self._los and self._los[0] <= 1:
            return self._his[0]
        return 0

    @property
    def high(self) -> int:
        """The highest seq present (0 when empty)."""
        return self._his[-1] if self._his else 0

    def above(self, seq: int) -> list[tuple[int, int]]:
        """The ranges clipped to seqs strictly greater than `seq`."""
        out = []
        for lo, hi in self:
            if hi > seq:
                out.append((max(lo, seq + 1), hi))
        return out

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every seq of [lo, hi] is present (one bisection: ranges never touch, so
        the range holding `lo` must hold `hi` too)."""
        i = bisect_right(self._los, lo) - 1
        return i >= 0 and self._his[i] >= hi

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect_right(self._los, seq) - 1
        return i >= 0 and self._his[i] >= seq

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._los, self._his, strict=True))

    def __len__(self) -> int:
        return len(self._los)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqRanges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"SeqRanges({list(self)!r})"

    def copy(self) -> SeqRanges:
        new = SeqRanges()
        new._los = list(self._los)
        new._his = list(self._his)
        return new
