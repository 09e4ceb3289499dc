"""KvStore, the FastEdge-style read API: globs, sorted-set ranges, Bloom filters, kinds, expiry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import BfAdd, Delete, Put, Replica, Version, ZAdd, ZRem
from edgekv.crdt.glob import compile_glob, literal_prefix
from edgekv.errors import EdgeKVError, InvalidInput, StoreNotFound, WrongKind
from edgekv.node.kvstore import KvStore, current_node
from strategies import SimOrigin, written_at_of


def redis_match(p: str, s: str) -> bool:
    """Reference glob, written from Redis's stringmatchlen (plus "!" negation, "*" matches "")."""

    def m(pi: int, si: int) -> bool:
        while pi < len(p):
            c = p[pi]
            if c == "*":
                while pi < len(p) and p[pi] == "*":
                    pi += 1
                return pi == len(p) or any(m(pi, k) for k in range(si, len(s) + 1))
            if si == len(s):
                return False
            if c == "?":
                pi, si = pi + 1, si + 1
                continue
            if c == "[":
                pi += 1
                neg = pi < len(p) and p[pi] in "^!"
                pi += neg
                hit = False
                while pi < len(p) and p[pi] != "]":
                    if p[pi] == "\\" and pi + 1 < len(p):
                        hit |= p[pi + 1] == s[si]
                        pi += 2
                    elif pi + 2 < len(p) and p[pi + 1] == "-":
                        lo, hi = sorted((p[pi], p[pi + 2]))
                        hit |= lo <= s[si] <= hi
                        pi += 3
                    else:
                        hit |= p[pi] == s[si]
                        pi += 1
                if hit == neg:
                    return False
                pi, si = pi + 1, si + 1
                continue
            if c == "\\" and pi + 1 < len(p):
                pi += 1
            if p[pi] != s[si]:
                return False
            pi, si = pi + 1, si + 1
        return si == len(s)

    return m(0, 0)


GLOB_CASES = [
    ("user:*", "user:1", True),
    ("user:*", "use", False),
    ("*", "x", True),
    ("h?llo", "hello", True),
    ("h?llo", "hllo", False),
    ("h[ae]llo", "hallo", True),
    ("h[ae]llo", "hillo", False),
    ("h[^e]llo", "hallo", True),
    ("h[^e]llo", "hello", False),
    ("h[!e]llo", "hello", False),
    ("h[a-b]llo", "hbllo", True),
    ("h[b-a]llo", "hbllo", True),  # reversed range, as Redis
    ("h\\*llo", "h*llo", True),
    ("h\\*llo", "hello", False),
    ("a\\[b]", "a[b]", True),
    ("a[\\]]b", "a]b", True),
    ("a[]b", "ab", False),
    ("a[^]b", "axb", True),
    ("a[bc", "ac", True),  # unterminated set runs to the end
    ("a.b", "axb", False),  # regex metacharacters are literal
    ("(a|b)", "(a|b)", True),
    ("[--]", "-", True),  # would be a regex warning if passed through
    ("*a*b*", "xxaxxbxx", True),
    ("trailing\\", "trailing\\", True),
    ("ü?", "üx", True),
]


@pytest.mark.parametrize(("pattern", "text", "want"), GLOB_CASES)
def test_glob_cases(pattern: str, text: str, want: bool) -> None:
    assert redis_match(pattern, text) is want
    assert (compile_glob(pattern)(text) is not None) is want
    assert (compile_glob(pattern.encode())(text.encode()) is not None) is want  # bytes: zscan


@given(p=st.text("ab*?[]^!\\-", max_size=8), s=st.text("ab-]^[\\*!", max_size=6))
def test_glob_matches_the_reference(p: str, s: str) -> None:
    assert (compile_glob(p)(s) is not None) == redis_match(p, s)
    assert (compile_glob(p.encode())(s.encode()) is not None) == redis_match(p, s)
    prefix = literal_prefix(p)
    if redis_match(p, s):
        assert s.startswith(prefix)


# -- a store with a little of everything ---------------------------------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.now


def make_store(*ops: Any) -> tuple[KvStore, SimOrigin, Clock]:
    origin = SimOrigin()
    origin.create_store("s")
    for op in ops:
        origin.write("s", op)  # None for a no-op (zrem of a non-member)
    assert origin.mismatches == []
    clock = Clock(written_at_of(origin.seq))
    return KvStore(origin.replica.store("s"), clock=clock), origin, clock


