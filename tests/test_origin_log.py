"""One suite for both implementations of the origin's log (SQLite file, PostgreSQL database).

PostgreSQL runs as a throwaway server (initdb + pg_ctl in a temp dir on 127.0.0.1, stopped at
the end of the session; `edgekv.testnet.postgres`); each test gets a fresh database.  Where no
server can be started, the PostgreSQL cases skip with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

import edgekv
from edgekv.origin.log import CommitLog, LogError, open_log
from edgekv.testnet.postgres import ThrowawayPostgres

_dbs = itertools.count(1)


def fresh_database(pg: ThrowawayPostgres) -> str:
    """A new empty database on the throwaway server (the `postgres` fixture of conftest.py)."""
    return pg.create_database(f"edgekv_log_{next(_dbs)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def log_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `log=` of an Origin: "sqlite" (in tmp_path) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite"
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture
def open_it(log_spec: str, tmp_path: Path) -> Iterator[Callable[[], CommitLog]]:
    opened: list[CommitLog] = []

    def open_() -> CommitLog:
        log = open_log(log_spec, tmp_path)
        opened.append(log)
        lead = getattr(log, "try_lead", None)  # PostgreSQL: opened as a follower
        assert lead is None or lead()
        return log

    yield open_
    for log in opened:
        try:
            log.close()
        except Exception:
            pass


def rows(first: int, n: int) -> list[tuple[int, str, str, bytes]]:
    return [(s, "flags", f"k{s % 3}", b"\x85\x00%d" % s) for s in range(first, first + n)]


def all_rows(log: CommitLog) -> list[tuple[int, str, str, bytes]]:
    return [r for chunk in log.rows(4) for r in chunk]


def test_append_read_back_and_reopen(open_it: Callable[[], CommitLog]) -> None:
    log = open_it()
    assert log.high == 0 and log.count() == 0 and all_rows(log) == []
    log.append(rows(1, 5), 5)
    log.write(rows(6, 3), 8)  # staged or written: durable once synced
    log.sync()
    log.sync()  # nothing new: a no-op
    assert log.high == 8 and log.count() == 8
    assert all_rows(log) == rows(1, 8)  # in seq order, in chunks
    log.close()
    again = open_it()
    assert again.high == 8 and all_rows(again) == rows(1, 8)


def test_compaction_never_lowers_high(open_it: Callable[[], CommitLog]) -> None:
    log = open_it()
    log.append(rows(1, 9), 9)
    # keep the latest row of each key (k0: 9, k1: 7, k2: 8) but rewrite k1's row; drop the rest
    removed = log.compact([7, 8], [(b"\x85\x00new", 7)], 9)
    assert removed == 7 and [r[0] for r in all_rows(log)] == [7, 8]
    assert dict((r[0], r[3]) for r in all_rows(log))[7] == b"\x85\x00new"
    log.close()
    again = open_it()
    assert again.high == 9  # seq 9's row is gone, its seq is not reusable
    again.append(rows(10, 1), 10)
    assert [r[0] for r in all_rows(again)] == [7, 8, 10]


async def test_origin_recovers_from_the_log(log_spec: str, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with edgekv.Origin(data_dir=tmp_path, listen=None, log=log_spec) as origin:
            await origin.create_store("flags")
            for i in range(20):
                await origin.put("flags", f"k{i % 7}", b"%d" % i)
            await origin.batch("flags", [{"op": "zadd", "key": "z", "members": {b"a": 1.0}}])
            await origin.delete("flags", "k0")
            root, high = origin.replica.root, origin.watermark
        async with edgekv.Origin(data_dir=tmp_path, listen=None, log=log_spec) as origin:
            assert origin.watermark == high and origin.replica.root == root
            assert await origin.get("flags", "k3") == b"17"
            assert (await origin.put("flags", "k3", b"x")).seq == high + 1


# -- PostgreSQL only: leadership and fencing ------------------------------------------------------


def test_postgres_leadership_and_fencing(postgres: ThrowawayPostgres) -> None:
    import psycopg

    from edgekv.origin.pglog import Fenced, PostgresLog

    dsn = fresh_database(postgres)
    leader = PostgresLog(dsn)
    with pytest.raises(LogError, match="another origin leads"):
        PostgresLog(dsn, lead_wait=0.1)
    follower = PostgresLog(dsn, lead=False)
    try:
        assert leader.leader and leader.term == 1 and not follower.leader
        assert not follower.try_lead()  # the leader's session holds the lock
        leader.append(rows(1, 3), 3)
        assert [r[0] for r in follower.rows_after(1)] == [2, 3]
        # a paused leader whose lock was lost: the term moved on, its commit must fail
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("UPDATE edgekv_meta SET value = value + 1 WHERE name = 'term'")
        leader.write(rows(4, 2), 5)
        with pytest.raises(Fenced):
            leader.sync()
        assert not leader.leader and follower.read_high() == 3
        with pytest.raises(Fenced):
            leader.write(rows(4, 1), 4)
        # the leader's session ends: the follower takes over with a new term, from seq 4
        leader.close()
        assert follower.try_lead() and follower.term == 3 and follower.high == 3
        follower.append(rows(4, 2), 5)
        assert [r[0] for r in follower.rows_after(0)] == [1, 2, 3, 4, 5]
    finally:
        leader.close()
        follower.close()


def test_request_outcomes_are_kept_with_their_rows(open_it: Callable[[], CommitLog]) -> None:
    log = open_it()
    log.write(rows(1, 2), 2, [(b"r1" * 8, 1, b"one"), (b"r2" * 8, 2, b"two")])
    log.sync()
    log.append(rows(3, 1), 3)  # a group without request ids
    log.write(rows(4, 1), 4, [(b"r4" * 8, 4, b"four")])
    log.sync()
    log.close()
    again = open_it()
    assert again.recent_requests(10) == [
        (b"r1" * 8, b"one"),
        (b"r2" * 8, b"two"),
        (b"r4" * 8, b"four"),
    ]
    assert again.recent_requests(1) == [(b"r4" * 8, b"four")]  # the newest, oldest first


async def test_a_request_retried_across_a_restart_is_applied_once(
    log_spec: str, tmp_path: Path
) -> None:
    rid = b"retried-request!"
    body = {"op": "put", "store": "flags", "key": "k", "value": b"1", "rid": rid}
    with trio.fail_after(30):
        async with edgekv.Origin(data_dir=tmp_path, listen=None, log=log_spec) as origin:
            await origin.create_store("flags")
            first = await origin.handle(dict(body), trusted=True)
            await origin.put("flags", "k", b"2")  # a later write the retry must not undo
        async with edgekv.Origin(data_dir=tmp_path, listen=None, log=log_spec) as origin:
            again = await origin.handle(dict(body), trusted=True)
            assert again["seq"] == first["seq"] == 2 and origin.sequencer.deduplicated == 1
            assert await origin.get("flags", "k") == b"2" and origin.watermark == 3
