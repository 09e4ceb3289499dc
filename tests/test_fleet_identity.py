"""Advertised addresses and stable node identity (issue #14, step 1).

Real sockets on loopback: nodes bound to a wildcard address advertise a dialable one, a node
id survives restarts in the data dir, and a node back on a new address is the same member
(its old address is forgotten everywhere it spoke).  IPv6 included.
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

import edgekv
from edgekv.errors import InvalidInput
from edgekv.node.identity import advertised_address, is_unspecified, load_node_id
from test_edge_harness import wait_until


def _can(family: socket.AddressFamily, kind: socket.SocketKind, address: tuple[str, int]) -> bool:
    """Whether this machine can bind (stream) or route to (datagram) `address`."""
    try:
        with socket.socket(family, kind) as s:
            (s.bind if kind == socket.SOCK_STREAM else s.connect)(address)
        return True
    except OSError:
        return False


def _has_ipv6_loopback() -> bool:
    return _can(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0))


def test_node_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_node_id(tmp_path, None, "edge")
    assert first.startswith("edge-") and len(first) == len("edge-") + 16
    assert load_node_id(tmp_path, None, "edge") == first
    assert (tmp_path / "node-id").read_text().strip() == first
    # an explicit id wins, and is what a fresh data dir keeps
    assert load_node_id(tmp_path, "other", "edge") == "other"
    assert load_node_id(tmp_path / "fresh", "named", "edge") == "named"
    assert load_node_id(tmp_path / "fresh", None, "edge") == "named"
    # no data dir: a new id per run
    assert load_node_id(None, None, "edge") != load_node_id(None, None, "edge")
    with pytest.raises(InvalidInput):
        load_node_id(tmp_path, "", "edge")


def test_advertised_address_rules() -> None:
    assert is_unspecified("0.0.0.0") and is_unspecified("::") and is_unspecified("")
    assert not is_unspecified("127.0.0.1") and not is_unspecified("example.org")
    assert advertised_address("10.1.2.3", 7300, None) == "10.1.2.3:7300"
    assert advertised_address("0.0.0.0", 7300, "edge-1.example:7400") == "edge-1.example:7400"
    # the interface that routes to the first seed
    assert advertised_address("0.0.0.0", 7301, None, ["127.0.0.1:7300"]) == "127.0.0.1:7301"
    for bad in ("0.0.0.0:7300", "[::]:7300", "nonsense"):
        with pytest.raises(InvalidInput):
            advertised_address("0.0.0.0", 7300, bad)
    # no seed: the default route's interface, never the wildcard itself
    addr = advertised_address("0.0.0.0", 7300, None) if _routes_anywhere() else "x:1"
    assert not is_unspecified(addr.rpartition(":")[0])
    if _has_ipv6_loopback():
        assert advertised_address("::", 7301, None, ["[::1]:7300"]) == "[::1]:7301"


def _routes_anywhere() -> bool:
    return _can(socket.AF_INET, socket.SOCK_DGRAM, ("192.0.2.1", 9))


async def test_wildcard_binds_advertise_a_dialable_address_and_replicate(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(data_dir=tmp_path / "origin", listen="127.0.0.1:0") as origin,
            edgekv.OriginClient(origin.address) as client,
            AsyncExitStack() as stack,
        ):
            await client.create_store("flags")
            edges: list[edgekv.EdgeNode] = []
            for _ in range(2):
                edge = edgekv.EdgeNode(
                    listen="0.0.0.0:0", origin=origin.address, peers=[e.address for e in edges]
                )
                edges.append(await stack.enter_async_context(edge))
                assert edge.address.startswith("127.0.0.1:")
            await client.put("flags", "k", b"v")
            await wait_until(lambda: all(e.replica.root == origin.replica.root for e in edges), 10)
            for e in edges:
                assert not any(a.startswith("0.0.0.0") for a in e.gossip.peers())


async def test_a_node_back_on_a_new_address_is_the_same_member(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with (
            edgekv.Origin(data_dir=tmp_path / "origin", listen="127.0.0.1:0") as origin,
            edgekv.OriginClient(origin.address) as client,
            edgekv.EdgeNode(origin=origin.address, node_id="witness") as witness,
        ):
            await client.create_store("flags")
            # the edge is given the origin as "localhost": the origin answers as 127.0.0.1,
            # and the seed row under the name it was given does not linger
            host_alias = origin.address.replace("127.0.0.1", "localhost")
            seeds = [witness.address]
            async with edgekv.EdgeNode(
                origin=host_alias, peers=seeds, data_dir=str(tmp_path / "edge")
            ) as edge:
                first_id, first_address = edge.node_id, edge.address
                await edge.open("flags").put("a", b"1")
                await wait_until(lambda: first_address in witness.gossip.peers(), 10)
                assert host_alias not in edge.gossip.peers()
                assert edge.is_ready() and edge.status()["origin"] == origin.address
            async with edgekv.EdgeNode(
                origin=origin.address, peers=seeds, data_dir=str(tmp_path / "edge")
            ) as edge:
                assert edge.node_id == first_id and edge.address != first_address
                await edge.open("flags").put("b", b"2")

                assert origin.runtime is not None
                tables = (witness.gossip, origin.runtime.gossip)

                def forgotten() -> bool:
                    return all(
                        first_address not in g.peers() and edge.address in g.peers() for g in tables
                    )

                await wait_until(forgotten, 15)
                await wait_until(lambda: witness.replica.root == origin.replica.root, 10)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(data_dir=None, listen="[::1]:0") as origin,
            edgekv.OriginClient(origin.address) as client,
            edgekv.EdgeNode(listen="[::]:0", origin=origin.address) as edge,
        ):
            assert origin.address.startswith("[::1]:") and edge.address.startswith("[::1]:")
            await client.create_store("flags")
            await client.put("flags", "k", b"v6")
            await wait_until(lambda: edge.replica.root == origin.replica.root, 10)
            assert edge.open("flags").get("k") == b"v6"


def test_membership_ignores_gossip_about_a_forgotten_address() -> None:
    import random
    from collections import Counter

    from edgekv.gossip.config import GossipConfig
    from edgekv.gossip.membership import Membership
    from edgekv.gossip.peer import DEAD

    m = Membership("10.0.0.1:1", "edge", GossipConfig(), random.Random(1), Counter())
    m.heard_from("10.0.0.2:1", 0.0)
    m.forget("10.0.0.2:1")
    assert "10.0.0.2:1" not in m.peers and m.counters["members_moved"] == 1
    m.merge_rows([("10.0.0.2:1", "edge", 5, DEAD), ("10.0.0.3:1", "edge", 0, DEAD)], 1.0)
    assert "10.0.0.2:1" not in m.peers and "10.0.0.3:1" in m.peers
    m.heard_from("10.0.0.2:1", 2.0)  # something speaks from there again: a member again
    assert m.peers["10.0.0.2:1"].state == "alive"
