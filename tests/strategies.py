"""Hypothesis strategies for CRDT values and origin write histories (shared by the test suite).

Generated states are *consistent*: everything written at one seq is a function of that seq (and
of the member, for sorted sets), as it is in any history the origin produces, where one seq is
one write.  The kind of a whole-key write is a function of its reset, so states of different
kinds never share a reset.  `histories()` runs a small simulated origin (a sequencer, `ops.plan`
and a `Replica`) over generated operations and returns the deltas it committed, in seq order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from edgekv.crdt import (
    META,
    BfAdd,
    Bloom,
    BloomDelta,
    Delete,
    Delta,
    Op,
    Put,
    Register,
    Replica,
    State,
    ZAdd,
    ZRem,
    ZSet,
    plan,
    validate_op,
)
from edgekv.crdt.codec import encode_delta
from edgekv.errors import WrongKind

MEMBERS = [b"a", b"b", b"c", b"d", b"\x00", b"\xff"]
T0 = 1_700_000_000_000  # ms


def written_at_of(seq: int) -> int:
    """The origin's wall clock when it stamped `seq` (1 ms per seq)."""
    return T0 + seq


# -- consistent states for the join laws -----------------------------------------------------------


def _score(member: bytes, mseq: int) -> float | None:
    code = (member[0] if member else 0) + 3 * mseq
    if code % 4 == 0:
        return None  # removed
    return [float("-inf"), -1.5, 0.0, 2.0, 2.0, 7.25, float("inf")][code % 7]


def register_at(seq: int) -> Register:
    value = None if seq % 5 == 0 else b"v%d" % seq
    expiry = written_at_of(seq) + 50 if value is not None and seq % 3 == 0 else None
    return Register(seq, written_at_of(seq), value, expiry)


def bloom_shape(reset: int) -> tuple[int, int]:
    return 64 + 8 * (reset % 4), 1 + reset % 3


@st.composite
def zsets(draw: st.DrawFn, reset: int) -> ZSet:
    mseqs = draw(
        st.dictionaries(st.sampled_from(MEMBERS), st.integers(reset, reset + 12), max_size=5)
    )
    members = {m: (s, _score(m, s)) for m, s in mseqs.items()}
    seq = max([reset, *mseqs.values()])
    return ZSet(reset, members, seq, written_at_of(seq))


@st.composite
def blooms(draw: st.DrawFn, reset: int) -> Bloom | BloomDelta:
    m, k = bloom_shape(reset)
    seq = draw(st.integers(reset, reset + 12))
    positions = draw(st.frozensets(st.integers(0, m - 1), max_size=12))
    if draw(st.booleans()):
        return BloomDelta(reset, m, k, positions, seq, written_at_of(seq))
    bloom = Bloom(reset, m, k, seq=seq, written_at=written_at_of(seq))
    for p in positions:
        bloom.bits[p >> 3] |= 1 << (p & 7)
    return bloom


def kind_of_reset(reset: int) -> str:
    return ("bytes", "zset", "bloom")[reset % 3]


@st.composite
def deltas(draw: st.DrawFn, resets: st.SearchStrategy[int] | None = None) -> Delta:
    """A state or delta of any kind; its kind is a function of its reset."""
    reset = draw(resets if resets is not None else st.integers(1, 9))
    kind = kind_of_reset(reset)
    if kind == "bytes":
        return register_at(reset)
    if kind == "zset":
        return draw(zsets(reset))
    return draw(blooms(reset))


def canon(x: Delta | State | None) -> Any:
    """A comparable, hashable form of a state or delta (zset members sorted)."""
    if x is None:
        return None
    enc = encode_delta(x)
    if isinstance(x, ZSet):
        enc[4] = sorted((m, s, sc) for m, s, sc in enc[4])
    if isinstance(x, BloomDelta):
        enc[6] = tuple(enc[6])
    return tuple(tuple(e) if isinstance(e, list) else e for e in enc)


# -- histories from a simulated origin -------------------------------------------------------------

STORES = ["s1", "s2"]
KEYS = ["k1", "k2", "k3", "x"]


@dataclass
class History:
    """What a simulated origin committed: (seq, store, key, delta) in seq order, and its replica."""

    items: list[tuple[int, str, str, Delta]] = field(default_factory=list)
    origin: Replica = field(default_factory=Replica)
    sim: SimOrigin | None = None

    @property
    def last_seq(self) -> int:
        return self.items[-1][0] if self.items else 0


ModelValue = tuple[
    str, Any, Any
]  # ("bytes", value, expiry) | ("zset", {m: score}) | ("bloom", {items})


