"""Incremental Merkle digest of one store: a 16-ary tree of XORs, O(depth) per update.

Theory of operation
1. A key's 32-bit placement hash picks its leaf: its top 4*DEPTH bits.  All entries of a key
   share a leaf.
2. A key contributes one 128-bit value, the XOR of its entries' hashes (`State.digest(key)`).
3. A leaf is the XOR of its keys' values; an inner node is the XOR of its 16 children, so it is
   also the XOR of every key value below it.  Updating a key XORs (old ^ new) into the DEPTH+1
   nodes on its path.  Levels are sparse dicts: a node whose XOR is 0 is simply absent.
4. Two trees with the same keys and states have the same nodes.  Different states differ in
   at least one key value and therefore (barring a 2^-128 XOR collision) in every node on that
   key's path, so anti-entropy descends only into differing subtrees.
"""

from __future__ import annotations

from .hashing import key_placement

FANOUT_BITS = 4
FANOUT = 1 << FANOUT_BITS
DEPTH = 4
LEAF_BITS = FANOUT_BITS * DEPTH


def leaf_of(key: str) -> int:
    """The leaf (0 .. FANOUT**DEPTH - 1) that holds `key`."""
    return key_placement(key) >> (32 - LEAF_BITS)


class MerkleTree:
    """Sparse 16-ary XOR tree of depth DEPTH plus the keys in each leaf."""

    __slots__ = ("leaf_keys", "levels")

    def __init__(self) -> None:
        self.levels: list[dict[int, int]] = [{} for _ in range(DEPTH + 1)]
        self.leaf_keys: dict[int, list[str]] = {}

    @property
    def root(self) -> int:
        return self.levels[0].get(0, 0)

    def toggle(self, leaf: int, value: int) -> None:
        """XOR `value` into `leaf` and every ancestor."""
        if not value:
            return
        idx = leaf
        for level in reversed(self.levels):  # not cached: origin recovery swaps level dicts in
            x = level.get(idx, 0) ^ value
            if x:
                level[idx] = x
            else:
                del level[idx]
            idx >>= FANOUT_BITS

    def add_key(self, leaf: int, key: str) -> None:
        self.leaf_keys.setdefault(leaf, []).append(key)

    def remove_key(self, leaf: int, key: str) -> None:
        keys = self.leaf_keys[leaf]
        keys.remove(key)
        if not keys:
            del self.leaf_keys[leaf]

    def node(self, level: int, index: int) -> int:
        return self.levels[level].get(index, 0)

    def children(self, level: int, index: int) -> list[int]:
        """The FANOUT digests under node `index` of `level` (level < DEPTH)."""
        below = self.levels[level + 1]
        base = index << FANOUT_BITS
        return [below.get(base + i, 0) for i in range(FANOUT)]

    def keys_in(self, leaf: int) -> list[str]:
        return self.leaf_keys.get(leaf, [])

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self.leaf_keys.clear()
