"""Link faults as data: `LinkFaults.to_spec`/`load_spec` and the policy file every process of a
testnet follows (`node/faultfile.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from edgekv.node.faultfile import follow_fault_file, load_fault_file, write_fault_file
from edgekv.node.faults import LinkFaults

ADDRS = st.sampled_from(["a:1", "b:1", "c:1", "d:1"])
PROB = st.floats(0, 1)
TIME = st.floats(0, 5)


@st.composite
def policies(draw: st.DrawFn) -> LinkFaults:
    f = LinkFaults(draw(st.integers(0, 2**32)), latency=draw(TIME), loss=draw(PROB))
    for _ in range(draw(st.integers(0, 3))):
        f.set_link(draw(ADDRS), draw(ADDRS), jitter=draw(TIME), duplicate=draw(PROB))
    if draw(st.booleans()):
        f.partition(draw(st.sets(ADDRS)), draw(st.sets(ADDRS)))
    for _ in range(draw(st.integers(0, 2))):
        f.block(draw(ADDRS), draw(ADDRS))
    if draw(st.booleans()):
        f.isolate(draw(ADDRS))
    return f


@given(policies())
def test_a_policy_survives_json_and_routes_the_same(f: LinkFaults) -> None:
    g = LinkFaults(seed=99)
    g.load_spec(json.loads(json.dumps(f.to_spec())))
    assert g.to_spec() == f.to_spec()
    for src in ("a:1", "b:1", "c:1", "d:1"):
        for dst in ("a:1", "b:1", "c:1", "d:1"):
            assert g.reachable(src, dst) == f.reachable(src, dst)
            assert g.settings(src, dst) == f.settings(src, dst)


@pytest.mark.parametrize(
    "spec",
    [
        [],
        {"seed": "1"},
        {"default": {"loss": 2}},
        {"default": {"latency": -1}},
        {"default": {"latency": "fast"}},
        {"default": {"nope": 1}},
        {"links": [["a:1", "b:1"]]},
        {"partitions": [[["a:1"], [2]]]},
        {"blocked": [["a:1"]]},
        {"isolated": "a:1b:1"},
    ],
)
def test_a_malformed_spec_changes_nothing(spec: object) -> None:
    f = LinkFaults(seed=1, latency=0.5)
    f.partition(["a:1"], ["b:1"])
    before = f.to_spec()
    with pytest.raises(ValueError, match="bad fault spec"):
        f.load_spec(spec)
    assert f.to_spec() == before


def test_a_bad_file_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    f = LinkFaults()
    assert load_fault_file(path, f)  # missing: no faults
    good = LinkFaults(seed=5, loss=0.25)
    write_fault_file(path, good)
    assert load_fault_file(path, f) and f.to_spec() == good.to_spec()
    path.write_text("{not json")
    assert not load_fault_file(path, f)
    assert f.to_spec() == good.to_spec()


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


async def test_a_node_follows_changes_to_the_file(tmp_path: Path, clock: MockClock) -> None:
    path = tmp_path / "faults.json"
    f = LinkFaults()
    policy = LinkFaults(seed=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_fault_file, path, f, 0.1)
        policy.partition(["a:1"], ["b:1"])
        write_fault_file(path, policy)
        await trio.sleep(0.15)  # virtual time: one poll of the file later
        assert not f.reachable("a:1", "b:1")
        policy.heal()
        policy.set_default(latency=0.2)
        write_fault_file(path, policy)
        await trio.sleep(0.15)
        assert f.reachable("a:1", "b:1") and f.default.latency == 0.2
        path.write_text("[]")  # malformed: the last good policy stays
        await trio.sleep(0.15)
        assert f.to_spec() == policy.to_spec()
        nursery.cancel_scope.cancel()
