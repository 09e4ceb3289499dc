"""The change log keeps its seqs in 4 bytes each while they fit, and widens without losing any."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import META, Register, Replica, changelog
from edgekv.crdt.changelog import ChangeLog, seq_array

BIG = 1 << 32


def test_seqs_are_four_bytes_while_they_fit() -> None:
    r = Replica()
    r.apply(META, "s", Register(1, 0, b""))
    for i in range(2, 1002):
        r.apply("s", f"k{i}", Register(i, 0, b"v"))
    log = r.stores["s"].changes
    assert log.seqs.itemsize == 4 and len(log) == 1000
    assert seq_array([1, 2, BIG - 1]).itemsize == 4
    assert seq_array(iter([1, BIG])).itemsize == 8


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, (1 << 63) - 1)), max_size=40))
def test_since_is_right_across_the_widening(writes: list[tuple[int, int]]) -> None:
    """Writes with seqs below and above 2**32 in any order: `since` reports exactly the keys
    whose current seq is above the watermark, as a dict of the latest seqs says."""
    log = ChangeLog()
    states: dict[str, Register] = {}
    for k, seq in writes:
        key = f"k{k}"
        old = states.get(key)
        if old is not None and old.seq >= seq:
            continue
        states[key] = Register(seq, 0, b"v")
        if old is not None:
            log.discard(old.seq, key)
        log.add(seq, key, states)
    for w in (0, BIG - 1, BIG, 1 << 62):
        got = list(log.since(w, states))
        assert sorted(got) == sorted(k for k, s in states.items() if s.seq > w)
        got_seqs = [states[k].seq for k in got]
        assert got_seqs == sorted(got_seqs)  # ascending by seq, each key once
        # the same keys in key order, or None past the limit (nothing removed here)
        assert log.keys_since(w, states, len(log)) == sorted(got)
        if got:
            assert log.keys_since(w, states, len(got) - 1) is None
    if any(s.seq >= BIG for s in states.values()):
        assert log.seqs.itemsize == 8


@given(
    st.lists(st.integers(1, 200), unique=True, max_size=60),
    st.sampled_from([1, 3, 7, 1 << 15]),
    st.randoms(use_true_random=False),
)
def test_by_seq_orders_keys_by_seq_in_blocks(seqs: list[int], block: int, rnd: Random) -> None:
    """`by_seq` (a bulk load's entries, rule 5) gives the keys ascending by seq, whatever the
    block its passes are cut in, placed by slot or sorted (sparse seqs, seqs past 2**32)."""
    for shift in (0, BIG):
        shuffled = [s + shift for s in seqs]
        rnd.shuffle(shuffled)
        keys = [f"k{s}" for s in shuffled]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(changelog, "BLOCK", block)
            got_keys, got_seqs = changelog.by_seq(keys, shuffled)
        assert list(got_seqs) == sorted(shuffled)
        assert got_keys == [f"k{s}" for s in sorted(shuffled)]
        assert got_seqs.itemsize == (8 if shift else 4) or not seqs
