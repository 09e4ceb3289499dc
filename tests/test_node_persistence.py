"""Edge persistence: round trips through SQLite, store drops, removals, corrupt files refused."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekv.crdt import META, BfAdd, Change, Delete, Put, Register, Replica, ZAdd, plan
from edgekv.crdt.ops import Op, validate_op
from edgekv.node.filerows import block_of
from edgekv.node.persistence import DB_NAME, ReplicaStore


class Writer:
    """A minimal sequencer over a replica: plan each op at the next seq, apply, record changes."""

    def __init__(self) -> None:
        self.replica = Replica()
        self.seq = 0
        self.changes: list[Change] = []

    def _commit(self, store: str, key: str, delta: object) -> None:
        self.seq += 1
        changes = self.replica.apply_batch([(store, key, delta)], [(self.seq, self.seq)])  # type: ignore[list-item]
        self.changes.extend(changes)

    def create(self, store: str) -> None:
        self._commit(META, store, Register(self.seq + 1, 1000 + self.seq, b"", None))

    def drop(self, store: str) -> None:
        self._commit(META, store, Register(self.seq + 1, 1000 + self.seq, None, None))

    def write(self, store: str, op: Op) -> bool:
        """Commit `op`; False when it changes nothing (deleting a missing key)."""
        op = validate_op(op)
        delta = plan(op, self.replica.state(store, op.key), self.seq + 1, 1000 + self.seq)
        if delta is None:
            return False
        self._commit(store, op.key, delta)
        return True

    def drain(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out


def _populate(w: Writer) -> None:
    w.create("flags")
    w.create("other")
    for i in range(50):
        w.write("flags", Put(f"k{i:03d}", f"v{i}".encode()))
    w.write("flags", Put("ttl", b"soon", ttl=60))
    w.write("flags", ZAdd("rank", {b"alice": 1.0, b"bob": 2.5}))
    w.write("flags", BfAdd("seen", [b"10.0.0.1"]))
    w.write("flags", Delete("k007"))
    w.write("other", Put("x", b"y"))


async def _persist(tmp_path: Path, w: Writer) -> ReplicaStore:
    store = ReplicaStore(tmp_path)
    report = store.load()
    assert report.keys == 0 and report.corrupt_moved_to is None
    store.replica = w.replica  # the node would have loaded into this replica and kept applying
    store.on_changes(w.drain())
    await store.flush()
    return store


def _same(a: Replica, b: Replica) -> None:
    assert a.root == b.root
    assert a.roots() == b.roots()
    assert list(a.covered) == list(b.covered)
    assert a.purged == b.purged
    assert a.store_names() == b.store_names()


async def test_round_trip(tmp_path: Path) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    assert store.persisted_watermark == w.seq
    await store.close()

    again = ReplicaStore(tmp_path)
    report = again.load()
    assert report.keys == len(w.replica) and report.watermark == w.seq
    _same(again.replica, w.replica)
    assert again.replica.store("flags").get("k001", 0) == b"v1"
    assert again.replica.store("flags").zrange_by_score("rank", 0, 10, 0) == [
        (b"alice", 1.0),
        (b"bob", 2.5),
    ]
    assert again.replica.store("flags").bf_exists("seen", b"10.0.0.1", 0)
    await again.close()


async def test_incremental_flushes_drop_and_removal(tmp_path: Path) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    # more writes, a dropped store, a purge that removes tombstones
    w.write("flags", Put("k001", b"new"))
    w.drop("other")
    store.on_changes(w.drain())
    removed = w.replica.purge(w.seq, now_ms=0)
    assert Change("flags", "k007", None) in removed
    store.on_changes(removed)
    assert await store.flush() > 0
    assert await store.flush() == 0  # nothing dirty
    await store.close()
    rows = sqlite3.connect(tmp_path / DB_NAME).execute(
        "SELECT store, key FROM states WHERE store IN ('other') OR key = 'k007'"
    )
    assert rows.fetchall() == []

    again = ReplicaStore(tmp_path)
    again.load()
    _same(again.replica, w.replica)
    assert again.replica.store_names() == ["flags"]
    assert again.replica.store("flags").get("k001", 0) == b"new"
    assert again.replica.purged == w.seq
    await again.close()


async def test_watermark_only_changes_are_persisted(tmp_path: Path) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    w.replica.covered.add(w.seq + 1, w.seq + 5)  # e.g. anti-entropy found the states equal
    assert await store.flush() == 0
    await store.close()
    again = ReplicaStore(tmp_path)
    assert again.load().watermark == w.seq + 5
    await again.close()


def _corrupt_file(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 97):  # spray over every page after the header page
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "not_sqlite",
        "bad_row",
        "bad_register",
        "bad_meta",
        "format",
        "block_crc",
        "block_register",
        "block_seq_zero",
        "block_columns",
    ],
)
async def test_corrupt_file_is_moved_aside(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    if damage.startswith("block"):  # the registers in blocks (rule 7)
        store.rewrite_all()
        await store.flush()
    await store.close()
    path = tmp_path / DB_NAME
    if damage == "garbage":
        _corrupt_file(path)
    elif damage == "not_sqlite":
        path.write_bytes(b"this is not a database at all" * 1000)
    else:
        db = sqlite3.connect(path)
        if damage == "bad_row":
            db.execute("UPDATE states SET state = ? WHERE key = 'rank'", (b"\x85\x00\x01",))
        elif damage == "bad_register":
            db.execute("UPDATE states SET reg = x'09' || substr(reg, 2) WHERE key = 'k003'")
        elif damage == "bad_meta":
            db.execute("INSERT OR REPLACE INTO meta VALUES ('covered', ?)", (b"\xff\xff",))
        elif damage == "block_crc":  # a flipped byte in a value: the checksum tells
            db.execute("UPDATE blocks SET regs = substr(regs, 1, 40) || x'00' || substr(regs, 42)")
        elif damage.startswith("block"):  # well-formed CBOR, checksum made to match
            keys, regs = {
                "block_register": (["k1"], [b"\x09" + bytes(20)]),  # unknown flags
                "block_seq_zero": (["k1"], [bytes(17)]),  # a whole header, seq 0
                "block_columns": (["k1"], []),  # a key without its register
            }[damage]
            kb, rb, crc = block_of(keys, regs)
            db.execute("UPDATE blocks SET keys = ?, regs = ?, crc = ?", (kb, rb, crc))
        else:
            db.execute("UPDATE meta SET value = 99 WHERE name = 'format'")
        db.commit()
        db.close()

    again = ReplicaStore(tmp_path)
    with caplog.at_level("ERROR", logger="edgekv.persistence"):
        report = again.load()
    assert report.corrupt_moved_to is not None
    assert os.path.exists(report.corrupt_moved_to)  # noqa: ASYNC240
    assert ".corrupt-" in report.corrupt_moved_to
    assert report.keys == 0 and len(again.replica) == 0 and again.replica.watermark == 0
    assert any("corrupt_database" in r.getMessage() for r in caplog.records)
    # the fresh file works: write, reopen, read back
    w2 = Writer()
    w2.create("flags")
    w2.write("flags", Put("a", b"b"))
    again.replica = w2.replica
    again.on_changes(w2.drain())
    await again.flush()
    await again.close()
    third = ReplicaStore(tmp_path)
    assert third.load().keys == 1
    assert third.replica.store("flags").get("a", 0) == b"b"
    await third.close()


async def test_failed_flush_keeps_changes_for_the_next_one(tmp_path: Path) -> None:
    class Flaky(ReplicaStore):
        fail = True

        def _write(self, batch: Any) -> None:
            if self.fail:
                self.fail = False
                raise sqlite3.OperationalError("database or disk is full")
            super()._write(batch)

    w = Writer()
    _populate(w)
    store = Flaky(tmp_path)
    store.load()
    store.replica = w.replica
    store.on_changes(w.drain())
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    assert store.persisted_watermark == 0
    assert await store.flush() == len(w.replica) + 2  # every key and both stores, on retry
    assert store.persisted_watermark == w.seq
    await store.close()
    again = ReplicaStore(tmp_path)
    again.load()
    _same(again.replica, w.replica)
    await again.close()


async def test_a_tampered_disk_serves_locally_but_cannot_spread(tmp_path: Path) -> None:
    """SECURITY.md, "An altered edge disk": the edge does not re-verify its own file at start
    (its disk, its public key file and its code are one trust domain); what an altered file
    holds is served by that edge only: the certificates it kept do not prove it, so a peer
    rejects it (and cuts the edge off) when the edge sends it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgekv.crdt.proofs import ForgedState, ProofStore, Signer, atoms_of

    key = Ed25519PrivateKey.generate()
    w = Writer()
    proofs = w.replica.use_proofs(ProofStore([key.public_key()]))
    w.create("flags")
    w.write("flags", Put("k", b"genuine"))
    states = [(s, k, d) for s in ("", "flags") for k, d in w.replica.stores[s].states.items()]
    proofs.add(Signer(key).certify(a for s, k, d in states for a in atoms_of(s, k, d)))
    store = ReplicaStore(tmp_path, public_keys=[key.public_key()])
    store.load()
    store.replica = w.replica
    store.on_changes(w.drain())
    await store.flush()
    await store.close()
    genuine = w.replica.state("flags", "k")
    assert isinstance(genuine, Register)
    forged = Register(genuine.seq, genuine.written_at, b"altered", None)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE states SET reg = ? WHERE key = 'k'", (bytes(forged),))
    again = ReplicaStore(tmp_path, public_keys=[key.public_key()])
    again.load()
    assert again.replica.store("flags").get("k", 0) == b"altered"  # served here only
    kept = again.replica.proofs
    assert kept is not None and len(kept) == 1
    items = [("flags", "k", again.replica.state("flags", "k"))]
    peer = ProofStore([key.public_key()])
    with pytest.raises(ForgedState):
        peer.verify(items, kept.material_for(items), lambda s, k: None)  # type: ignore[arg-type]
    await again.close()


