"""Build a store's Merkle tree from its finished states dict in one pass (for bulk loads).

Why: `Replica.apply` keeps the tree up to date one key at a time (a path of XORs per write).
A loading replica has all its states at once, and hashing a million keys one Python call at a
time would take seconds; here every step is a C-level map over a column.

Theory of operation
1. Placement and digest per key.  Registers are the bulk of any store, so their placement
   (CRC-32 with the multiplicative finaliser of `hashing.key_placement`) and digest (BLAKE2b
   of tag, key length, key, seq) are computed inline from one encoding of the key (given by
   a caller that has it), the seq's 8 bytes sliced straight from the register's header, each
   key's hasher a copy of one empty BLAKE2b-128 fed in three updates (about half the cost of
   concatenating and hashing with keyword arguments per key).  At import, `FAST_HASHES` checks on sample keys that this
   equals `leaf_of` and `Register.digest`; if the hashing ever changes, the builder calls
   those functions instead (slower, never wrong).  Other kinds give their own digest.
2. Leaves.  A large store groups keys and digests per leaf by appending each to its leaf's
   list (C-level), then XORs each leaf's digests with `reduce`; a small one uses a dict loop
   (65,536 lists would cost more than they save).  Inner levels fold bottom-up.
3. Chunks.  The work proceeds in chunks of `CHUNK` keys, so a build running in a worker thread
   (an edge restarting with a million keys builds its trees while it already serves reads)
   hands the GIL back between chunks instead of holding it for a whole-column pass.  A map
   over a chunk is one C call that holds the GIL throughout: at 65,536 keys the digests took
   four calls of ~18 ms, and every read on the event loop waited for them (~0.1-0.2 s for a
   /status right after an install); at 8,192 a call holds it ~2 ms, and the build of 1M keys
   took 2.72 s instead of 3.12 s (its columns stay in cache).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from functools import reduce
from hashlib import blake2b
from itertools import compress, repeat
from operator import and_, is_, mul, not_, rshift, xor
from typing import Any, Literal, cast
from zlib import crc32

from .merkle import DEPTH, FANOUT_BITS, FLAT_FROM, LEAF_BITS, MerkleTree, leaf_of
from .register import SEQ_BYTES, Register
from .state import State

__all__ = ["CHUNK", "FAST_HASHES", "TreeBuilder", "TreeLog", "build_tree"]

CHUNK = 1 << 13
_PLACEMENT_MUL = 0x9E3779B1
_LEAF_SHIFT = 32 - LEAF_BITS
_LEAVES = 1 << LEAF_BITS
_BUCKETS_FROM = _LEAVES // 4  # from this many keys, group by leaf through per-leaf lists
_BIG: Literal["big"] = "big"


def _fast_leaf_and_digest(key: str, seq: int) -> tuple[int, int]:
    """One key through the column functions `_hashes` uses (so the check below tests them)."""
    encoded = [key.encode()]
    return _leaves(encoded)[0], _register_digests(encoded, [seq.to_bytes(8, _BIG)])[0]


def _fast_hashes_agree() -> bool:
    """True when the inlined placement and register digest (rule 1) equal the crdt functions."""
    for key, seq in (("probe", 1), ("k\u00e9y:42", 123_456_789), ("x" * 300, (1 << 62) + 5)):
        if _fast_leaf_and_digest(key, seq) != (
            leaf_of(key),
            Register(seq, 0, b"", None).digest(key),
        ):
            return False
    return True


def build_tree(states: Mapping[str, State], chunk: int = CHUNK) -> MerkleTree:
    """The Merkle tree `apply` would have built for `states` (any insertion order)."""
    builder = TreeBuilder(big=len(states) >= _BUCKETS_FROM)
    keys = list(states)
    vals = list(states.values())
    for start in range(0, len(keys), chunk):
        builder.add(keys[start : start + chunk], vals[start : start + chunk])
    return builder.finish()


class TreeBuilder:
    """A Merkle tree built from batches of (key, state) columns, then finished once.

    `build_tree` feeds it a finished dict chunk by chunk; a snapshot receiver feeds it each
    chunk as it arrives, so the hashing overlaps the transfer, and finishes it in a worker
    thread.  Every key must be new (given once).  `big` (expected keys >= a quarter of the
    leaves) groups per leaf through per-leaf lists, at `finish` (rule 2); a builder is small
    until told otherwise."""

    __slots__ = ("_big", "_columns", "_keys", "_leaves", "_tree", "keys")

    def __init__(self, *, big: bool = False) -> None:
        self._tree = MerkleTree()
        self._big = big
        self._columns: list[tuple[list[int], list[str], list[int]]] = []
        self._leaves: dict[int, int] = {}
        self._keys: dict[int, list[str]] = {}
        self.keys = 0

    def add(self, ks: list[str], vs: list[State], encoded: list[bytes] | None = None) -> None:
        """Hash one batch of keys and their states (parallel lists); `encoded`, if given, is
        each key's UTF-8 encoding (a caller that already has it saves encoding them again)."""
        self.keys += len(ks)
        leaf_of_key, digests = _hashes(ks, vs, encoded)
        if self._big:  # grouped per leaf at `finish`
            self._columns.append((leaf_of_key, ks, digests))
            return
        leaves, leaf_keys = self._leaves, self._keys
        get = leaves.get
        for key, leaf, digest in zip(ks, leaf_of_key, digests, strict=True):
            leaves[leaf] = get(leaf, 0) ^ digest
            lk = leaf_keys.get(leaf)
            if lk is None:
                leaf_keys[leaf] = [key]
            else:
                lk.append(key)

    def finish(self) -> MerkleTree:
        """The tree of every key added (the builder is spent)."""
        tree = self._tree
        if self._big:
            key_lists: list[list[str]] = [[] for _ in range(_LEAVES)]
            digest_lists: list[list[int]] = [[] for _ in range(_LEAVES)]
            for leaf_of_key, ks, digests in self._columns:  # C-level: each to its leaf's list
                deque(map(list.append, map(key_lists.__getitem__, leaf_of_key), ks), maxlen=0)
                deque(
                    map(list.append, map(digest_lists.__getitem__, leaf_of_key), digests), maxlen=0
                )
            self._columns = []
            tree.leaf_keys = [ks or None for ks in key_lists]  # flat (merkle.MerkleTree)
            del key_lists
            tree.leaves = [reduce(xor, ds) if ds else 0 for ds in digest_lists]
            leaves = {i: v for i, v in enumerate(tree.leaves) if v}
        else:
            leaves = {i: v for i, v in self._leaves.items() if v}
            tree.leaves = leaves
            tree.leaf_keys = self._keys
            if len(tree.leaf_keys) >= FLAT_FROM:
                tree.flatten()
        _fold_levels(tree, leaves)
        return tree


