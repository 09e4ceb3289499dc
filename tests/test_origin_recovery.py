"""Bulk recovery (origin/recovery.py) builds exactly what `Replica.apply` builds, index by index."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgekv.crdt import Register, Replica
from edgekv.crdt.codec import dumps, encode_delta
from edgekv.crdt.state import merge
from edgekv.crdt.zset import ZSet
from edgekv.origin.recovery import recover
from edgekv.origin.wal import LogError, Row, WriteAheadLog


def reference(rows: list[Row], high: int) -> Replica:
    """The slow, obviously right recovery: fold every row with merge, then Replica.apply."""
    from edgekv.crdt.codec import loads_delta

    folded: dict[tuple[str, str], object] = {}
    for _seq, store, key, blob in rows:
        new = merge(folded.get((store, key)), loads_delta(blob))  # type: ignore[arg-type]
        if new is not None:
            folded[(store, key)] = new
    replica = Replica()
    for (store, key), st in folded.items():
        if store == "":
            replica.apply(store, key, st)  # type: ignore[arg-type]
    for (store, key), st in folded.items():
        if store != "":
            replica.apply(store, key, st)  # type: ignore[arg-type]
    replica.covered.add(1, high)
    return replica


def random_log(seed: int, n: int = 3000) -> list[Row]:
    """Puts, deletes, expiring puts, zadds and a store drop/recreate, as the origin logs them."""
    rng = random.Random(seed)
    rows: list[Row] = []
    seq = 0

    def log(store: str, key: str, delta: object) -> None:
        rows.append((seq, store, key, dumps(encode_delta(delta))))  # type: ignore[arg-type]

    zsets: dict[tuple[str, str], int] = {}
    for store in ("a", "b"):
        seq += 1
        log("", store, Register(seq, seq, b"", None))
    for i in range(n):
        seq += 1
        store = rng.choice("ab")
        key = f"k{rng.randrange(400)}"
        r = rng.random()
        if i == n // 2:  # drop and recreate store b: its older keys are dead
            log("", "b", Register(seq, seq, None, None))
            seq += 1
            log("", "b", Register(seq, seq, b"", None))
            zsets = {k: v for k, v in zsets.items() if k[0] != "b"}
        elif r < 0.6:
            log(store, key, Register(seq, seq, b"v%d" % seq, None))
            zsets.pop((store, key), None)
        elif r < 0.7:
            log(store, key, Register(seq, seq, None, None))
            zsets.pop((store, key), None)
        elif r < 0.8:
            log(store, key, Register(seq, seq, b"t", 10_000_000 + seq))
            zsets.pop((store, key), None)
        else:
            zkey = (store, f"z{rng.randrange(20)}")
            reset = zsets.setdefault(zkey, seq)
            members: dict[bytes, tuple[int, float | None]] = {
                b"m%d" % rng.randrange(30): (seq, float(rng.randrange(100)))
            }
            log(store, zkey[1], ZSet(reset, members, seq, seq))
    return rows


def write_log(path: Path, rows: list[Row]) -> WriteAheadLog:
    wal = WriteAheadLog(path, synchronous="OFF")
    wal.append(rows, rows[-1][0])
    return wal


def assert_same(a: Replica, b: Replica) -> None:
    assert a.roots() == b.roots()
    assert a.root == b.root
    assert a.watermark == b.watermark
    assert sorted(a.stores) == sorted(b.stores)
    for name, sa in a.stores.items():
        sb = b.stores[name]
        assert (sa.epoch, sa.live) == (sb.epoch, sb.live), name
        assert sa.states.keys() == sb.states.keys(), name
        for key, st in sa.states.items():
            assert type(st) is type(sb.states[key])
            assert st.seq == sb.states[key].seq
            assert st.digest(key) == sb.states[key].digest(key)
        assert list(sa.keys) == list(sb.keys), name
        assert sa.tombstones == sb.tombstones, name
        assert sa.tree.nodes() == sb.tree.nodes(), name
        assert {lf: sorted(ks) for lf, ks in sa.tree.leaf_map().items()} == {
            lf: sorted(ks) for lf, ks in sb.tree.leaf_map().items()
        }, name
        for w in (0, 5, 1000, 2500):
            assert list(sa.changes.since(w, sa.states)) == list(sb.changes.since(w, sb.states))
    assert list(a.changes_since(0)) == list(b.changes_since(0))
    # the expiry heap works: everything expires at the same time in both
    far = 1 << 62
    purged_a = sorted((c.store, c.key) for c in a.purge(a.watermark, far))
    assert purged_a == sorted((c.store, c.key) for c in b.purge(b.watermark, far))
    assert purged_a  # tombstones and expired values were there to purge
    assert a.roots() == b.roots()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_recovery_equals_apply(tmp_path: Path, seed: int) -> None:
    rows = random_log(seed)
    wal = write_log(tmp_path / "log.db", rows)
    got = Replica()
    assert recover(wal, got) == len(rows)
    wal.close()
    assert_same(got, reference(rows, rows[-1][0]))


def test_recovery_without_the_inlined_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekv.crdt import treebuild

    assert treebuild.FAST_HASHES  # the tree builder's inlined hashes agree with the crdt layer's
    monkeypatch.setattr(treebuild, "FAST_HASHES", False)
    rows = random_log(7, 500)
    wal = write_log(tmp_path / "log.db", rows)
    got = Replica()
    recover(wal, got)
    wal.close()
    assert_same(got, reference(rows, rows[-1][0]))


def test_corrupt_row_names_its_seq(tmp_path: Path) -> None:
    rows = random_log(4, 50)
    seq, store, key, _blob = rows[10]
    rows[10] = (seq, store, key, b"\x85\x00\xff")  # a register prefix, then garbage
    wal = write_log(tmp_path / "log.db", rows)
    with pytest.raises(LogError, match=f"seq {seq}"):
        recover(wal, Replica())
    wal.close()


def test_wrongly_typed_register_is_refused(tmp_path: Path) -> None:
    rows = random_log(5, 50)
    seq, store, key, _blob = rows[-1]
    rows[-1] = (seq, store, key, dumps([0, seq, seq, "not bytes", None]))
    wal = write_log(tmp_path / "log.db", rows)
    with pytest.raises(LogError, match=f"seq {seq}"):
        recover(wal, Replica())
    wal.close()


def test_the_high_seq_survives_compaction_of_its_row(tmp_path: Path) -> None:
    """Seqs are never reused: after compaction removed the row that carried the highest seq,
    a reopened log still continues after it."""
    path = tmp_path / "log.sqlite3"
    wal = WriteAheadLog(path)
    blob = dumps(encode_delta(Register(1, 1, b"v", None)))
    wal.append([(seq, "s", f"k{seq}", blob) for seq in range(1, 6)], 5)
    assert wal.compact(keep=[2], rewrites=[], upto=5) == 4
    wal.close()
    wal = WriteAheadLog(path)
    assert wal.count() == 1 and wal.high == 5
    wal.append([(6, "s", "k6", blob)], 6)
    wal.close()
    assert WriteAheadLog(path).high == 6
