"""Sorted set as a delta-state CRDT (Almeida et al.): a reset seq plus per-member versions.

State: `reset` (seq of the last whole-key write that created this set) and, per member,
`(seq, score | None)`, where None marks a removed member (a member tombstone).  Two sets with
the same reset join member-wise, keeping the higher seq; a higher reset replaces the set whole
(see `state.join`).  `zadd`/`zrem` ship a ZSet holding only the touched members.
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList

from ..errors import ConflictingVersion
from .hashing import entry_hash

Member = tuple[int, float | None]

# A set travels whole in one frame wherever whole states do (catch-up, anti-entropy, snapshot
# chunks: gossip/wire.py's 16 MiB frame limit), with a 24-byte certificate entry per member
# when writes are signed; the origin refuses a write past these (crdt/ops.py `plan`), as it
# refuses a Bloom filter past MAX_BLOOM_BITS.  Removed members count until the set is replaced.
MAX_ZSET_MEMBERS = 200_000
MAX_ZSET_BYTES = 6 << 20  # `wire_size`: members' bytes plus MEMBER_OVERHEAD each
MEMBER_OVERHEAD = 20  # a member's version and score on the wire (gossip/chunks.py sizes by it)


class ZSet:
    """A sorted set: member bytes -> (seq, score or None for removed)."""

    __slots__ = ("_digest", "_index", "_size", "members", "reset", "seq", "written_at")

    kind = "zset"

    def __init__(
        self,
        reset: int,
        members: dict[bytes, Member] | None = None,
        seq: int | None = None,
        written_at: int = 0,
    ) -> None:
        self.reset = reset
        self.members: dict[bytes, Member] = members if members is not None else {}
        self.seq = seq if seq is not None else max([reset, *(s for s, _ in self.members.values())])
        self.written_at = written_at
        self._index: SortedList | None = None
        self._digest: int | None = None
        self._size: int | None = None

    # -- join ------------------------------------------------------------------------------

    def merge_same_reset(self, other: ZSet) -> bool:
        """Join `other` (same reset) into self in place; return True when anything changed."""
        # check everything first, so a conflicting delta leaves self untouched
        if other.seq == self.seq and other.written_at != self.written_at:
            raise ConflictingVersion(f"zset has two write times at seq {self.seq}")
        mine = self.members
        newer: list[tuple[bytes, Member | None, Member]] = []
        for member, theirs in other.members.items():
            cur = mine.get(member)
            if cur is not None:
                if theirs[0] < cur[0]:
                    continue
                if theirs[0] == cur[0]:
                    if theirs[1] != cur[1]:
                        raise ConflictingVersion(
                            f"member {member!r} has two scores at seq {cur[0]}"
                        )
                    continue
            newer.append((member, cur, theirs))
        for member, cur, theirs in newer:
            self._replace_member(member, cur, theirs)
        changed = bool(newer)
        if other.seq > self.seq:
            self.seq = other.seq
            self.written_at = other.written_at
            changed = True
        return changed

    def _replace_member(self, member: bytes, old: Member | None, new: Member) -> None:
        self.members[member] = new
        if old is None and self._size is not None:
            self._size += len(member) + MEMBER_OVERHEAD
        if self._index is not None:
            if old is not None and old[1] is not None:
                self._index.remove((old[1], member))
            if new[1] is not None:
                self._index.add((new[1], member))
        if self._digest is not None:
            if old is not None:
                self._digest ^= _member_hash(member, old[0])
            self._digest ^= _member_hash(member, new[0])

    # -- reads -----------------------------------------------------------------------------

    @property
    def index(self) -> SortedList:
        """Live members as a sorted list of (score, member), built on first use."""
        if self._index is None:
            self._index = SortedList(
                (score, m) for m, (_, score) in self.members.items() if score is not None
            )
        return self._index

    def range_by_score(self, lo: float, hi: float) -> list[tuple[bytes, float]]:
        """Live members with lo <= score <= hi, ascending by score then member."""
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            return []
        idx = self.index
        start = idx.bisect_left((lo,))
        stop = idx.bisect_left((math.nextafter(hi, math.inf),)) if hi != math.inf else len(idx)
        return [(m, s) for s, m in idx[start:stop]]

    def wire_size(self) -> int:
        """The members' bytes plus MEMBER_OVERHEAD each (removed ones included): computed once,
        then kept up to date by joins."""
        if self._size is None:
            self._size = sum(map(len, self.members)) + MEMBER_OVERHEAD * len(self.members)
        return self._size

    def live_count(self) -> int:
        return len(self.index)

    @property
    def has_removed(self) -> bool:
        return any(score is None for _, score in self.members.values())

    # -- digest ----------------------------------------------------------------------------

    def digest(self, key: str) -> int:
        """XOR of the reset entry and every member entry (removed members included)."""
        if self._digest is None:
            acc = 0
            for member, (seq, _) in self.members.items():
                acc ^= _member_hash(member, seq)
            self._digest = acc
        return self._digest ^ entry_hash(b"zr", key, self.reset)

    def copy(self) -> ZSet:
        return ZSet(self.reset, dict(self.members), self.seq, self.written_at)

    def same(self, other: ZSet) -> bool:
        return (
            self.reset == other.reset
            and self.seq == other.seq
            and self.written_at == other.written_at
            and self.members == other.members
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZSet) and self.same(other)

    # (defining __eq__ leaves __hash__ None: mutable values are not hashable)

    def __repr__(self) -> str:
        return f"ZSet(reset={self.reset}, seq={self.seq}, members={self.members!r})"


def _member_hash(member: bytes, seq: int) -> int:
    # (member, seq) is unique across keys: one seq touches one key
    return entry_hash(b"zm", "", seq, member)
