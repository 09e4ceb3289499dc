"""The origin over TCP with OriginClient: every operation, every error path, reconnection."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from edgekv.crdt import Put, ZAdd
from edgekv.errors import (
    InvalidInput,
    OriginUnavailable,
    StoreExists,
    StoreNotFound,
    Unauthorized,
    VersionMismatch,
    WrongKind,
)
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.origin.client import OriginClient
from edgekv.origin.server import Origin

TOKENS = {"admin": "write:*", "reader": "read:flags", "writer": ["write:flags"]}


@asynccontextmanager
async def running(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Origin, OriginClient]]:
    with trio.fail_after(20):
        async with Origin(data_dir=tmp_path, listen="127.0.0.1:0", **kw) as origin:
            token = "admin" if kw.get("tokens") else None
            async with OriginClient(origin.address, token=token, timeout=5) as client:
                yield origin, client


async def test_every_operation(tmp_path: Path) -> None:
    async with running(tmp_path) as (origin, c):
        v1 = await c.create_store("flags")
        assert v1.seq == 1
        assert await c.stores() == ["flags"]
        v = await c.put("flags", "greeting", b"hello")
        assert v.seq == 2 and v.written_at >= v1.written_at
        assert await c.get("flags", "greeting") == b"hello"
        entry = await c.get_entry("flags", "greeting")
        assert entry is not None and entry.version == v and entry.expires_at is None
        assert (await c.put("flags", "tmp", b"x", ttl=60)).seq == 3
        entry = await c.get_entry("flags", "tmp")
        assert entry is not None and entry.expires_at is not None
        assert await c.scan("flags", "g*") == ["greeting"]
        assert await c.zadd("flags", "rank", {b"alice": 10.0, b"bob": 5}) is not None
        assert await c.zrange_by_score("flags", "rank", 0, 7) == [(b"bob", 5.0)]
        assert await c.zscan("flags", "rank", "a*") == [(b"alice", 10.0)]
        assert await c.zrem("flags", "rank", [b"bob"]) is not None
        assert await c.zrem("flags", "rank", [b"nobody"]) is None
        await c.bf_add("flags", "blocked", [b"10.0.0.1"], capacity=1000, error_rate=0.001)
        await c.bf_add("flags", "blocked2", [b"a"], m=1024, k=3)
        assert await c.bf_exists("flags", "blocked", b"10.0.0.1")
        assert not await c.bf_exists("flags", "blocked", b"10.0.0.2")
        assert await c.delete("flags", "greeting") is not None
        assert await c.delete("flags", "greeting") is None
        assert await c.get("flags", "greeting") is None
        versions = await c.batch(
            "flags", [Put("a", b"1"), ZAdd("z", {b"m": 1.0}), {"op": "delete", "key": "none"}]
        )
        assert versions[2] is None
        assert versions[0] is not None and versions[1] is not None
        assert versions[1].seq == versions[0].seq + 1
        # conditional writes
        cur = await c.get_entry("flags", "a")
        assert cur is not None
        v2 = await c.put("flags", "a", b"2", if_version=cur.version.seq)
        with pytest.raises(VersionMismatch):
            await c.put("flags", "a", b"3", if_version=cur.version.seq)
        assert (await c.put("flags", "new", b"n", if_version=0)).seq > v2.seq
        with pytest.raises(VersionMismatch):
            await c.put("flags", "new", b"n", if_version=0)
        # force changes the kind
        await c.put("flags", "z", b"plain", force=True)
        assert await c.get("flags", "z") == b"plain"
        await c.drop_store("flags")
        assert await c.stores() == []
        with pytest.raises(StoreNotFound):
            await c.get("flags", "a")
        await c.create_store("flags")
        assert await c.get("flags", "a") is None  # recreated empty
        assert origin.watermark == origin.sequencer.next_seq - 1


async def test_error_paths_keep_the_origin_serving(tmp_path: Path) -> None:
    async with running(tmp_path) as (origin, c):
        await c.create_store("s")
        bad: list[tuple[type[Exception], Any]] = [
            (InvalidInput, c.put("s", "k" * 513, b"v")),
            (InvalidInput, c.put("s", "", b"v")),
            (InvalidInput, c.put("s", "k", b"v" * ((1 << 20) + 1))),
            (InvalidInput, c.put("bad name!", "k", b"v")),
            (InvalidInput, c.create_store("x" * 65)),
            (InvalidInput, c.put("s", "k", "not bytes")),  # type: ignore[arg-type]
            (InvalidInput, c.put("s", "k", b"v", ttl=-1)),
            (InvalidInput, c.zadd("s", "z", {b"m": math.nan})),
            (InvalidInput, c.zadd("s", "z", {})),
            (InvalidInput, c.bf_add("s", "b", [b"x"], m=4, k=1)),
            (InvalidInput, c.bf_add("s", "b", [b"x"], error_rate=2.0)),
            (InvalidInput, c.zrange_by_score("s", "z", math.nan, 1)),
            (InvalidInput, c.request({"op": "frobnicate", "store": "s"})),
            (InvalidInput, c.request({"op": "put", "store": "s", "key": 5, "value": b""})),
            (
                InvalidInput,
                c.request(
                    {"op": "bf_add", "store": "s", "key": "b", "items": [b"x"], "error_rate": "x"}
                ),
            ),
            (InvalidInput, c.request({"op": "batch", "store": "s", "ops": [{"op": "put"}]})),
            (InvalidInput, c.request({"op": "batch", "store": "s", "ops": "nope"})),
            (  # larger than a frame: refused before it is sent, the connection stays usable
                InvalidInput,
                c.batch("s", [Put(f"big{i}", b"x" * (1 << 20)) for i in range(20)]),
            ),
            (StoreNotFound, c.put("missing", "k", b"v")),
            (StoreNotFound, c.get("missing", "k")),
            (StoreNotFound, c.drop_store("missing")),
            (StoreExists, c.create_store("s")),
        ]
        for kind, call in bad:
            with pytest.raises(kind):
                await call
        await c.zadd("s", "z", {b"m": 1.0})
        with pytest.raises(WrongKind):
            await c.put("s", "z", b"v")
        with pytest.raises(WrongKind):
            await c.get("s", "z")
        with pytest.raises(WrongKind):
            await c.batch("s", [Put("ok", b"1"), {"op": "bf_add", "key": "z", "items": [b"x"]}])
        assert await c.get("s", "ok") is None  # the failed batch left nothing behind
        assert (await c.put("s", "k", b"fine")).seq == origin.watermark


async def test_garbage_closes_only_that_connection(tmp_path: Path) -> None:
    async with running(tmp_path) as (origin, c):
        await c.create_store("s")
        host, port = origin.address.rsplit(":", 1)
        # raw garbage before the handshake
        with trio.fail_after(5):
            async with await anyio.connect_tcp(host, int(port)) as raw:
                await raw.send(b"\xff" * 64)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    while True:
                        await raw.receive()
        # a valid client handshake, then a malformed CBOR frame, then a non-request message
        for payload in (struct.pack(">I", 3) + b"\xff\xff\xff", None):
            fs = await FramedStream.connect(
                origin.address, LinkOptions(cluster_id="edgekv", node_id="evil", role="client")
            )
            if payload is None:
                await fs.send({"t": 40})  # PING is not a request
            else:
                await fs.send_frame(payload)
            with (
                trio.fail_after(5),
                pytest.raises((anyio.EndOfStream, OSError, anyio.BrokenResourceError)),
            ):
                await fs.receive()
            await fs.aclose()
        assert (await c.put("s", "k", b"v")).seq == 2


async def test_tokens(tmp_path: Path) -> None:
    async with running(tmp_path, tokens=TOKENS) as (origin, admin):
        await admin.create_store("flags")
        await admin.create_store("other")
        async with (
            OriginClient(origin.address, token=None, timeout=5) as anon,
            OriginClient(origin.address, token="nope", timeout=5) as wrong,
            OriginClient(origin.address, token="reader", timeout=5) as reader,
            OriginClient(origin.address, token="writer", timeout=5) as writer,
        ):
            for call in (
                anon.put("flags", "k", b"v"),
                anon.get("flags", "k"),
                anon.stores(),
                wrong.get("flags", "k"),
                reader.put("flags", "k", b"v"),
                reader.get("other", "k"),
                writer.put("other", "k", b"v"),
                writer.create_store("third"),
            ):
                with pytest.raises(Unauthorized):
                    await call
            await writer.put("flags", "k", b"v")
            assert await reader.get("flags", "k") == b"v"
            assert await reader.stores() == ["flags"]
            assert sorted(await admin.stores()) == ["flags", "other"]


async def test_reconnects_after_origin_restart(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with Origin(data_dir=tmp_path, listen="127.0.0.1:0") as origin:
            address = origin.address
            async with OriginClient(address, timeout=5) as c:
                await c.create_store("s")
                v = await c.put("s", "k", b"1")
        # a fresh origin on the same port, same data
        async with (
            Origin(data_dir=tmp_path, listen=address) as origin2,
            OriginClient(address, timeout=5) as c,
        ):
            assert origin2.recovered_rows == 2
            entry = await c.get_entry("s", "k")
            assert entry is not None and entry.version == v
            assert (await c.put("s", "k", b"2")).seq == 3


async def test_client_reconnects_transparently(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, c):
        await c.create_store("s")
        assert c._conn is not None
        await c._conn.stream.aclose()  # the connection dies under the client
        await trio.testing.wait_all_tasks_blocked()
        assert (await c.put("s", "k", b"v")).seq == 2
        assert c.reconnects == 1


async def test_unreachable_origin_raises_origin_unavailable() -> None:
    with trio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there now
        async with OriginClient(f"127.0.0.1:{port}", timeout=0.3) as c:
            with pytest.raises(OriginUnavailable):
                await c.stores()


async def test_a_client_closing_inside_a_frame_is_dropped_and_others_served(tmp_path: Path) -> None:
    async with running(tmp_path) as (origin, c):
        await c.create_store("s")
        fs = await FramedStream.connect(
            origin.address, LinkOptions(cluster_id="edgekv", node_id="torn", role="client")
        )
        await fs.send_frame(struct.pack(">I", 100) + b"\xa1")  # 1 of 100 promised bytes
        await fs.aclose()
        for i in range(3):  # the poller dropped that socket and serves the others
            assert (await c.put("s", f"k{i}", b"v")).seq == i + 2
