"""The change index of one store: which keys changed after a given seq, in O(changes).

Theory of operation
1. Every state change appends `(seq, key)` to two parallel arrays (seqs as raw integers, so a
   bisection touches contiguous memory, not scattered int objects): O(1), no per-key objects.
   The seqs are uint32 while every seq fits (4 bytes a key: 4 MB less at a million keys) and
   turn into int64 once one does not (`seq_array`, and `add` on overflow).
   The entry is *current* while the key's state still has that seq.  When the key changes
   again (or is removed), its old entry is found by bisecting for the old seq and its key is
   replaced by None (*marked*), O(log n).
2. Deltas mostly arrive in seq order, so the lists are mostly sorted already.  An append with a
   lower seq than the last one clears `ordered`; the next reader sorts once (timsort is
   near-linear on such runs), so a catch-up of many out-of-order states costs O(n log n) once,
   never O(n) per insert.  While the log is unordered, old entries cannot be found by
   bisection: they stay unmarked (stale) and `checked` is cleared.
3. When entries outnumber keys twice over (plus slack), the log is compacted.  If every stale
   entry is marked (`checked`), compaction only drops the None keys: C-level list filtering,
   no dict lookups (tens of ms per million entries, so an apply never stalls long).  Otherwise
   each entry is checked against the key's state (a lookup per entry, ~0.5 s per million on
   a slow VM), which happens only after out-of-order arrivals.
4. `since(w)` bisects for the first seq above w and yields each current key once, in seq
   order; it re-checks each entry against the key's state, so an unmarked stale entry or a
   duplicate (a key removed and re-added with one state) is never reported twice.
   `keys_since(w, limit)` is the same bisection for few changes, in key order and C loops.
5. A bulk load (crdt/bulk.py) gives a log its entries at once (`load`): one per key, in seq
   order, placed by seq when the seqs are dense (`by_seq`).  A load whose indexes are built
   later (a snapshot's or a restart's, `defer`) leaves its entries *pending*: ordering a
   million of them is ~0.6 s on the path to readiness, and nothing reads the log until
   another node asks this one for changes.  Meanwhile the log holds only the changes made
   since, and discards it cannot find there (old entries of the load) are kept (`missed`);
   `adopt_load` then puts the load's entries, ordered off the event loop from a copy of the
   states as loaded, before them and replays those discards.  A reader that comes first
   rebuilds the whole log from the states it passes (every key at its current seq, in
   order): the same log, built on the loop.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from itertools import compress, islice, repeat
from operator import attrgetter, eq, is_not, le, sub
from typing import Protocol, cast


class _HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


class _Gone:
    seq = -1  # no state: never equal to a logged seq


SLACK = 1024
PLACE_SPAN = 4  # seqs spanning at most this many times their number are ordered by placement
BLOCK = 1 << 15  # keys per C-level pass in `by_seq`: a few ms holding the GIL
_GONE = _Gone()
_SEQ = attrgetter("seq")


def seq_array(seqs: Iterable[int]) -> array[int]:
    """`seqs` as a compact array: uint32 while every seq fits, else int64."""
    seqs = seqs if isinstance(seqs, list | array) else list(seqs)
    try:
        return array("I", seqs)
    except OverflowError:
        return array("q", seqs)


def _locate(seqs: array[int], seq: int) -> int:
    """bisect_left(seqs, seq), starting from an interpolated guess.

    Seqs are dense and roughly uniform, so the guess is usually within a few places: a short
    gallop brackets it and a bisection finishes, touching a few cache lines instead of the
    ~20 scattered ones a full bisection of a million entries touches.
    """
    n = len(seqs)
    if n < 64:
        return bisect_left(seqs, seq)
    first, last = seqs[0], seqs[-1]
    if seq <= first:
        return 0
    if seq > last:
        return n
    i = (seq - first) * (n - 1) // (last - first)
    step = 1
    if seqs[i] < seq:  # answer in (i, n]: gallop right
        lo = i + 1
        while lo + step < n and seqs[lo + step] < seq:
            lo += step
            step <<= 1
        return bisect_left(seqs, seq, lo, min(lo + step + 1, n))
    hi = i  # answer in [0, i]: gallop left
    while hi - step >= 0 and seqs[hi - step] >= seq:
        hi -= step
        step <<= 1
    return bisect_left(seqs, seq, max(hi - step, 0), hi + 1)


LogEntries = tuple[list[str | None], "array[int]"]  # a log's keys and seqs, in seq order


def by_seq(keys: list[str], seqs: list[int]) -> LogEntries:
    """`keys` and `seqs` ordered by seq, as a log holds them (rule 5).  Seqs are nearly always
    one per key (one seq per write), so when they are dense enough (a span at most
    `PLACE_SPAN` times their number) each key is placed in a slot indexed by its seq and the
    slots read in order: C-level maps, about half the time of a sort by key function.  Seqs
    shared by several keys (a slot taken twice) fall back to the sort.  Each pass over a
    million keys is cut in blocks of `BLOCK`: a worker thread running this (a deferred log's
    entries) then holds the GIL a few ms at a time, not ~0.1 s, so the event loop it shares
    the process with answers reads meanwhile."""
    n = len(seqs)
    if all(map(le, seqs, islice(seqs, 1, None))):
        return list(keys), seq_array(seqs)
    lo, hi = min(seqs), max(seqs)
    if hi - lo < PLACE_SPAN * n:
        base = 0 if lo <= hi - lo else lo  # no subtraction when few slots would be wasted
        slots: list[str | None] = [None] * (hi - base + 1)
        put = slots.__setitem__
        for i in range(0, n, BLOCK):
            at = seqs[i : i + BLOCK]
            deque(map(put, map(sub, at, repeat(base)) if base else at, keys[i : i + BLOCK]), 0)
        placed: list[str | None] = []
        placed_seqs = array("I") if hi < 1 << 32 else array("q")
        for i in range(0, len(slots), BLOCK):
            block = slots[i : i + BLOCK]
            present = list(map(is_not, block, repeat(None)))
            placed += compress(block, present)
            placed_seqs.extend(compress(range(base + i, base + i + len(block)), present))
        if len(placed) == n:
            return placed, placed_seqs
    order = sorted(range(n), key=seqs.__getitem__)
    return list(map(keys.__getitem__, order)), seq_array(list(map(seqs.__getitem__, order)))


class ChangeLog:
    """Keys by the seq of their last change: append-only with marking, lazy sort, compaction."""

    __slots__ = ("checked", "keys", "missed", "ordered", "pending", "seqs")

    def __init__(self) -> None:
        self.seqs = array("I")
        self.keys: list[str | None] = []
        self.ordered = True  # seqs ascending
        self.checked = True  # every stale entry is marked (key None)
        self.pending = False  # a bulk load's entries are still to come (rule 5)
        self.missed: list[tuple[int, str]] = []  # discards not found while pending

    def __len__(self) -> int:
        return len(self.seqs)

    def load(self, keys: list[str], seqs: list[int]) -> None:
        """Rule 5: the entries of a bulk load into this empty log, one per key."""
        self.keys, self.seqs = by_seq(keys, seqs)
        self.ordered = self.checked = True

    def defer(self) -> None:
        """Rule 5: this empty log's bulk load gives its entries later (`adopt_load`)."""
        self.clear()
        self.pending = True

    def adopt_load(self, entries: LogEntries) -> bool:
        """Rule 5: a deferred load's entries (`by_seq` of the states as loaded) go before the
        changes made since; False if a reader rebuilt the log meanwhile."""
        if not self.pending:
            return False
        keys, seqs = entries
        tail = self.seqs
        self.ordered = self.ordered and (not tail or not seqs or seqs[-1] <= tail[0])
        if tail.typecode != seqs.typecode:  # one of them needs 8 bytes a seq
            seqs, tail = array("q", seqs), array("q", tail)
        seqs.extend(tail)
        keys.extend(self.keys)  # (the entries are the job's own lists: no copy on the loop)
        self.seqs, self.keys = seqs, keys
        self.pending = False
        missed, self.missed = self.missed, []
        for seq, key in missed:
            self.discard(seq, key)
        return True

    def _rebuild(self, states: Mapping[str, _HasSeq]) -> None:
        """Rule 5: a pending log read before its load's entries came, rebuilt from `states`."""
        self.load(list(states), list(map(_SEQ, states.values())))
        self.pending = False
        self.missed = []

    def add(self, seq: int, key: str, states: Mapping[str, _HasSeq]) -> None:
        """Record that `key` changed to a state at `seq`."""
        seqs = self.seqs
        if seqs and seq < seqs[-1]:
            self.ordered = False
        try:
            seqs.append(seq)
        except OverflowError:  # the first seq past uint32: int64 from now on
            seqs = self.seqs = array("q", seqs)
            seqs.append(seq)
        self.keys.append(key)
        if len(seqs) > 2 * len(states) + SLACK:
            self.compact(states)

    def discard(self, seq: int, key: str) -> None:
        """Mark the entry of `key` at `seq` stale (the key changed again or was removed)."""
        if not self.ordered:
            self.checked = False
            if self.pending:  # maybe an entry of the load: marked when it comes
                self.missed.append((seq, key))
            return
        seqs, keys = self.seqs, self.keys
        i = _locate(seqs, seq)
        n = len(seqs)
        while i < n and seqs[i] == seq:
            if keys[i] == key:
                keys[i] = None
                return
            i += 1
        if self.pending:  # an entry of the load: marked when it comes
            self.missed.append((seq, key))
        else:
            self.checked = False  # not found: leave the question to a full compaction

    def compact(self, states: Mapping[str, _HasSeq]) -> None:
        """Sort by seq and drop marked, stale and duplicate entries."""
        if self.pending:
            self._rebuild(states)
            return
        seqs, keys = self.seqs, self.keys
        if self.ordered and self.checked:
            keep = list(map(is_not, keys, repeat(None)))
            self.seqs = array(seqs.typecode, compress(seqs, keep))
            self.keys = list(compress(keys, keep))
            return
        if not self.ordered:
            order = sorted(range(len(seqs)), key=seqs.__getitem__)
            seqs = array(seqs.typecode, map(seqs.__getitem__, order))
            keys = list(map(keys.__getitem__, order))
            del order
        # a marked entry (None) is never a key of `states`: it reads as gone
        lookup = cast("Mapping[str | None, _HasSeq]", states)
        live = map(_SEQ, map(lookup.get, keys, repeat(_GONE)))
        valid = list(map(eq, live, seqs))
        new_keys = list(compress(keys, valid))
        new_seqs = array(seqs.typecode, compress(seqs, valid))
        if len(set(new_keys)) != len(new_keys):  # a key removed and re-added with one state
            first: dict[str | None, int] = {}
            keep = [first.setdefault(k, i) == i for i, k in enumerate(new_keys)]
            new_keys = list(compress(new_keys, keep))
            new_seqs = array(new_seqs.typecode, compress(new_seqs, keep))
        self.seqs, self.keys = new_seqs, new_keys
        self.ordered = self.checked = True

    def since(self, watermark: int, states: Mapping[str, _HasSeq]) -> Iterator[str]:
        """Every key whose current state has seq > watermark, ascending by seq, each once."""
        if not self.ordered or self.pending:
            self.compact(states)
        seqs, keys = self.seqs, self.keys
        seen: set[str] = set()
        for i in range(bisect_right(seqs, watermark), len(seqs)):
            key = keys[i]
            if key is None:
                continue
            st = states.get(key)
            if st is not None and st.seq == seqs[i] and key not in seen:
                seen.add(key)
                yield key

    def keys_since(
        self, watermark: int, states: Mapping[str, _HasSeq], limit: int
    ) -> list[str] | None:
        """The keys changed after `watermark`, sorted by key, if the log holds at most `limit`
        entries above it (else None), in C loops only: a sparse delta's keys (gossip's
        snapshot_server.py).  A stale entry names a key that changed again (listed once) or
        was removed (the caller skips keys it no longer holds)."""
        if not self.ordered or self.pending:
            self.compact(states)
        at = bisect_right(self.seqs, watermark)
        if len(self.seqs) - at > limit:
            return None
        return sorted(set(filter(None, self.keys[at:])))

    def count_above(self, watermark: int) -> int | None:
        """How many entries have a seq above `watermark` (an upper bound of the keys changed
        after it), or None when the log cannot tell by bisection (not in order, or pending)."""
        if not self.ordered or self.pending:
            return None
        return len(self.seqs) - bisect_right(self.seqs, watermark)

    def clear(self) -> None:
        self.seqs, self.keys, self.ordered, self.checked = array("I"), [], True, True
        self.pending, self.missed = False, []
