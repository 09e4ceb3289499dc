"""The Merkle tree gives the same nodes and leaf keys whether its leaf level is sparse or flat."""

from __future__ import annotations

import random
from functools import reduce
from operator import xor

from edgekv.crdt import Register
from edgekv.crdt.merkle import DEPTH, FANOUT, FANOUT_BITS, FLAT_FROM, MerkleTree, leaf_of
from edgekv.crdt.treebuild import TreeBuilder, TreeLog, build_tree


def _reference(keys: dict[str, int]) -> tuple[list[dict[int, int]], dict[int, list[str]]]:
    """Non-zero nodes per level and sorted keys per leaf, computed from scratch."""
    by_leaf: dict[int, list[str]] = {}
    for key in keys:
        by_leaf.setdefault(leaf_of(key), []).append(key)
    level = {lf: reduce(xor, (keys[k] for k in ks)) for lf, ks in by_leaf.items()}
    levels = [{i: v for i, v in level.items() if v}]
    for _ in range(DEPTH):
        up: dict[int, int] = {}
        for i, v in levels[0].items():
            up[i >> FANOUT_BITS] = up.get(i >> FANOUT_BITS, 0) ^ v
        levels.insert(0, {i: v for i, v in up.items() if v})
    return levels, {lf: sorted(ks) for lf, ks in by_leaf.items()}


def _check(tree: MerkleTree, keys: dict[str, int]) -> None:
    levels, by_leaf = _reference(keys)
    assert tree.nodes() == levels
    assert {lf: sorted(ks) for lf, ks in tree.leaf_map().items()} == by_leaf
    assert tree.root == levels[0].get(0, 0)
    rng = random.Random(len(keys))
    for leaf in [*rng.sample(sorted(by_leaf), min(50, len(by_leaf))), 0, FANOUT**DEPTH - 1]:
        assert sorted(tree.keys_in(leaf)) == by_leaf.get(leaf, [])
        assert tree.node(DEPTH, leaf) == levels[DEPTH].get(leaf, 0)
        parent = leaf >> FANOUT_BITS
        assert tree.children(DEPTH - 1, parent) == [
            levels[DEPTH].get((parent << FANOUT_BITS) + i, 0) for i in range(FANOUT)
        ]
        assert tree.children(0, 0) == [levels[1].get(i, 0) for i in range(FANOUT)]


def test_a_growing_tree_turns_flat_and_keeps_every_node_and_key() -> None:
    rng = random.Random(7)
    tree = MerkleTree()
    keys: dict[str, int] = {}
    n = FLAT_FROM * 3 // 2
    for i in range(n):
        key, digest = f"key:{i:08d}", rng.getrandbits(128) | 1
        keys[key] = digest
        tree.add_key(leaf_of(key), key)
        tree.toggle(leaf_of(key), digest)
        if i == 2000:
            assert not tree.flat  # a small store keeps the sparse dicts
            _check(tree, keys)
    assert tree.flat
    _check(tree, keys)
    for key in rng.sample(sorted(keys), n // 2):  # removals empty some leaves again
        tree.toggle(leaf_of(key), keys.pop(key))
        tree.remove_key(leaf_of(key), key)
    _check(tree, keys)
    tree.clear()
    assert not tree.flat and tree.root == 0 and tree.leaf_map() == {}


def test_built_trees_equal_incremental_ones_small_and_large() -> None:
    for n in (300, FLAT_FROM + 5000):
        states = {f"k{i}": Register(i + 1, 0, b"v", None) for i in range(n)}
        tree = MerkleTree()
        for key, st in states.items():
            tree.add_key(leaf_of(key), key)
            tree.toggle(leaf_of(key), st.digest(key))
        built = build_tree(states)
        small = TreeBuilder(big=False)  # a builder told nothing about the size
        small.add(list(states), list(states.values()))
        for other in (built, small.finish()):
            assert other.flat == tree.flat == (n > FLAT_FROM)
            assert other.nodes() == tree.nodes()
            assert {lf: sorted(ks) for lf, ks in other.leaf_map().items()} == {
                lf: sorted(ks) for lf, ks in tree.leaf_map().items()
            }


def test_changes_logged_during_a_deferred_build_replay_onto_a_flat_tree() -> None:
    states = {f"k{i}": Register(i + 1, 0, b"v", None) for i in range(FLAT_FROM + 5000)}
    tree = build_tree(states)  # built from a copy, as a TreeJob does
    assert tree.flat
    log = TreeLog()
    seq = len(states) + 1
    for i in range(0, len(states), 97):  # overwrites, removals and new keys meanwhile
        key = f"k{i}"
        leaf = leaf_of(key)
        log.toggle(leaf, states[key].digest(key))
        if i % 2:
            del states[key]
            log.remove_key(leaf, key)
        else:
            states[key] = Register(seq, 0, b"w", None)
            log.toggle(leaf, states[key].digest(key))
        new = f"new{i}"
        states[new] = Register(seq + 1, 0, b"n", None)
        log.add_key(leaf_of(new), new)
        log.toggle(leaf_of(new), states[new].digest(new))
        seq += 2
    log.replay(tree)
    fresh = build_tree(states)
    assert tree.nodes() == fresh.nodes()
    assert {lf: sorted(ks) for lf, ks in tree.leaf_map().items()} == {
        lf: sorted(ks) for lf, ks in fresh.leaf_map().items()
    }
