"""Origin failover on one PostgreSQL log (issue #14, step 3), on 127.0.0.1.

In process: one origin leads, the other follows warm and refuses writes; clients and edges
given both addresses follow the leader; a retried request id is applied once; the follower
takes over when the leader goes.  Then the real thing with processes: two `edgekv origin`
daemons, 16 writers, the leader SIGKILLed, three edges that must converge.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import edgekv
from edgekv.errors import NotLeader
from edgekv.node.keys import generate_keypair, load_public_key
from edgekv.origin.wal import LogError
from edgekv.testnet.failover import log_seqs, run_failover
from edgekv.testnet.postgres import ThrowawayPostgres
from test_edge_harness import wait_until

_dbs = itertools.count(1)


def database(pg: ThrowawayPostgres) -> str:
    return pg.create_database(f"edgekv_failover_{next(_dbs)}")


async def test_leader_follower_and_takeover_in_process(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    dsn = database(postgres)
    stop_a = trio.Event()
    key = Ed25519PrivateKey.generate()  # the origins of one log share one signing key

    async def run_a(*, task_status: trio.TaskStatus[edgekv.Origin]) -> None:
        async with edgekv.Origin(
            data_dir=tmp_path / "a", listen="127.0.0.1:0", log=dsn, signing_key=key
        ) as a:
            task_status.started(a)
            await stop_a.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            a = await nursery.start(run_a)  # first: it leads
            with pytest.raises(LogError, match="same --signing-key"):
                async with edgekv.Origin(data_dir=None, listen=None, log=dsn):
                    pass  # the log knows the origins' key: one with another key is refused
            b = await stack.enter_async_context(
                edgekv.Origin(
                    data_dir=tmp_path / "b",
                    listen="127.0.0.1:0",
                    log=dsn,
                    follow_interval=0.05,
                    signing_key=key,
                )
            )
            assert a.leading and not b.leading
            assert a.status()["log"]["term"] == 1
            # a client given the follower first moves on to the leader
            client = await stack.enter_async_context(edgekv.OriginClient([b.address, a.address]))
            await client.create_store("flags")
            for i in range(20):
                assert (await client.put("flags", f"k{i}", b"%d" % i)).seq == i + 2
            assert client.address == a.address
            async with edgekv.OriginClient(b.address) as only_b:
                with pytest.raises(NotLeader):
                    await only_b.put("flags", "x", b"no")
                await wait_until(lambda: b.replica.root == a.replica.root, 10)  # warm
                assert await only_b.get("flags", "k7") == b"7"  # and serving reads
            # an edge given both origins writes through the leader
            async with edgekv.EdgeNode(
                origin=[b.address, a.address],
                ready_timeout=5,
                origin_public_keys=[key.public_key()],
            ) as edge:
                assert (await edge.open("flags").put("from-edge", b"e")).seq == 22
            # a retried request id is answered with its first outcome, applied once
            rid = os.urandom(16)
            body = {"op": "put", "store": "flags", "key": "once", "value": b"1", "rid": rid}
            first = await client.request(dict(body))
            again = await client.request(dict(body))
            assert first["seq"] == again["seq"] == 23 and a.sequencer.deduplicated == 1
            # the leader goes: the follower takes over, seqs go on from the last one
            stop_a.set()
            await wait_until(lambda: b.leading, 10)
            assert b.status()["log"]["term"] == 2
            assert (await client.put("flags", "after", b"b")).seq == 24
            assert client.address == b.address
            again = await client.request(dict(body))  # the new leader knows the old rid
            assert again["seq"] == 23 and b.sequencer.deduplicated == 1
            assert await client.get("flags", "once") == b"1"
            assert [s for s, _, _ in log_seqs(dsn)] == list(range(1, 25))


@contextmanager
def origin_process(
    tmp: Path, dsn: str, key: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """`edgekv origin --log DSN` on 127.0.0.1 port 0; yields (process, address, http)."""
    cmd = [sys.executable, "-m", "edgekv", "origin", "--data-dir", str(tmp), "--log", dsn]
    cmd += ["--signing-key", str(key)]
    cmd += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        words = line.split()
        yield proc, words[words.index("on") + 1], words[words.index("http") + 1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_sigkill_the_leader_under_16_writers(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    dsn = database(postgres)
    # the origins share one signing key (made here); the edges verify with its public key
    private, public = generate_keypair(tmp_path / "keys")
    keys = [load_public_key(public)]
    with (
        origin_process(tmp_path / "a", dsn, private) as (proc_a, addr_a, _),
        origin_process(tmp_path / "b", dsn, private) as (_, addr_b, http_b),
        trio.fail_after(90),
    ):
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(edgekv.OriginClient([addr_a, addr_b]))
            await client.create_store("failover")
            assert client.address == addr_a  # the first one started leads
            edges = [
                await stack.enter_async_context(
                    edgekv.EdgeNode(
                        origin=[addr_a, addr_b], ready_timeout=5, origin_public_keys=keys
                    )
                )
                for _ in range(3)
            ]
            http = await stack.enter_async_context(httpx.AsyncClient())

            async def roots() -> tuple[str | None, list[str]]:
                status = (await http.get(f"http://{http_b}/v1/status")).json()
                return status["root"], [f"{e.replica.root:032x}" for e in edges]

            report = await run_failover(
                [addr_a, addr_b],
                addr_a,
                lambda: proc_a.send_signal(signal.SIGKILL),
                dsn,
                roots,
                clients=16,
                before_kill=300,
                after_kill=300,
            )
    print(report)
    assert report.ok, report
    assert not any(e.runtime.metrics.rejected for e in edges)  # all of it verified
    assert report.failover_seconds <= 5.0, report


async def test_a_deposed_leader_steps_down_and_follows(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    import psycopg

    from edgekv.origin.pglog import PostgresLog

    dsn = database(postgres)
    key = Ed25519PrivateKey.generate()

    def origin(name: str) -> edgekv.Origin:
        return edgekv.Origin(
            data_dir=tmp_path / name,
            listen="127.0.0.1:0",
            log=dsn,
            signing_key=key,
            follow_interval=0.05,
        )

    stop_b = trio.Event()

    async def run_b(*, task_status: trio.TaskStatus[edgekv.Origin]) -> None:
        async with origin("b") as b:
            task_status.started(b)
            await stop_b.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            a = await stack.enter_async_context(origin("a"))
            b = await nursery.start(run_b)
            assert a.leading and not b.leading
            both = await stack.enter_async_context(edgekv.OriginClient([a.address, b.address]))
            only_a = await stack.enter_async_context(edgekv.OriginClient(a.address))
            await both.create_store("flags")
            for i in range(5):
                await only_a.put("flags", f"k{i}", b"a")
            # a's session is cut (as by a network partition): its lock goes, b takes over;
            # a, idle, notices on its own and stops taking writes
            log_a = a.sequencer.wal
            assert isinstance(log_a, PostgresLog)
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (log_a.backend_pid,))
            await wait_until(lambda: b.leading, 10)
            await wait_until(lambda: not a.leading, 10)
            with pytest.raises(NotLeader):
                await only_a.put("flags", "late", b"a")
            assert (await both.put("flags", "k9", b"b")).seq == 7  # no seq lost or reused
            assert both.address == b.address
            # a follows the new leader through a new session, warm as any follower
            await wait_until(lambda: a.replica.root == b.replica.root, 10)
            assert await only_a.get("flags", "k9") == b"b"
            assert a.status()["log"]["leading"] is False
            # and takes over again when b goes, with a new term
            stop_b.set()
            await wait_until(lambda: a.leading, 10)
            assert a.status()["log"]["term"] == 3
            assert (await only_a.put("flags", "k10", b"a")).seq == 8
            assert [s for s, _, _ in log_seqs(dsn)] == list(range(1, 9))
