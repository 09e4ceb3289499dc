"""The change index of one store: which keys changed after a given seq, in O(changes).

Theory of operation
1. Every state change appends `(seq, key)` to two parallel lists: O(1), no per-key objects.
   The entry is *current* while the key's state still has that seq; a later change of the key
   appends a new entry and leaves the old one *stale* (it is skipped and later dropped).
2. Deltas mostly arrive in seq order, so the lists are mostly sorted already.  An append with a
   lower seq than the last one only clears `ordered`; the next reader sorts once (timsort is
   near-linear on such runs), so a catch-up of many out-of-order states costs O(n log n) once,
   never O(n) per insert.
3. When stale entries outnumber current ones (plus slack), the log is compacted: stale entries
   and duplicates (a key removed and re-added with the same state) are dropped.  Compaction
   is O(n) and happens after Omega(n) changes, so appends stay amortised O(1).
4. `since(w)` bisects for the first seq above w and yields each current key once, in seq order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from typing import Protocol


class _HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


SLACK = 1024


class ChangeLog:
    """Keys by the seq of their last change: append-only with lazy sorting and compaction."""

    __slots__ = ("keys", "ordered", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.keys: list[str] = []
        self.ordered = True

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: int, key: str, states: Mapping[str, _HasSeq]) -> None:
        """Record that `key` changed to a state at `seq`."""
        seqs = self.seqs
        if seqs and seq < seqs[-1]:
            self.ordered = False
        seqs.append(seq)
        self.keys.append(key)
        if len(seqs) > 2 * len(states) + SLACK:
            self.compact(states)

    def compact(self, states: Mapping[str, _HasSeq]) -> None:
        """Sort by seq and drop stale and duplicate entries."""
        seqs, keys = self.seqs, self.keys
        order = range(len(seqs)) if self.ordered else sorted(range(len(seqs)), key=seqs.__getitem__)
        seen: set[str] = set()
        new_seqs: list[int] = []
        new_keys: list[str] = []
        for i in order:
            key, seq = keys[i], seqs[i]
            st = states.get(key)
            if st is not None and st.seq == seq and key not in seen:
                seen.add(key)
                new_seqs.append(seq)
                new_keys.append(key)
        self.seqs, self.keys, self.ordered = new_seqs, new_keys, True

    def since(self, watermark: int, states: Mapping[str, _HasSeq]) -> Iterator[str]:
        """Every key whose current state has seq > watermark, ascending by seq, each once."""
        if not self.ordered:
            self.compact(states)
        seqs, keys = self.seqs, self.keys
        seen: set[str] = set()
        for i in range(bisect_right(seqs, watermark), len(seqs)):
            key = keys[i]
            st = states.get(key)
            if st is not None and st.seq == seqs[i] and key not in seen:
                seen.add(key)
                yield key

    def clear(self) -> None:
        self.seqs, self.keys, self.ordered = [], [], True
