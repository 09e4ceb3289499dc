"""Push windows from the links' own round trips (issue #15): the kernel's lowest round trip of
a TCP connection (TCP_INFO min_rtt) excludes both ends' scheduling delays, which inflate a SWIM
probe's on a loaded host (loopback probes of 5-40 ms held writes that long at the origin)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import anyio.abc
import anyio.streams.memory
import pytest
import trio

import edgekv
from edgekv.node.sockio import tcp_min_rtt
from test_edge_harness import wait_until

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")


async def _read_one(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        await stream.receive()


@linux
async def test_tcp_min_rtt_of_a_loopback_connection() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.serve, _read_one)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"x" * 100)
                await wait_until(lambda: tcp_min_rtt(stream) > 0.0, within=5)
                assert tcp_min_rtt(stream) < 0.05
            nursery.cancel_scope.cancel()
    assert tcp_min_rtt(anyio.streams.memory.MemoryObjectSendStream) == 0.0  # type: ignore[arg-type]


@linux
async def test_the_origin_sizes_its_push_window_by_the_tcp_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(data_dir=str(tmp_path / "origin"), listen="127.0.0.1:0") as origin,
            edgekv.EdgeNode(origin=origin.address, node_id="e") as edge,
        ):
            assert origin.runtime is not None
            gossip = origin.runtime.gossip
            links = gossip.dissemination.link_rtts  # type: ignore[attr-defined]
            await wait_until(lambda: edge.address in links, within=10)
            window = gossip.dissemination.window(edge.address, 0.15)  # type: ignore[attr-defined]
            assert 0.0 < links[edge.address] < 0.01
            floor = gossip.dissemination.config.push_min_window  # type: ignore[attr-defined]
            assert window == max(links[edge.address], floor)
