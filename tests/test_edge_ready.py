"""A fresh edge waits for its initial sync on enter, so stores open right after `async with`."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import edgekv


async def test_fresh_edge_opens_the_origins_stores_right_after_enter(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(data_dir=str(tmp_path / "origin"), listen="127.0.0.1:0") as origin,
            edgekv.OriginClient(origin.address) as client,
        ):
            await client.create_store("flags")
            for i in range(50):
                await client.put("flags", f"k{i:02}", b"v%d" % i)
            async with edgekv.EdgeNode(origin=origin.address) as edge:
                assert edge.is_ready()
                flags = edge.open("flags")  # no waiting loop needed
                assert flags.get("k49") == b"v49"
                assert len(flags.scan("k*")) == 50


async def test_unreachable_origin_bounds_the_wait_and_the_node_still_serves(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        # nothing listens on this port: the origin never answers
        with trio.socket.socket() as s:
            await s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        start = trio.current_time()
        async with edgekv.EdgeNode(origin=dead, ready_timeout=0.5) as edge:
            assert trio.current_time() - start >= 0.5
            assert not edge.is_ready()
            with pytest.raises(edgekv.StoreNotFound):
                edge.open("flags")


def test_ready_timeout_must_not_be_negative() -> None:
    with pytest.raises(edgekv.InvalidInput):
        edgekv.EdgeNode(origin="127.0.0.1:1", ready_timeout=-1)