@given(
    keys=st.sets(st.text("ab:/*?[\\", min_size=1, max_size=5), max_size=30),
    pattern=st.text("ab:/*?[]^\\", max_size=6),
    limit=st.one_of(st.none(), st.integers(1, 5)),
)
def test_scan_equals_a_full_filter(keys: set[str], pattern: str, limit: int | None) -> None:
    store, _, _ = make_store(*(Put(k, b"v") for k in keys))
    want = [k for k in sorted(keys) if redis_match(pattern, k)]
    assert store.scan(pattern) == want
    if limit is not None:
        assert store.scan(pattern, limit=limit) == want[:limit]


def test_scan_prefix_fast_path_and_dead_keys() -> None:
    store, _, clock = make_store(
        Put("feature:a", b"1"),
        Put("feature:b", b"2", ttl=0.05),
        Put("feature:c", b"3"),
        Delete("feature:c"),
        Put("featurez", b"4"),
        Put("other", b"5"),
        ZAdd("feature:z", {b"m": 1.0}),
    )
    assert store.scan("feature:*") == ["feature:a", "feature:b", "feature:z"]
    clock.now += 50
    assert store.scan("feature:*") == ["feature:a", "feature:z"]
    assert store.scan("feature?*") == ["feature:a", "feature:z", "featurez"]
    assert store.scan("*", limit=2) == ["feature:a", "feature:z"]
    assert store.scan("*", limit=0) == []
    assert store.scan("nothing*") == []


@given(
    members=st.dictionaries(
        st.binary(max_size=3),
        st.sampled_from([-math.inf, -2.0, 0.0, 0.5, 1.0, 1.0, 3.0, math.inf]),
        min_size=1,
        max_size=10,
    ),
    lo=st.sampled_from([-math.inf, -2.0, -1.0, 0.0, 0.5, 1.0, 3.0, math.inf]),
    hi=st.sampled_from([-math.inf, -2.0, 0.0, 0.5, 1.0, 2.0, 3.0, math.inf]),
    removed=st.lists(st.binary(max_size=3), max_size=3),
)
def test_zrange_by_score_is_inclusive_and_ordered(
    members: dict[bytes, float], lo: float, hi: float, removed: list[bytes]
) -> None:
    ops: list[Any] = [ZAdd("z", members)]
    if removed:
        ops.append(ZRem("z", removed))
    store, _, _ = make_store(*ops)
    live = {m: s for m, s in members.items() if m not in removed}
    want = sorted(((m, s) for m, s in live.items() if lo <= s <= hi), key=lambda ms: (ms[1], ms[0]))
    assert store.zrange_by_score("z", lo, hi) == want
    if math.isfinite(lo) and lo == int(lo):
        assert store.zrange_by_score("z", int(lo), hi) == want


def test_zrange_edge_cases() -> None:
    store, _, _ = make_store(ZAdd("z", {b"b": 1.0, b"a": 1.0, b"c": 2.0, b"inf": math.inf}))
    assert store.zrange_by_score("z", 1, 1) == [(b"a", 1.0), (b"b", 1.0)]
    assert store.zrange_by_score("z", 2, 1) == []
    assert store.zrange_by_score("z", math.nan, 5) == []
    assert store.zrange_by_score("z", 2, math.inf) == [(b"c", 2.0), (b"inf", math.inf)]
    assert store.zrange_by_score("missing", 0, 1) == []
    with pytest.raises(InvalidInput):
        store.zrange_by_score("z", "0", 1)  # type: ignore[arg-type]


def test_zscan_matches_members_in_score_order() -> None:
    store, _, _ = make_store(
        ZAdd("z", {b"alice": 3.0, b"bob": 1.0, b"anna": 1.0, b"al": 9.0}), ZRem("z", [b"al"])
    )
    assert store.zscan("z", "a*") == [(b"anna", 1.0), (b"alice", 3.0)]
    assert store.zscan("z", b"?ob") == [(b"bob", 1.0)]
    assert store.zscan("z", "*") == [(b"anna", 1.0), (b"bob", 1.0), (b"alice", 3.0)]
    assert store.zscan("missing", "*") == []


