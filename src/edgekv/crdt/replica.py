"""A replica: store -> key -> state, with Merkle digests, a change index and a watermark.

Theory of operation
1. Every state change goes through `Replica.apply` (one key) or `apply_batch` (many keys plus the
   seq ranges they cover).  `apply` joins the delta into the key's state and keeps three indexes
   in step: the store's Merkle tree (O(depth) XORs), the sorted key list (for `scan`), and the
   change log, keys by the seq of their last change (for `changes_since`, O(log n + changes);
   see changelog.py).  An older delta is rejected before any hashing.  An empty replica can
   instead be filled in bulk (crdt/bulk.py: each index built once, same result).
2. Store metadata lives in the reserved store "" as registers: a live register at seq s means
   the store was (re)created at s, a tombstone that it was dropped at s.  Either sets the
   store's epoch to s; keys whose reset is below the epoch are removed, and later-arriving
   deltas below it are ignored.  So drop/recreate is ordered by seq like everything else.
3. `covered` holds the seqs whose effect this replica has (SeqRanges); `watermark` is its
   contiguous prefix.  A sender claims a range only when its message carries the effect of
   every seq in it (directly or through a newer state of the same key).
4. Tombstones (and expired values) are purged only at or below a horizon every live node has
   passed (`purge`).  `purged` remembers the highest horizon used: a delta for a key this
   replica lacks whose reset is at or below it is dead (it was deleted and purged here), so it
   is ignored rather than resurrected; anti-entropy uses the same rule the other way.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import NamedTuple

from sortedcontainers import SortedList

from ..errors import WrongKind
from .bloom import Bloom
from .changelog import ChangeLog, LogEntries
from .glob import compile_glob, literal_prefix
from .hashing import root_hash
from .merkle import MerkleTree, leaf_of
from .proofs import ProofStore, states_seqs
from .register import HAS_EXPIRY, TOMBSTONE, Register, register_digest, unpack_head
from .seqranges import SeqRanges
from .state import Delta, State, is_dead, merge
from .treebuild import TreeLog, build_tree
from .version import Entry, Version
from .zset import ZSet

META = ""  # reserved store holding store metadata; not a valid user store name


class Change(NamedTuple):
    """One applied change: the key's new state, or None when the key was removed."""

    store: str
    key: str
    state: State | None


