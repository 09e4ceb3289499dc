"""Pipelined group commit: groups planned on top of unflushed groups, acks only after a flush,
in order; failed writes and failed flushes; and the client's send combining and timeouts."""

from __future__ import annotations

import struct
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio
import trio.testing

from edgekv.crdt import Put, Replica, validate_op
from edgekv.errors import EdgeKVError, OriginUnavailable, StoreNotFound, VersionMismatch
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.origin.client import OriginClient
from edgekv.origin.sequencer import Sequencer, Ticket
from edgekv.origin.wal import LogError, Request, Row, WriteAheadLog
from edgekv.origin.writer import BatchCommand, Command, StoreCommand


def put(key: str, value: bytes, if_version: int | None = None, store: str = "s") -> BatchCommand:
    return BatchCommand(store, ((validate_op(Put(key, value)), if_version),))


class GatedLog(WriteAheadLog):
    """A durable log whose flushes wait for `gate` (they run in the flusher's threads)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.syncs = 0
        self.fail_sync: Exception | None = None
        self.fail_write: Exception | None = None

    def sync(self) -> None:
        self.gate.wait(10)
        self.syncs += 1
        if self.fail_sync is not None:
            raise self.fail_sync
        super().sync()

    def write(self, rows: Sequence[Row], high: int, requests: Sequence[Request] = ()) -> None:
        if self.fail_write is not None:
            raise self.fail_write
        super().write(rows, high, requests)


@asynccontextmanager
async def sequencer(wal: WriteAheadLog, flush_threads: int = 4) -> AsyncIterator[Sequencer]:
    seq = Sequencer(wal, Replica(), wall_ms=lambda: 1_000_000, flush_threads=flush_threads)
    async with anyio.create_task_group() as tg:
        await tg.start(seq.run)
        try:
            yield seq
        finally:
            tg.cancel_scope.cancel()


class Outcomes:
    """Collects sequencer callbacks; `wait(n)` returns once n tickets are answered."""

    def __init__(self) -> None:
        self.done: list[Ticket] = []
        self._event = anyio.Event()

    def callback(self) -> Callable[[Ticket], None]:
        def cb(ticket: Ticket) -> None:
            self.done.append(ticket)
            self._event.set()

        return cb

    async def wait(self, n: int) -> list[Ticket]:
        with trio.fail_after(10):
            while len(self.done) < n:
                self._event = anyio.Event()
                await self._event.wait()
        return self.done


async def submit_group(seq: Sequencer, out: Outcomes, commands: list[Command]) -> None:
    """Submit `commands` and let the commit loop write them as one group."""
    for cmd in commands:
        seq.submit_nowait(cmd, out.callback())
    await trio.testing.wait_all_tasks_blocked()


async def test_groups_plan_on_unflushed_groups_and_ack_after_the_flush(tmp_path: Path) -> None:
    wal = GatedLog(tmp_path / "log.db")
    out = Outcomes()
    async with sequencer(wal) as seq:
        await submit_group(seq, out, [StoreCommand("create", "s"), put("a", b"1")])
        # written, not flushed: nobody is answered and the replica holds nothing yet
        assert seq.next_seq == 3 and wal.high == 2
        assert out.done == [] and seq.replica.state("s", "a") is None
        # the next group sees the unflushed group: the store exists, a is at version 2
        await submit_group(seq, out, [put("a", b"2", if_version=2), put("b", b"x", if_version=0)])
        await submit_group(seq, out, [put("a", b"3", if_version=2)])  # a is at 3 now: mismatch
        await submit_group(seq, out, [StoreCommand("drop", "s"), put("a", b"4")])
        await submit_group(seq, out, [StoreCommand("create", "s"), put("a", b"5", if_version=0)])
        assert out.done == [] and seq.replica.watermark == 0
        wal.gate.set()
        done = await out.wait(9)
    outcome = [t.error if t.error is not None else t.planned.seqs for t in done]  # type: ignore[union-attr]
    assert outcome[:4] == [[1], [2], [3], [4]]
    assert isinstance(outcome[4], VersionMismatch)
    assert outcome[5] == [5] and isinstance(outcome[6], StoreNotFound)
    assert outcome[7:] == [[6], [7]]
    assert seq.replica.watermark == 7
    assert seq.replica.store("s").get("a", 0) == b"5"  # dropped with its store, rewritten
    assert seq.replica.state("s", "b") is None
    assert seq._pending == {}
    wal.close()


class RecordingLog(WriteAheadLog):
    """A durable log that records, at each flush, how many writes were answered by then."""

    def __init__(self, path: Path, out: Outcomes) -> None:
        super().__init__(path)
        self.out = out
        self.answered_at_sync: list[int] = []
        self.fail_sync: Exception | None = None

    def sync(self) -> None:
        self.answered_at_sync.append(len(self.out.done))
        if self.fail_sync is not None:
            raise self.fail_sync
        super().sync()


async def test_inline_flush_one_per_group_before_any_answer(tmp_path: Path) -> None:
    out = Outcomes()
    wal = RecordingLog(tmp_path / "log.db", out)
    async with sequencer(wal, flush_threads=0) as seq:
        await submit_group(seq, out, [StoreCommand("create", "s"), put("a", b"1")])
        await out.wait(2)
        await submit_group(seq, out, [put("a", b"2"), put("b", b"1"), put("c", b"1")])
        await out.wait(5)
    # one flush per group, each before any write of its group was answered
    assert wal.answered_at_sync == [0, 2]
    assert [t.planned.seqs for t in out.done] == [[1], [2], [3], [4], [5]]  # type: ignore[union-attr]
    assert seq.replica.watermark == 5
    wal.close()


async def test_a_failed_inline_flush_fails_its_group_and_later_writes(tmp_path: Path) -> None:
    out = Outcomes()
    wal = RecordingLog(tmp_path / "log.db", out)
    async with sequencer(wal, flush_threads=0) as seq:
        await seq.submit(StoreCommand("create", "s"))
        wal.fail_sync = OSError(5, "Input/output error")
        await submit_group(seq, out, [put("a", b"1"), put("b", b"1")])
        done = await out.wait(2)
        assert all(isinstance(t.error, LogError) for t in done)
        assert seq.replica.watermark == 1  # the unflushed group never reached the replica
        with pytest.raises(LogError, match="restart"):
            await seq.submit(put("c", b"1"))
    wal.close()


async def test_a_failed_write_fails_its_group_only(tmp_path: Path) -> None:
    wal = GatedLog(tmp_path / "log.db")
    wal.gate.set()
    async with sequencer(wal) as seq:
        await seq.submit(StoreCommand("create", "s"))
        wal.fail_write = LogError("disk full")
        with pytest.raises(LogError, match="disk full"):
            await seq.submit(put("a", b"1"))
        wal.fail_write = None
        planned, _ = await seq.submit(put("a", b"2"))
        assert planned.seqs == [2]  # the failed group's seq was never used
    assert seq.replica.store("s").get("a", 0) == b"2"
    wal.close()


async def test_a_failed_flush_fails_every_write_in_flight_and_later_ones(tmp_path: Path) -> None:
    wal = GatedLog(tmp_path / "log.db")
    out = Outcomes()
    async with sequencer(wal) as seq:
        wal.fail_sync = OSError(5, "Input/output error")
        await submit_group(seq, out, [StoreCommand("create", "s")])
        await submit_group(seq, out, [put("a", b"1"), put("b", b"1")])
        wal.gate.set()
        done = await out.wait(3)
        assert all(isinstance(t.error, LogError) for t in done)
        assert seq.replica.watermark == 0  # nothing unflushed reached the replica
        with pytest.raises(LogError, match="restart"):
            await seq.submit(put("c", b"1"))
    wal.close()


async def test_shutdown_fails_writes_waiting_for_a_flush(tmp_path: Path) -> None:
    wal = GatedLog(tmp_path / "log.db")
    out = Outcomes()
    async with sequencer(wal) as seq:
        await submit_group(seq, out, [StoreCommand("create", "s")])
        threading.Timer(0.05, wal.gate.set).start()  # the flush ends while shutting down
    assert len(out.done) == 1
    assert isinstance(out.done[0].error, EdgeKVError)
    assert "shutting down" in str(out.done[0].error)
    wal.close()


# -- the client ----------------------------------------------------------------------------------


@asynccontextmanager
async def silent_origin(answer: bytes | None = None) -> AsyncIterator[str]:
    """A server that completes the client handshake, then never answers (or sends `answer`)."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            fs = await FramedStream.accept(
                stream, LinkOptions(cluster_id="edgekv", node_id="o", role="origin")
            )
            await fs.receive()  # the first request
            if answer is not None:
                await fs.send_frame(answer)
            await trio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_client_times_out_per_request() -> None:
    with trio.fail_after(10):
        async with silent_origin() as address, OriginClient(address, timeout=5) as c:
            c.timeout = 0.2  # a shorter timeout behind a longer one still fires on time
            results: list[float] = []

            async def timed(seconds: float) -> None:
                c.timeout = seconds
                t0 = trio.current_time()
                with pytest.raises(OriginUnavailable, match="no answer"):
                    await c.put("s", "k", b"v")
                results.append(trio.current_time() - t0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(timed, 3.0)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(timed, 0.2)
            assert len(results) == 2
            assert min(results) < 1.0  # the 0.2 s request did not wait for the 3 s one


@pytest.mark.parametrize(
    "answer",
    [
        struct.pack(">I", 3) + b"\xff\xff\xff",  # not CBOR
        struct.pack(">I", 2) + b"\xc1\x01",  # a tag
        struct.pack(">I", 1) + b"\x01",  # not a map
        struct.pack(">I", 1 << 30),  # oversize
    ],
)
async def test_client_garbage_answer_fails_the_request(answer: bytes) -> None:
    with trio.fail_after(10):
        async with silent_origin(answer) as address, OriginClient(address, timeout=5) as c:
            with pytest.raises(OriginUnavailable, match="lost"):
                await c.put("s", "k", b"v")


async def test_one_client_many_tasks_share_sends_and_commits(tmp_path: Path) -> None:
    from edgekv.origin.server import Origin

    with trio.fail_after(20):
        async with (
            Origin(data_dir=tmp_path, listen="127.0.0.1:0") as origin,
            OriginClient(origin.address, timeout=10) as c,
        ):
            await c.create_store("s")
            versions: dict[str, int] = {}

            async def writer(i: int) -> None:
                for j in range(10):
                    key = f"w{i}:{j}"
                    versions[key] = (await c.put("s", key, key.encode())).seq

            groups_before = origin.sequencer.groups
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(writer, i)
            assert sorted(versions.values()) == list(range(2, 502))
            assert origin.sequencer.groups - groups_before < 250  # writes shared groups
            for key, seq in versions.items():
                entry = await c.get_entry("s", key)
                assert entry is not None and entry.value == key.encode()
                assert entry.version.seq == seq


async def test_more_requests_in_flight_than_the_connection_limit(tmp_path: Path) -> None:
    from edgekv.node.limits import NetLimits
    from edgekv.origin.server import Origin

    n = 400  # ~24 KB of write requests in flight: the origin stops reading for a while
    limits = NetLimits(client_unsent_bytes=4096)
    with trio.fail_after(20):
        async with (
            Origin(data_dir=tmp_path, listen="127.0.0.1:0", net_limits=limits) as origin,
            OriginClient(origin.address, timeout=10) as c,
        ):
            await c.create_store("s")
            seqs: list[int] = []

            async def writer(i: int) -> None:
                seqs.append((await c.put("s", f"k{i}", b"v")).seq)

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(writer, i)
            assert sorted(seqs) == list(range(2, n + 2))
            assert origin.client_pauses > 0
            # under trio the reads went through the origin's one epoll (origin/poller.py)
            assert origin.client_poller is not None and origin.client_poller.rounds > 0


def test_origin_and_client_under_asyncio(tmp_path: Path) -> None:
    """The flusher reports through asyncio's loop; answers go through the writer tasks."""
    from edgekv.origin.server import Origin

    async def main() -> list[int]:
        with anyio.fail_after(20):
            async with (
                Origin(data_dir=tmp_path, listen="127.0.0.1:0") as origin,
                OriginClient(origin.address, timeout=10) as c,
            ):
                await c.create_store("s")
                seqs: list[int] = []

                async def writer(i: int) -> None:
                    seqs.append((await c.put("s", f"k{i}", b"v")).seq)

                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(writer, i)
                assert origin.sequencer.flush_count > 0  # durable: the flusher threads ran
                assert origin.client_poller is None  # asyncio: one reader task per connection
                assert await c.get("s", "k7") == b"v"
                return sorted(seqs)

    assert anyio.run(main, backend="asyncio") == list(range(2, 42))


def test_client_under_asyncio_writes_the_socket_until_its_transport_holds_bytes(
    tmp_path: Path,
) -> None:
    """Under asyncio requests are written to the socket directly (node/sockio.py) until a write
    the kernel does not take whole: its rest, and everything after it, go through the stream's
    transport, in order."""
    from edgekv.origin.server import Origin

    big = b"x" * ((1 << 20) - 64)

    async def main() -> None:
        with anyio.fail_after(60):
            async with (
                Origin(data_dir=tmp_path, listen="127.0.0.1:0") as origin,
                OriginClient(origin.address, timeout=30) as c,
            ):
                await c.create_store("s")
                conn = c._conn
                assert conn is not None and conn.writes is not None
                async with anyio.create_task_group() as tg:
                    for i in range(24):  # about 24 MiB queued behind the first
                        tg.start_soon(c.put, "s", f"k{i}", big + bytes([i]))
                assert conn.writes is None  # the transport holds the rest: it writes from now on
                for i in range(24):
                    assert await c.get("s", f"k{i}") == big + bytes([i])

    anyio.run(main, backend="asyncio")


@pytest.mark.parametrize(
    ("req_id", "seqs", "written_at"),
    [
        (1, [7], 1_764_275_000_000),
        (2**64 - 1, [2**63], 0),  # the largest id the fast path takes
        (2**64, [5], 1),  # beyond it: the generic encoder
        (-3, [5], 1),
        (9, [None], 1),  # a no-op write: no seq
        (9, [4, None, 5], 2),  # a batch
    ],
)
def test_write_acks_decode_to_the_documented_answer(
    req_id: int, seqs: list[int | None], written_at: int
) -> None:
    import cbor2

    from edgekv.origin.clientconn import ack_frame
    from edgekv.origin.writer import Planned

    ticket = Ticket(StoreCommand("create", "s"), lambda _t: None)
    items = [("s", f"k{s}", Put(f"k{s}", b"v")) for s in seqs if s is not None]
    ticket.planned, ticket.written_at = Planned(items, seqs), written_at  # type: ignore[arg-type]
    frame = ack_frame(req_id, ticket, 1 << 20)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    done = [s for s in seqs if s is not None]
    first, last = (min(done), max(done)) if done else (0, 0)
    assert cbor2.loads(frame[4:]) == {
        "t": 51,
        "id": req_id,
        "seq": last,
        "written_at": written_at,
        "seqs": seqs,
        "covers": [[first, last]] if done else [],
    }
