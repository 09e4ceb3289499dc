"""Sequencer, write-ahead log and recovery: contiguous seqs, atomic batches, group commit."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgekv.crdt import BfAdd, Delete, Put, Register, Replica, ZAdd, ZRem, validate_op
from edgekv.crdt.codec import dumps, encode_delta
from edgekv.crdt.proofs import MAX_CERT_ATOMS, ProofStore, Signer
from edgekv.errors import StoreExists, StoreNotFound, VersionMismatch, WrongKind
from edgekv.origin.sequencer import Sequencer, recover
from edgekv.origin.wal import WriteAheadLog
from edgekv.origin.writer import BatchCommand, Command, StoreCommand


def one(op: object, if_version: int | None = None, store: str = "s") -> BatchCommand:
    return BatchCommand(store, ((validate_op(op), if_version),))


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


async def run_commands(
    path: Path, commands: list[Command], **kw: object
) -> tuple[Sequencer, list[object]]:
    wal = WriteAheadLog(path)
    seq = Sequencer(wal, Replica(), wall_ms=Clock(), **kw)  # type: ignore[arg-type]
    await seq.recover()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        for cmd in commands:
            try:
                results.append(await seq.submit(cmd))
            except Exception as exc:
                results.append(exc)
        tg.cancel_scope.cancel()
    wal.close()
    return seq, results


async def test_seqs_contiguous_and_errors_take_none(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    cmds: list[Command] = [
        StoreCommand("create", "s"),
        one(Put("a", b"1")),
        StoreCommand("create", "s"),  # StoreExists
        one(Put("a", b"2"), if_version=99),  # VersionMismatch
        one(Delete("missing")),  # no-op: no seq
        one(ZAdd("a", {b"m": 1.0})),  # WrongKind
        one(ZAdd("z", {b"m": 1.0, b"n": 2.0})),
        one(Put("x", b"y"), store="nope"),  # StoreNotFound
        one(Put("a", b"3"), if_version=2),
    ]
    seq, results = await run_commands(db, cmds)
    assert isinstance(results[2], StoreExists)
    assert isinstance(results[3], VersionMismatch)
    assert isinstance(results[5], WrongKind)
    assert isinstance(results[7], StoreNotFound)
    assert results[4][0].seqs == [None]  # type: ignore[index]
    assert [r[0].last for r in results if isinstance(r, tuple)] == [1, 2, 0, 3, 4]
    assert seq.replica.store("s").get("a", 0) == b"3"
    assert seq.replica.watermark == 4
    wal = WriteAheadLog(db)
    assert wal.high == 4
    assert [r[0] for chunk in wal.rows() for r in chunk] == [1, 2, 3, 4]


async def test_batch_is_atomic(tmp_path: Path) -> None:
    ok = BatchCommand(
        "s", ((validate_op(Put("a", b"1")), None), (validate_op(ZAdd("z", {b"m": 1.0})), None))
    )
    bad = BatchCommand(
        "s", ((validate_op(Put("b", b"1")), None), (validate_op(ZAdd("a", {b"m": 1.0})), None))
    )
    seq, results = await run_commands(tmp_path / "l.db", [StoreCommand("create", "s"), ok, bad])
    assert results[1][0].seqs == [2, 3]  # type: ignore[index]
    assert isinstance(results[2], WrongKind)
    assert seq.replica.state("s", "b") is None
    assert seq.next_seq == 4


async def test_recovery_rebuilds_replica_and_next_seq(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    cmds: list[Command] = [
        StoreCommand("create", "s"),
        one(Put("a", b"1")),
        one(ZAdd("z", {b"m": 1.0, b"n": 2.0})),
        one(ZRem("z", [b"m"])),
        one(BfAdd("b", [b"x"], capacity=100, error_rate=0.01)),
        one(BfAdd("b", [b"y"])),
        StoreCommand("create", "t"),
        one(Put("k", b"v"), store="t"),
        StoreCommand("drop", "t"),
        StoreCommand("create", "t"),
        one(Put("a", b"2", ttl=5.0)),
    ]
    first, _ = await run_commands(db, cmds)
    replica = Replica()
    wal = WriteAheadLog(db)
    assert recover(wal, replica) == 11
    assert replica.root == first.replica.root
    assert replica.watermark == 11
    assert replica.store("t").states == {}
    assert replica.store("s").zrange_by_score("z", 0, 10, 0) == [(b"n", 2.0)]
    assert replica.store("s").bf_exists("b", b"x", 0)
    assert replica.store("s").bf_exists("b", b"y", 0)
    wal.close()
    # the next seq continues after a restart
    _, results = await run_commands(db, [one(Put("c", b"1"))])
    assert results[0][0].seqs == [12]  # type: ignore[index]


async def test_compaction_keeps_every_effect(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    cmds: list[Command] = [StoreCommand("create", "s")]
    for i in range(20):
        cmds.append(one(Put(f"k{i % 3}", b"v%d" % i)))
        cmds.append(one(ZAdd("z", {b"m%d" % i: float(i)})))
    cmds.append(one(Delete("k0")))
    first, _ = await run_commands(db, cmds, compact_min_rows=10)
    wal = WriteAheadLog(db)
    assert wal.count() < 10  # compacted: 1 meta + 3 keys + 1 zset
    assert wal.high == 42
    replica = Replica()
    recover(wal, replica)
    assert replica.root == first.replica.root
    assert len(replica.store("s").zrange_by_score("z", 0, 100, 0)) == 20
    wal.close()
    _, results = await run_commands(db, [one(Put("c", b"1"))])
    assert results[0][0].seqs == [43]  # type: ignore[index]


async def test_group_commit_shares_transactions(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "l.db")
    seq = Sequencer(wal, Replica(), wall_ms=Clock())
    versions: list[int] = []

    async def writer(i: int) -> None:
        planned, _ = await seq.submit(one(Put(f"k{i}", b"v")))
        versions.append(planned.last)

    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        await seq.submit(StoreCommand("create", "s"))
        async with anyio.create_task_group() as writers:
            for i in range(200):
                writers.start_soon(writer, i)
        tg.cancel_scope.cancel()
    assert sorted(versions) == list(range(2, 202))
    assert seq.groups < 100  # concurrent writers shared commits
    wal.close()


async def test_submit_when_not_running_fails(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "l.db")
    seq = Sequencer(wal, Replica())
    with pytest.raises(Exception, match="not running"):
        await seq.submit(StoreCommand("create", "s"))
    seq.close()
    wal.close()


async def test_request_outcomes_are_forgotten_after_their_ttl(tmp_path: Path) -> None:
    """A steady write rate holds a steady number of remembered request ids (the soak's origin
    grew ~60 MiB/h filling 200,000 of them at 50 writes/s); within the TTL a retry is still
    answered with its first outcome."""
    from edgekv.origin.sequencer import OUTCOME_TTL_MS

    wal = WriteAheadLog(tmp_path / "log.db")
    clock = Clock()
    seq = Sequencer(wal, Replica(), wall_ms=clock)
    await seq.recover()
    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        await seq.submit(StoreCommand("create", "s"))
        first = BatchCommand("s", ((validate_op(Put("a", b"1")), None),), rid=b"r" * 16)
        planned, _ = await seq.submit(first)
        clock.ms += OUTCOME_TTL_MS // 2
        again, _ = await seq.submit(first)  # a retry within the TTL: not applied twice
        assert again.seqs == planned.seqs and seq.deduplicated == 1
        for i in range(3):
            clock.ms += OUTCOME_TTL_MS // 2
            rid = bytes([i]) * 16
            await seq.submit(BatchCommand("s", ((validate_op(Put("b", b"2")), None),), rid=rid))
        assert b"r" * 16 not in seq.outcomes and len(seq.outcomes) == 3  # the last TTL only
        tg.cancel_scope.cancel()
    wal.close()


async def test_recovery_settles_the_certificates_it_signs(tmp_path: Path) -> None:
    """Recovery signs every live state again: those certificates prove exactly the live
    states, so the first seal after it must not sweep (a walk of every live state on the
    origin's event loop: 2-6 s at a million keys under load, when the first edge joined)."""
    keys = 2 * MAX_CERT_ATOMS + 10  # past the entries that make a never-swept store sweep
    wal = WriteAheadLog(tmp_path / "l.db", synchronous="OFF")
    rows = [(1, "", "s", dumps(encode_delta(Register(1, 1, b"", None))))]
    rows += [
        (i, "s", f"k{i}", dumps(encode_delta(Register(i, 1, b"v", None))))
        for i in range(2, keys + 2)
    ]
    wal.append(rows, keys + 1)
    signer = Signer(Ed25519PrivateKey.generate())
    replica = Replica()
    proofs = replica.use_proofs(ProofStore([signer.public], journal=False))
    proofs.signer = signer
    seq = Sequencer(wal, replica, wall_ms=Clock(), signer=signer)
    await seq.recover()
    assert proofs.atoms == keys + 1
    walks: list[int] = []
    live = proofs.live_seqs
    assert live is not None

    def counted_live_seqs() -> Iterable[int]:
        walks.append(1)
        return live()

    proofs.live_seqs = counted_live_seqs
    proofs.defer([(keys + 2, bytes(16))], keys + 2, keys + 2)
    proofs.seal()
    assert walks == [] and len(proofs) == keys // MAX_CERT_ATOMS + 2
    wal.close()


async def test_a_zadd_past_the_set_limits_is_refused_and_takes_no_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sorted set travels whole in one frame (crdt/zset.py): the origin refuses a zadd that
    would grow it past MAX_ZSET_MEMBERS members or MAX_ZSET_BYTES (removed members count),
    with a clear error and no seq; updating members it holds is still fine."""
    from edgekv.crdt import ops
    from edgekv.errors import InvalidInput

    monkeypatch.setattr(ops, "MAX_ZSET_MEMBERS", 30)
    monkeypatch.setattr(ops, "MAX_ZSET_BYTES", 20 * 30 + 40 * 4)  # 30 one-byte-ish members
    cmds: list[Command] = [
        StoreCommand("create", "s"),
        one(ZAdd("z", {b"m%02d" % i: float(i) for i in range(28)})),
        one(ZRem("z", [b"m00", b"m01"])),  # removed members still count
        one(ZAdd("z", {b"m28": 1.0, b"m29": 1.0})),  # 30: at the limit
        one(ZAdd("z", {b"m30": 1.0})),  # 31: refused
        one(ZAdd("z", {b"m05": 9.0, b"m29": 2.0})),  # members it holds: fine
        one(ZAdd("big", {b"x" * 400: 1.0, b"y" * 400: 2.0})),  # a new set past the bytes
    ]
    seq, results = await run_commands(tmp_path / "log.db", cmds)
    assert isinstance(results[4], InvalidInput) and "at most 30 members" in str(results[4])
    assert isinstance(results[6], InvalidInput) and "bytes" in str(results[6])
    assert [r[0].last for r in results if isinstance(r, tuple)] == [1, 2, 3, 4, 5]
    z = seq.replica.state("s", "z")
    assert z is not None and len(z.members) == 30 and z.members[b"m05"][1] == 9.0  # type: ignore[union-attr]
    assert seq.replica.state("s", "big") is None


def test_a_set_at_the_limits_fits_one_frame_with_a_certificate_entry_per_member() -> None:
    """The limits' reason: the largest set by members (as many as the bytes allow) and by
    bytes (64 KiB members) encode in one snapshot chunk under the frame limit, with room for
    a 24-byte certificate entry per member and 1 MiB more."""
    from edgekv.crdt.certificate import ENTRY
    from edgekv.crdt.codec import encode_delta
    from edgekv.crdt.ops import DEFAULT_LIMITS
    from edgekv.crdt.zset import MAX_ZSET_BYTES, MAX_ZSET_MEMBERS, MEMBER_OVERHEAD, Member, ZSet
    from edgekv.gossip.snapshot_wire import snap_data
    from edgekv.gossip.wire import MAX_FRAME_SIZE, encode_frame

    small = MAX_ZSET_BYTES // MAX_ZSET_MEMBERS - MEMBER_OVERHEAD
    big = DEFAULT_LIMITS.max_member_bytes
    for length, count in ((small, MAX_ZSET_MEMBERS), (big, MAX_ZSET_BYTES // (big + 20))):
        members: dict[bytes, Member] = {
            i.to_bytes(4, "big") * (length // 4): (10**12 + i, 1e300) for i in range(count)
        }
        z = ZSet(1, members, 10**12 + count, 2**40)
        assert z.wire_size() <= MAX_ZSET_BYTES
        frame = encode_frame(snap_data(1, 1, 1, 0, 1, "s", ["z"], [b""], [encode_delta(z)], True))
        assert len(frame) + ENTRY * count + (1 << 20) <= MAX_FRAME_SIZE