class StoreReplica:
    """One store's keys, states and indexes.  Reads take `now_ms` so they stay pure."""

    __slots__ = (
        "_deferred",
        "_tree",
        "changes",
        "epoch",
        "keys",
        "live",
        "name",
        "states",
        "tombstones",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = 0
        self.live = name == META
        self.states: dict[str, State] = {}
        self.keys = SortedList()
        self.changes = ChangeLog()
        self._tree: MerkleTree | None = MerkleTree()  # None: not built yet (see `tree`)
        self._deferred: TreeLog | None = None  # its changes while built elsewhere (defer_trees)
        self.tombstones: set[str] = set()

    def __len__(self) -> int:
        return len(self.states)

    @property
    def tree(self) -> MerkleTree:
        """The store's Merkle tree.  A bulk load may leave it unbuilt (to serve reads sooner);
        it is then built from the states on first use, or installed by `Replica.install_trees`."""
        tree = self._tree
        if tree is None:
            tree = self._tree = build_tree(self.states)
            self._deferred = None  # built from every change: a tree built elsewhere is dropped
        return tree

    def _tree_or_log(self) -> MerkleTree | TreeLog:
        tree = self._tree
        if tree is None:
            return self._deferred if self._deferred is not None else self.tree
        return tree

    def states_copy(self) -> dict[str, State]:
        """A copy of `states` no later change touches (the rare kinds joined in place copied)."""
        states = dict(self.states)
        if not set(map(type, states.values())) <= {Register}:
            for k, st in states.items():
                if st.__class__ is not Register:
                    states[k] = st.copy()
        return states

    @property
    def tree_built(self) -> bool:
        return self._tree is not None

    @property
    def digest(self) -> int:
        return self.tree.root

    # -- mutation (called by Replica) ----------------------------------------------------------

    def _put(self, key: str, old: State | None, old_seq: int, new: State, old_digest: int) -> None:
        """Index `new` as key's state; `old_seq`/`old_digest` are old's before any in-place join."""
        leaf = leaf_of(key)
        tree = self._tree_or_log()  # before the states change: a pending tree is built from the old
        states = self.states
        states[key] = new
        if old is None:
            self.keys.add(key)
            tree.add_key(leaf, key)
        else:
            self.changes.discard(old_seq, key)
        if new.__class__ is Register:
            flags, seq, _ = unpack_head(new)
            self.changes.add(seq, key, states)
            tree.toggle(leaf, old_digest ^ register_digest(key, seq))
            if flags & TOMBSTONE:
                self.tombstones.add(key)
                return
        else:
            self.changes.add(new.seq, key, states)
            tree.toggle(leaf, old_digest ^ new.digest(key))
        if old is not None and old.__class__ is Register and old.is_tombstone:
            self.tombstones.discard(key)

    def _remove(self, key: str) -> State | None:
        old = self.states.get(key)
        if old is None:
            return None
        leaf = leaf_of(key)
        tree = self._tree_or_log()
        tree.toggle(leaf, old.digest(key))
        tree.remove_key(leaf, key)
        self.changes.discard(old.seq, key)
        del self.states[key]
        self.keys.remove(key)
        self.tombstones.discard(key)
        return old

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str, now_ms: int) -> bytes | None:
        st = self.states.get(key)
        if st is None:
            return None
        if type(st) is not Register:
            raise WrongKind(f"key {key!r} holds a {st.kind} value; get() reads plain values")
        return st.read(now_ms)

    def get_entry(self, key: str, now_ms: int) -> Entry | None:
        st = self.states.get(key)
        if st is None:
            return None
        if type(st) is not Register:
            raise WrongKind(f"key {key!r} holds a {st.kind} value; get_entry() reads plain values")
        if not st.live(now_ms):
            return None
        assert st.value is not None
        return Entry(st.value, Version(st.seq, st.written_at), st.expiry)

    def scan(self, pattern: str, now_ms: int, limit: int | None = None) -> list[str]:
        """Live keys matching the glob `pattern`, in key order.

        The literal prefix of the pattern bounds the range of the sorted key index (a slice,
        found by bisection); a pattern that is just `prefix*` needs no per-key matching.
        """
        prefix = literal_prefix(pattern)
        keys = self.keys
        if not prefix:
            candidates = keys
        else:
            lo = keys.bisect_left(prefix)
            last = prefix[-1]
            if last != "\U0010ffff":
                hi = keys.bisect_left(prefix[:-1] + chr(ord(last) + 1))
            else:  # no successor string: walk to the end of the prefix
                hi = lo
                while hi < len(keys) and keys[hi].startswith(prefix):
                    hi += 1
            candidates = keys[lo:hi] if (lo, hi) != (0, len(keys)) else keys
        match = None if _is_prefix_star(pattern, prefix) else compile_glob(pattern)
        states = self.states
        out: list[str] = []
        for key in candidates:
            if match is not None and match(key) is None:
                continue
            st = states[key]
            if st.__class__ is Register and st[0] and not st.live(now_ms):
                continue
            out.append(key)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _kind(self, key: str, kind: type[State], now_ms: int, method: str) -> State | None:
        st = self.states.get(key)
        if st is None or is_dead(st, now_ms):
            return None
        if not isinstance(st, kind):
            raise WrongKind(f"key {key!r} holds a {st.kind} value; {method}() reads {kind.kind}")
        return st

    def zrange_by_score(
        self, key: str, lo: float, hi: float, now_ms: int
    ) -> list[tuple[bytes, float]]:
        st = self._kind(key, ZSet, now_ms, "zrange_by_score")
        return st.range_by_score(lo, hi) if isinstance(st, ZSet) else []

    def zscan(self, key: str, pattern: str | bytes, now_ms: int) -> list[tuple[bytes, float]]:
        st = self._kind(key, ZSet, now_ms, "zscan")
        if not isinstance(st, ZSet):
            return []
        match = compile_glob(pattern.encode() if isinstance(pattern, str) else pattern)
        return [(m, s) for s, m in st.index if match(m)]

    def bf_exists(self, key: str, item: bytes, now_ms: int) -> bool:
        st = self._kind(key, Bloom, now_ms, "bf_exists")
        return isinstance(st, Bloom) and st.contains(item)


def _is_prefix_star(pattern: str, prefix: str) -> bool:
    """True when `pattern` is exactly its literal prefix plus one `*` (or is all stars)."""
    return pattern.rstrip("*") == prefix and "\\" not in pattern and pattern.endswith("*")