async def test_a_load_no_longer_wanted_stops_and_leaves_the_file_in_place(tmp_path: Path) -> None:
    """snapshot.py rule 12: a restart whose delta is large drops its file; the loading thread
    stops between blocks of rows (LoadDropped: no rows), nothing is quarantined, and the file loads
    whole on the next start."""
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    await store.close()

    again = ReplicaStore(tmp_path)
    again.open()
    asked: list[int] = []

    def wanted() -> bool:
        asked.append(1)
        return len(asked) < 2  # wanted before the check, not at the first block of rows

    assert again.read_rows(wanted) is None  # (LoadDropped inside: logged, nothing moved)
    assert len(asked) == 2 and again.corrupt_moved_to is None
    await again.close()

    await _read_back(tmp_path, w)


async def _read_back(path: Path, w: Writer) -> Replica:
    """The file in `path` loaded afresh (and closed): it must read back as `w`'s replica."""
    again = ReplicaStore(path)
    report = again.load()
    assert report.corrupt_moved_to is None and report.keys == len(w.replica)
    _same(again.replica, w.replica)
    await again.close()
    return again.replica


def _rows_and_blocks(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT count(*) FROM states").fetchone()
        (blocks,) = db.execute("SELECT count(*) FROM blocks").fetchone()
    return rows, blocks


async def test_a_rewrite_stores_registers_in_blocks_and_later_changes_as_rows(
    tmp_path: Path,
) -> None:
    """Rule 7: a whole rewrite puts the registers in checksummed blocks (other kinds stay
    rows); later flushes write rows that supersede them, and a removal of a key a block may
    hold is a marker row; the file reads back equal after each step."""
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    store.rewrite_all()
    await store.flush()
    assert _rows_and_blocks(tmp_path / DB_NAME) == (2, 3)  # zset and bloom; 3 stores with META
    w.write("flags", Put("k001", b"new"))
    w.write("flags", Delete("k002"))
    w.write("other", Put("y", b"z"))
    store.on_changes(w.drain())
    store.on_changes(w.replica.purge(w.seq, now_ms=0))  # k002 and k007 removed
    await store.flush()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        markers = db.execute("SELECT key FROM states WHERE reg IS NULL AND state IS NULL")
        assert sorted(k for (k,) in markers) == ["k002", "k007"]
    await store.close()

    again = ReplicaStore(tmp_path)
    again.load()
    _same(again.replica, w.replica)
    assert again.replica.store("flags").get("k001", 0) == b"new"
    assert again.replica.state("flags", "k002") is None
    assert again.replica.state("flags", "k007") is None
    again.rewrite_all()  # markers and rows fold into the blocks
    again.on_changes([Change("flags", "k001", None)])
    await again.flush()
    assert _rows_and_blocks(tmp_path / DB_NAME) == (2, 3)
    await again.close()
    await _read_back(tmp_path, w)


async def test_a_rewrite_from_earlier_copies_writes_the_later_changes_on_top(
    tmp_path: Path,
) -> None:
    """Rule 4: `rewrite_all(base)` writes the stores in `base` from those copies (taken
    before, as a snapshot's tree job holds them) and every key changed since on top: a key
    written, one removed (a marker: its copy's block holds it), one added, a store created
    after the copies; the file reads back as the live replica, and one that dropped the
    rows (no base) writes the same."""
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    base = {name: sr.states_copy() for name, sr in w.replica.stores.items()}
    w.write("flags", Put("k001", b"after the copy"))
    w.write("flags", Delete("k002"))
    w.write("flags", Put("k999", b"new key"))
    w.create("later")
    w.write("later", Put("a", b"b"))
    store.on_changes(w.drain())
    store.on_changes(w.replica.purge(w.seq, now_ms=0))  # k002 and k007 removed for good
    store.rewrite_all(base)
    await store.flush()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        markers = db.execute("SELECT key FROM states WHERE reg IS NULL AND state IS NULL")
        assert sorted(k for (k,) in markers) == ["k002", "k007"]  # k007: purged after the copy
    back = await _read_back(tmp_path, w)
    assert back.store("flags").get("k001", 0) == b"after the copy"
    assert back.state("flags", "k002") is None and back.state("flags", "k007") is None
    assert back.store("later").get("a", 0) == b"b"
    await store.close()


async def test_a_dropped_store_takes_its_blocks_along(tmp_path: Path) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    store.rewrite_all()
    await store.flush()
    w.drop("other")
    w.create("other")  # recreated: none of its old keys
    w.write("other", Put("fresh", b"1"))
    store.on_changes(w.drain())
    await store.flush()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM blocks WHERE store = 'other'").fetchone() == (0,)
    await store.close()
    assert (await _read_back(tmp_path, w)).state("other", "x") is None


async def test_rows_past_the_blocks_are_folded_in_by_a_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 7: once the rows written since the blocks reach COMPACT_ROWS and half the keys,
    the next flush rewrites the file in blocks, so a load reads few rows."""
    from edgekv.node import persistence

    monkeypatch.setattr(persistence, "COMPACT_ROWS", 40)
    w = Writer()
    _populate(w)  # 55 keys of which 53 plain values: 55 rows written
    store = await _persist(tmp_path, w)
    assert _rows_and_blocks(tmp_path / DB_NAME) == (56, 0)  # (the META store's rows too)
    w.write("flags", Put("k001", b"again"))
    store.on_changes(w.drain())
    await store.flush()  # the rewrite is due: done at the next flush
    await store.flush()
    rows, blocks = _rows_and_blocks(tmp_path / DB_NAME)
    assert blocks == 3 and rows == 2
    await store.close()
    await _read_back(tmp_path, w)


async def test_a_file_of_the_format_before_loads_and_is_upgraded(tmp_path: Path) -> None:
    w = Writer()
    _populate(w)
    store = await _persist(tmp_path, w)
    await store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # as format 4 wrote it: no blocks table
        db.execute("DROP TABLE blocks")
        db.execute("UPDATE meta SET value = 4 WHERE name = 'format'")
    await _read_back(tmp_path, w)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (5,)


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 5), st.binary(max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
        st.tuples(st.just("zadd"), st.integers(0, 5)),
        st.tuples(st.just("purge")),
        st.tuples(st.just("recreate")),
        st.tuples(st.just("flush")),
        st.tuples(st.just("rewrite")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS)
def test_any_history_of_flushes_and_rewrites_reads_back_equal(steps: list[tuple[Any, ...]]) -> None:
    """Rule 7 as a property: whatever mix of writes, removals (deletes purged, a store
    recreated), flushes and whole rewrites in blocks of 4 keys, the file reads back equal."""
    import tempfile

    import trio

    from edgekv.node import persistence

    async def run(path: Path) -> None:
        w = Writer()
        w.create("s")
        store = await _persist(path, w)
        for step in steps:
            if step[0] == "put":
                w.write("s", Put(f"k{step[1]:02d}", step[2]))
            elif step[0] == "delete":
                w.write("s", Delete(f"k{step[1]:02d}"))
            elif step[0] == "zadd":
                w.write("s", ZAdd(f"z{step[1]:02d}", {b"m": 1.0}))
            elif step[0] == "purge":
                store.on_changes(w.replica.purge(w.seq, now_ms=0))
            elif step[0] == "recreate":
                w.drop("s")
                w.create("s")
            elif step[0] == "rewrite":
                store.rewrite_all()
            store.on_changes(w.drain())
            if step[0] in ("flush", "rewrite"):
                await store.flush()
        await store.close()
        read = await _read_back(path, w)
        assert read.store("s").states == w.replica.store("s").states

    old = persistence.BLOCK_KEYS
    persistence.BLOCK_KEYS = 4
    try:
        with tempfile.TemporaryDirectory() as d:
            trio.run(run, Path(d))
    finally:
        persistence.BLOCK_KEYS = old
