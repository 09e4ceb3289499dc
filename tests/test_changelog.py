"""The change log keeps its seqs in 4 bytes each while they fit, and widens without losing any."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgekv.crdt import META, Register, Replica
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