class Replica:
    """All stores of one node, their digests, change index and watermark."""

    def __init__(self) -> None:
        self.stores: dict[str, StoreReplica] = {META: StoreReplica(META)}
        self.covered = SeqRanges()
        self.purged = 0  # highest horizon purged at
        # highest horizon at which a purge removed something (a loaded replica's history is
        # unknown: its purge mark), so a delta from a lower seq would miss a deletion
        self.removed_high = 0
        self._expiring: list[tuple[int, int, str, str]] = []  # (expiry, seq, store, key)
        self.proofs: ProofStore | None = None  # the origin's certificates (crdt/proofs.py)

    def use_proofs(self, proofs: ProofStore) -> ProofStore:
        """Keep `proofs` with this replica: states received are verified against it, states
        sent carry its certificates, and it drops those no live state needs."""
        self.proofs = proofs
        proofs.live_seqs = self.proof_seqs
        return proofs

    def proof_seqs(self) -> Iterator[int]:
        """Every seq some held state's proof needs (see `ProofStore.sweep`); column-wise per
        store (`states_seqs`)."""
        return chain.from_iterable(states_seqs(sr.states.values()) for sr in self.stores.values())

    # -- stores ----------------------------------------------------------------------------------

    def store(self, name: str) -> StoreReplica:
        """The store's replica, created empty (not live) if unknown."""
        st = self.stores.get(name)
        if st is None:
            st = self.stores[name] = StoreReplica(name)
        return st

    def has_store(self, name: str) -> bool:
        st = self.stores.get(name)
        return st is not None and st.live and name != META

    def store_names(self) -> list[str]:
        return sorted(n for n, s in self.stores.items() if s.live and n != META)

    @property
    def watermark(self) -> int:
        return self.covered.watermark

    # -- apply -----------------------------------------------------------------------------------

    def apply(self, store: str, key: str, delta: Delta) -> State | None:
        """Join `delta` into store/key.  Returns the new state if anything changed, else None."""
        sr = self.stores.get(store)
        if sr is None:
            sr = self.store(store)
        reset = delta.reset
        if reset < sr.epoch:
            return None
        old = sr.states.get(key)
        if old is None:
            if reset <= self.purged:
                return None  # deleted and purged here: never resurrect
            new = merge(None, delta)
            old_seq = old_digest = 0
        elif old.__class__ is Register:  # immutable: hash it only if it is replaced
            old_seq = old.reset
            if reset < old_seq:
                return None  # an older write: the common duplicate in gossip, rejected unhashed
            if reset > old_seq and delta.__class__ is Register:
                new = delta  # the common overwrite; registers are immutable, so no copy
            else:
                new = merge(old, delta)
                if new is None:
                    return None
            old_digest = register_digest(key, old_seq)
        else:  # zset and bloom join in place: take the seq and digest first
            if reset < old.reset:
                return None
            if sr._deferred is None:  # a pending tree must be built before old changes in place
                sr.tree  # noqa: B018
            old_seq = old.seq
            old_digest = old.digest(key)
            new = merge(old, delta)
        if new is None:
            return None
        sr._put(key, old, old_seq, new, old_digest)
        if new.__class__ is Register and new[0] & HAS_EXPIRY and new is not old:
            heapq.heappush(self._expiring, (new.expiry or 0, new.seq, store, key))
        if store == META:
            self._meta_changed(key, new)
        return new

    def apply_batch(
        self, items: Iterable[tuple[str, str, Delta]], covers: Iterable[tuple[int, int]] = ()
    ) -> list[Change]:
        """Apply many deltas, then mark `covers` as applied.  Returns what changed."""
        out = []
        for store, key, delta in items:
            new = self.apply(store, key, delta)
            if new is not None:
                out.append(Change(store, key, new))
        self.covered.update(covers)
        return out

    def remove(self, store: str, key: str) -> State | None:
        """Drop a key entirely (purge, or anti-entropy found it dead).  Returns the old state."""
        sr = self.stores.get(store)
        return sr._remove(key) if sr is not None else None

    def _meta_changed(self, name: str, meta: State) -> None:
        sr = self.store(name)
        sr.epoch = meta.seq
        sr.live = isinstance(meta, Register) and meta.value is not None
        dead = [k for k, st in sr.states.items() if st.reset < sr.epoch]
        for k in dead:
            sr._remove(k)

    def build_pending_trees(self) -> list[tuple[StoreReplica, MerkleTree]]:
        """Build, without installing, the trees a bulk load left unbuilt (`trees=False`).

        Meant for a worker thread while the owning thread serves reads; pass the result to
        `install_trees` on the owning thread.  A store whose states change meanwhile builds
        its own tree first (see `StoreReplica.tree`), so a snapshot torn by such a change is
        never installed; the build of that store may then fail here, which is harmless.
        """
        built = []
        for sr in list(self.stores.values()):
            if sr._tree is None:
                try:
                    built.append((sr, build_tree(sr.states)))
                except Exception:  # states changed mid-build: that store builds its own
                    continue
        return built

    def defer_trees(self) -> list[tuple[StoreReplica, dict[str, State]]]:
        """For each store whose tree is pending: a copy of its states to build the tree from
        elsewhere (a worker thread), and from now on a log of its tree changes instead of a
        build on first change; `install_trees` replays the log on the built tree.  A change
        log still pending takes its entries from the same copy (`install_logs`)."""
        out = []
        for sr in self.stores.values():
            if sr._tree is None and sr._deferred is None:
                sr._deferred = TreeLog()
                if sr.changes.pending:  # its load's entries to come are the copy's
                    sr.changes.defer()
                out.append((sr, sr.states_copy()))
        return out

    def install_trees(self, built: list[tuple[StoreReplica, MerkleTree]]) -> int:
        """Install trees from `build_pending_trees` (or built from `defer_trees` copies, the
        changes logged since replayed) where none was built since; returns how many."""
        n = 0
        for sr, tree in built:
            if sr._tree is None:  # untouched since the load, or its changes logged
                if sr._deferred is not None:
                    sr._deferred.replay(tree)
                    sr._deferred = None
                sr._tree = tree
                n += 1
        return n

    def install_logs(self, built: list[tuple[StoreReplica, LogEntries]]) -> int:
        """Give change logs a bulk load left pending the entries built from the copies
        `defer_trees` made (`bulk.log_entries`, off the loop: changelog.py rule 5), where no
        reader rebuilt them since; returns how many took them."""
        return sum(sr.changes.adopt_load(entries) for sr, entries in built)

    @property
    def trees_pending(self) -> bool:
        return any(sr._tree is None for sr in self.stores.values())

    # -- digests and change index ------------------------------------------------------------------

    def roots(self) -> dict[str, int]:
        """Per-store Merkle roots (non-empty stores only)."""
        return {name: sr.tree.root for name, sr in self.stores.items() if sr.tree.root}

    @property
    def root(self) -> int:
        """One 128-bit digest of the whole replica: equal exactly when all stores are equal."""
        return root_hash(list(self.roots().items()))

    def changes_since(self, watermark: int) -> Iterator[tuple[str, str, State]]:
        """Every key whose state changed after seq `watermark` (store metadata first)."""
        for name in sorted(self.stores):
            sr = self.stores[name]
            states = sr.states
            for key in sr.changes.since(watermark, states):
                yield name, key, states[key]

    def iter_states(self) -> Iterator[tuple[str, str, State]]:
        for name in sorted(self.stores):
            for key, st in self.stores[name].states.items():
                yield name, key, st

    def state(self, store: str, key: str) -> State | None:
        sr = self.stores.get(store)
        return sr.states.get(key) if sr is not None else None

    def __len__(self) -> int:
        return sum(len(sr) for name, sr in self.stores.items() if name != META)

    # -- garbage collection ------------------------------------------------------------------------

    def purge(self, horizon: int, now_ms: int) -> list[Change]:
        """Remove tombstones and expired values written at or below `horizon`.

        `horizon` must be a seq every live node has applied (causal stability).
        """
        horizon = min(horizon, self.watermark)
        removed: list[Change] = []
        for name, sr in self.stores.items():
            if name == META:
                continue
            for key in [k for k in sr.tombstones if sr.states[k].seq <= horizon]:
                sr._remove(key)
                removed.append(Change(name, key, None))
        keep = []
        while self._expiring and self._expiring[0][0] <= now_ms:
            expiry, seq, store, key = heapq.heappop(self._expiring)
            st = self.state(store, key)
            if not (isinstance(st, Register) and st.seq == seq):
                continue  # superseded
            if seq <= horizon:
                self.stores[store]._remove(key)
                removed.append(Change(store, key, None))
            else:
                keep.append((expiry, seq, store, key))
        for item in keep:
            heapq.heappush(self._expiring, item)
        if removed or horizon > self.purged:
            self.purged = max(self.purged, horizon)
        if removed:
            self.removed_high = max(self.removed_high, horizon)
        return removed

    def is_dead_elsewhere(self, state: State, their_purged: int) -> bool:
        """A key a peer lacks is dead there when its reset is at or below the peer's purge mark."""
        return state.reset <= their_purged