def test_bf_exists_has_no_false_negatives_and_the_configured_fp_rate() -> None:
    items = [b"in-%d" % i for i in range(1000)]
    store, origin, _ = make_store(BfAdd("bf", items[:500], capacity=1000, error_rate=0.01))
    origin.replica.apply_batch([])
    assert origin.write("s", BfAdd("bf", items[500:])) is not None
    assert all(store.bf_exists("bf", item) for item in items)
    probes = [b"out-%d" % i for i in range(20_000)]
    rate = sum(store.bf_exists("bf", p) for p in probes) / len(probes)
    assert 0.004 <= rate <= 0.02, rate
    assert store.bf_exists("missing", b"x") is False


def test_every_wrong_kind_read_raises() -> None:
    store, _, _ = make_store(
        Put("bytes", b"v"), ZAdd("zset", {b"m": 1.0}), BfAdd("bloom", [b"i"], m=64, k=2)
    )
    reads: dict[str, list[Callable[[str], object]]] = {
        "bytes": [store.get, store.get_entry],
        "zset": [
            lambda k: store.zrange_by_score(k, 0, 1),
            lambda k: store.zscan(k, "*"),
        ],
        "bloom": [lambda k: store.bf_exists(k, b"i")],
    }
    for key in reads:
        for kind, fns in reads.items():
            for fn in fns:
                if kind == key:
                    fn(key)
                else:
                    with pytest.raises(WrongKind):
                        fn(key)


def test_missing_and_dead_keys_read_as_absent_whatever_the_method() -> None:
    store, _, clock = make_store(Put("gone", b"v"), Delete("gone"), Put("ttl", b"v", ttl=0.002))
    for key in ("gone", "ttl", "never"):
        if key == "ttl":
            clock.now = written_at_of(4) + 2  # expiry is written_at + 2 ms
        assert store.get(key) is None
        assert store.get_entry(key) is None
        assert store.zrange_by_score(key, -math.inf, math.inf) == []
        assert store.zscan(key, "*") == []
        assert store.bf_exists(key, b"v") is False


def test_expiry_and_get_entry() -> None:
    store, _, clock = make_store(Put("a", b"1", ttl=0.01), Put("b", b"2"))
    entry = store.get_entry("a")
    assert entry is not None and entry.value == b"1"
    assert entry.version == Version(2, written_at_of(2))
    assert entry.expires_at == written_at_of(2) + 10
    clock.now = written_at_of(2) + 9
    assert store.get("a") == b"1"
    clock.now = written_at_of(2) + 10
    assert store.get("a") is None and store.get_entry("a") is None
    assert store.scan("*") == ["b"]


def test_get_reads_the_clock_only_for_expiring_values() -> None:
    store, _, clock = make_store(Put("a", b"1"), Put("t", b"2", ttl=60))
    clock.calls = 0
    assert store.get("a") == b"1" and store.get("missing") is None
    assert clock.calls == 0
    assert store.get("t") == b"2"
    assert clock.calls == 1


def test_dropped_and_unknown_stores() -> None:
    store, origin, _ = make_store(Put("a", b"1"))
    origin.drop_store("s")
    for read in (
        lambda: store.get("a"),
        lambda: store.get_entry("a"),
        lambda: store.scan("*"),
        lambda: store.zrange_by_score("a", 0, 1),
        lambda: store.zscan("a", "*"),
        lambda: store.bf_exists("a", b"x"),
    ):
        with pytest.raises(StoreNotFound):
            read()
    with pytest.raises(StoreNotFound):
        KvStore(origin.replica.store("s"))
    with pytest.raises(StoreNotFound):
        KvStore(Replica().store("never-created"))
    origin.create_store("s")  # recreated: the same KvStore reads the new, empty store
    assert store.get("a") is None