class SimOrigin:
    """A sequencer + `ops.plan` + `Replica`: the origin's write logic without I/O.

    Alongside, `model` runs the same operations on plain dicts (store -> key -> value), the
    semantics the replica must show to readers; `mismatches` records every op where the
    origin's kind check and the model's disagreed.
    """

    def __init__(self) -> None:
        self.history = History()
        self.seq = 0
        self.model: dict[str, dict[str, ModelValue]] = {}
        self.mismatches: list[tuple[str, Op]] = []

    @property
    def replica(self) -> Replica:
        return self.history.origin

    def _commit(self, store: str, key: str, delta: Delta) -> int:
        self.replica.apply(store, key, delta)
        self.replica.covered.add(delta.seq, delta.seq)
        self.history.items.append((delta.seq, store, key, delta))
        return delta.seq

    def create_store(self, name: str) -> int | None:
        if self.replica.has_store(name):
            return None
        self.model[name] = {}
        self.seq += 1
        return self._commit(META, name, Register(self.seq, written_at_of(self.seq), b"", None))

    def drop_store(self, name: str) -> int | None:
        if not self.replica.has_store(name):
            return None
        del self.model[name]
        self.seq += 1
        return self._commit(META, name, Register(self.seq, written_at_of(self.seq), None, None))

    def write(self, store: str, op: Op) -> int | None:
        """Commit `op`; None when it is a no-op, the store is missing or the kind is wrong."""
        if not self.replica.has_store(store):
            return None
        op = validate_op(op)
        seq = self.seq + 1
        model_ok = self._model_write(store, op, written_at_of(seq))
        try:
            delta = plan(op, self.replica.state(store, op.key), seq, written_at_of(seq))
        except WrongKind:
            if model_ok:
                self.mismatches.append(("origin said WrongKind", op))
            return None
        if not model_ok:
            self.mismatches.append(("model said WrongKind", op))
        if delta is None:
            return None
        self.seq = seq
        return self._commit(store, op.key, delta)

    def model_view(self, store: str, now_ms: int) -> dict[str, ModelValue]:
        """The model's live keys of `store` at `now_ms` (expired values dropped)."""
        return {
            k: v
            for k, v in self.model[store].items()
            if not (v[0] == "bytes" and v[2] is not None and v[2] <= now_ms)
        }

    def _model_write(self, store: str, op: Op, now_ms: int) -> bool:
        """Apply `op` to the model; False when the key holds another kind (WrongKind)."""
        keys = self.model[store]
        cur = self.model_view(store, now_ms).get(op.key)
        if isinstance(op, Delete):
            keys.pop(op.key, None)
            return True
        want = {Put: "bytes", ZAdd: "zset", ZRem: "zset", BfAdd: "bloom"}[type(op)]
        force = getattr(op, "force", False)
        if cur is not None and cur[0] != want:
            if not force:
                return False
            cur = None
        if isinstance(op, Put):
            expiry = None if op.ttl is None else now_ms + max(1, round(op.ttl * 1000))
            keys[op.key] = ("bytes", op.value, expiry)
        elif isinstance(op, ZAdd):
            members = dict(cur[1]) if cur is not None else {}
            members.update(op.members)
            keys[op.key] = ("zset", members, None)
        elif isinstance(op, ZRem):
            if cur is not None:
                keys[op.key] = (
                    "zset",
                    {m: s for m, s in cur[1].items() if m not in op.members},
                    None,
                )
        else:
            items = set(cur[1]) if cur is not None else set()
            keys[op.key] = ("bloom", items | set(op.items), None)
        return True


def ops() -> st.SearchStrategy[tuple[str, Any]]:
    keys = st.sampled_from(KEYS)
    members = st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3)
    scores = st.sampled_from([float("-inf"), -1.0, 0.0, 0.5, 3.0, 3.0, float("inf")])
    write_ops = st.one_of(
        st.builds(
            Put,
            keys,
            st.sampled_from([b"", b"x", b"yy", b"\x00" * 3]),
            st.sampled_from([None, None, 0.002, 0.01]),
            st.booleans(),
        ),
        st.builds(Delete, keys),
        st.builds(
            ZAdd, keys, st.dictionaries(st.sampled_from(MEMBERS), scores, min_size=1), st.booleans()
        ),
        st.builds(ZRem, keys, members),
        st.builds(
            BfAdd,
            keys,
            st.lists(st.binary(max_size=3), min_size=1, max_size=4),
            m=st.just(64),
            k=st.just(3),
            force=st.booleans(),
        ),
    )
    stores = st.sampled_from(STORES)
    writes = st.tuples(st.just("write"), st.tuples(stores, write_ops))
    return st.one_of(
        st.tuples(st.just("create"), stores),
        st.tuples(st.just("drop"), stores),
        *([writes] * 8),
    )


@st.composite
def histories(draw: st.DrawFn, max_ops: int = 40) -> History:
    """A write history: both stores are created first, then `max_ops` generated operations."""
    origin = SimOrigin()
    for name in STORES:
        origin.create_store(name)
    for what, arg in draw(st.lists(ops(), min_size=max_ops // 3, max_size=max_ops)):
        if what == "create":
            origin.create_store(arg)
        elif what == "drop":
            origin.drop_store(arg)
        else:
            store, op = arg
            origin.write(store, op)
    origin.history.sim = origin
    return origin.history


def snapshot(replica: Replica) -> dict[tuple[str, str], Any]:
    """Every (store, key) -> canonical state of a replica."""
    return {(s, k): canon(state) for s, k, state in replica.iter_states()}


def replay(
    items: list[tuple[int, str, str, Delta]], order: list[int] | None = None, batch: int = 0
) -> Replica:
    """A fresh replica fed `items` (in `order` of indexes if given), each covering its own seq."""
    replica = Replica()
    seq_items = [items[i] for i in order] if order is not None else items
    if batch <= 0:
        for seq, store, key, delta in seq_items:
            replica.apply(store, key, delta)
            replica.covered.add(seq, seq)
        return replica
    for start in range(0, len(seq_items), batch):
        chunk = seq_items[start : start + batch]
        replica.apply_batch(
            [(s, k, d) for _, s, k, d in chunk], [(seq, seq) for seq, _, _, _ in chunk]
        )
    return replica