def _hashes(
    keys: list[str], vals: list[State], encoded: list[bytes] | None = None
) -> tuple[list[int], list[int]]:
    """(leaf, digest) columns for one chunk of keys and their states."""
    if not FAST_HASHES:
        return list(map(leaf_of, keys)), [st.digest(k) for k, st in zip(keys, vals, strict=True)]
    is_reg = list(map(is_, map(type, vals), repeat(Register)))
    everything_plain = all(is_reg)
    regs = vals if everything_plain else list(compress(vals, is_reg))
    if encoded is None:
        encoded = list(map(str.encode, keys))
    leaf_of_key = _leaves(encoded)
    raw = cast("list[Register]", regs)  # compress() by exact type above
    seqs = list(map(SEQ_BYTES, raw))  # big-endian, as the digest wants them
    if everything_plain:
        return leaf_of_key, _register_digests(encoded, seqs)
    digests = [0] * len(keys)
    reg_at = list(compress(range(len(keys)), is_reg))
    reg_digests = _register_digests(list(map(encoded.__getitem__, reg_at)), seqs)
    for i, d in zip(reg_at, reg_digests, strict=True):
        digests[i] = d
    for i in compress(range(len(keys)), map(not_, is_reg)):
        digests[i] = vals[i].digest(keys[i])
    return leaf_of_key, digests


def _leaves(encoded: list[bytes]) -> list[int]:
    """`leaf_of` of each encoded key, as C-level maps: the top bits of the CRC-32 placement."""
    placements = map(
        and_, map(mul, map(crc32, encoded), repeat(_PLACEMENT_MUL)), repeat(0xFFFFFFFF)
    )
    return list(map(rshift, placements, repeat(_LEAF_SHIFT)))


class _Heads(dict[int, bytes]):
    """key length -> b"r" + its 4-byte big-endian form, filled on first use (C-level hits)."""

    def __missing__(self, n: int) -> bytes:
        head = self[n] = b"r" + n.to_bytes(4, _BIG)
        return head


_HEADS = _Heads()
_BLAKE16_EMPTY = blake2b(digest_size=16)  # copied per key: cheaper than keyword arguments
_copy, _update, _digest = blake2b.copy, blake2b.update, blake2b.digest


def _register_digests(encoded: list[bytes], seqs: list[bytes]) -> list[int]:
    """`Register.digest` of each (encoded key, 8-byte big-endian seq), as C-level maps:
    BLAKE2b-128 of b"r" + 4-byte key length + key + seq, fed to one hasher per key in three
    updates (no concatenated copy of the key)."""
    hashers = list(map(_copy, repeat(_BLAKE16_EMPTY, len(encoded))))
    deque(map(_update, hashers, map(_HEADS.__getitem__, map(len, encoded))), maxlen=0)
    deque(map(_update, hashers, encoded), maxlen=0)
    deque(map(_update, hashers, seqs), maxlen=0)
    return list(map(int.from_bytes, map(_digest, hashers), repeat(_BIG)))


def _fold_levels(tree: MerkleTree, leaves: dict[int, int]) -> None:
    """Set the tree's inner levels from its non-zero `leaves`: each node the XOR of its
    children."""
    levels = tree.levels
    level = leaves
    for depth in range(DEPTH - 1, -1, -1):
        up: dict[int, int] = {}
        for i, v in level.items():
            p = i >> FANOUT_BITS
            up[p] = up.get(p, 0) ^ v
        level = {i: v for i, v in up.items() if v}
        levels[depth] = level


FAST_HASHES = _fast_hashes_agree()  # last: it runs the column functions defined above


class TreeLog:
    """Stands in for a store's Merkle tree while it is built elsewhere from a copy of the
    states (`Replica.defer_trees`): records each tree change made since the copy, in order,
    and `replay`s them on the built tree (toggles are XORs, key adds and removes are sets, so
    the result is the tree the changes would have left)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[int, int, Any]] = []

    def toggle(self, leaf: int, value: int) -> None:
        self.ops.append((0, leaf, value))

    def add_key(self, leaf: int, key: str) -> None:
        self.ops.append((1, leaf, key))

    def remove_key(self, leaf: int, key: str) -> None:
        self.ops.append((2, leaf, key))

    def replay(self, tree: MerkleTree) -> None:
        do = (tree.toggle, tree.add_key, tree.remove_key)
        for op, leaf, arg in self.ops:
            do[op](leaf, arg)
        self.ops = []