def test_bad_read_arguments_raise_invalid_input() -> None:
    store, _, _ = make_store(Put("a", b"1"))
    with pytest.raises(InvalidInput):
        store.get(["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.scan(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.scan("*", limit="3")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.bf_exists("a", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.get_entry(3)  # type: ignore[arg-type]


# -- writes and open() ---------------------------------------------------------------------------


def origin_writer(origin: SimOrigin, edge: Replica, bodies: list[dict[str, Any]]) -> Any:
    """A writer that plays the origin: plan and commit, then apply the delta on the edge."""

    async def write(store: str, body: dict[str, Any]) -> Version:
        bodies.append(dict(body))
        op: Any
        if body["op"] == "put":
            op = Put(body["key"], body["value"], body["ttl"], body["force"])
        elif body["op"] == "delete":
            op = Delete(body["key"])
        elif body["op"] == "zadd":
            op = ZAdd(body["key"], body["members"], body["force"])
        elif body["op"] == "zrem":
            op = ZRem(body["key"], body["members"])
        else:
            op = BfAdd(body["key"], body["items"], m=body.get("m"), k=body.get("k"))
        seq = origin.write(store, op)
        assert seq is not None
        _, s, key, delta = origin.history.items[-1]
        edge.apply_batch([(s, key, delta)], [(seq, seq)])
        return Version(seq, delta.written_at)

    return write


async def test_writes_send_the_request_schema_and_read_your_writes() -> None:
    origin = SimOrigin()
    origin.create_store("s")
    edge = Replica()
    edge.apply_batch([it[1:] for it in origin.history.items], [(1, 1)])
    bodies: list[dict[str, Any]] = []
    clock = Clock(written_at_of(1))
    store = KvStore(edge.store("s"), writer=origin_writer(origin, edge, bodies), clock=clock)
    v = await store.put("k", b"v", ttl=30)
    assert v.seq == 2 and store.get("k") == b"v"
    await store.zadd("z", {b"m": 2.0})
    await store.zrem("z", [b"m"])
    await store.bf_add("b", [b"x"], m=64, k=3)
    await store.delete("k", if_version=2)
    assert store.get("k") is None and store.zrange_by_score("z", 0, 9) == []
    assert store.bf_exists("b", b"x")
    assert bodies == [
        {
            "op": "put",
            "key": "k",
            "value": b"v",
            "ttl": 30,
            "force": False,
            "store": "s",
            "if_version": None,
        },
        {
            "op": "zadd",
            "key": "z",
            "members": {b"m": 2.0},
            "force": False,
            "store": "s",
            "if_version": None,
        },
        {"op": "zrem", "key": "z", "members": [b"m"], "store": "s", "if_version": None},
        {
            "op": "bf_add",
            "key": "b",
            "items": [b"x"],
            "force": False,
            "m": 64,
            "k": 3,
            "store": "s",
            "if_version": None,
        },
        {"op": "delete", "key": "k", "store": "s", "if_version": 2},
    ]


async def test_writes_without_a_writer_or_with_bad_input_fail_clearly() -> None:
    store, _, _ = make_store()
    with pytest.raises(EdgeKVError, match="read-only"):
        await store.put("k", b"v")
    calls: list[dict[str, Any]] = []

    async def writer(name: str, body: dict[str, Any]) -> Version:
        calls.append(body)
        return Version(1, 0)

    origin = SimOrigin()
    origin.create_store("s")
    store = KvStore(origin.replica.store("s"), writer=writer)
    for bad in (
        store.put("", b"v"),
        store.put("k", "text"),  # type: ignore[arg-type]
        store.put("k", b"v", ttl=-1),
        store.zadd("k", {b"m": math.nan}),
        store.zadd("k", {}),
        store.zrem("k", b"m"),  # type: ignore[arg-type]
        store.bf_add("k", []),
        store.put("k", b"v", if_version="3"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInput):
            await bad
    assert calls == []


async def test_open_finds_the_node_in_the_context() -> None:
    origin = SimOrigin()
    origin.create_store("s")

    class Node:
        def open(self, name: str) -> KvStore:
            return KvStore(origin.replica.store(name))

    with pytest.raises(EdgeKVError, match="running node"):
        KvStore.open("s")
    token = current_node.set(Node())
    try:
        assert KvStore.open("s").name == "s"
        with pytest.raises(StoreNotFound):
            KvStore.open("other")
    finally:
        current_node.reset(token)


def test_scan_prefix_ranges_at_the_edges_of_the_alphabet() -> None:
    top = "\U0010ffff"
    keys = ["a", f"a{top}", f"a{top}b", f"a{top}{top}", "b", "a*", "a\\x"]
    store, _, _ = make_store(*(Put(k, b"v") for k in keys))
    for pattern in (f"a{top}*", f"a{top}", "a*", "a\\**", "a\\\\*", "*", "**", "a?*", "b*", ""):
        want = [k for k in sorted(keys) if redis_match(pattern, k)]
        assert store.scan(pattern) == want, pattern
