"""Tokens are checked per operation, whatever role a connection declares (issue #11).

An edge holding the cluster key used to be trusted for everything: a connection that declared
role "edge" could commit a put without any token.  Now every forwarded request needs a token
whose scope covers it; an edge presents its own write token (`EdgeNode(token=...)`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import edgekv
from edgekv.errors import Unauthorized
from test_edge_harness import wait_until

KEY = b"cluster-secret"
TOKENS = {"admin": "write:*", "edge-writer": "write:flags", "reader": "read:flags"}


async def test_a_keyed_edge_without_a_token_cannot_write(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            edgekv.Origin(
                data_dir=str(tmp_path / "origin"),
                listen="127.0.0.1:0",
                cluster_key=KEY,
                tokens=TOKENS,
            ) as origin,
            edgekv.OriginClient(origin.address, "admin", cluster_key=KEY) as client,
        ):
            await client.create_store("flags")
            await client.put("flags", "k", b"v0")
            async with (
                edgekv.EdgeNode(origin=origin.address, cluster_key=KEY, write_timeout=5) as anon,
                edgekv.EdgeNode(
                    origin=origin.address, cluster_key=KEY, token="reader", write_timeout=5
                ) as reader,
                edgekv.EdgeNode(
                    origin=origin.address, cluster_key=KEY, token="edge-writer", write_timeout=5
                ) as writer,
            ):
                await wait_until(lambda: all(e.replica.has_store("flags") for e in (anon, writer)))
                with pytest.raises(Unauthorized, match="token is required"):
                    await anon.open("flags").put("k", b"forged")
                with pytest.raises(Unauthorized, match="no write access"):
                    await reader.open("flags").put("k", b"forged")
                # a raw forwarded request naming another token is refused the same way
                with pytest.raises(Unauthorized, match="unknown token"):
                    await anon._write(
                        "flags",
                        {
                            "op": "put",
                            "store": "flags",
                            "key": "k",
                            "value": b"forged",
                            "token": "guess",
                        },
                    )
                assert await client.get("flags", "k") == b"v0"
                v = await writer.open("flags").put("k", b"from the edge")
                assert await client.get("flags", "k") == b"from the edge"
                assert writer.watermark >= v.seq
                # the write token's scope is checked too: another store is refused
                await client.create_store("other")
                await wait_until(lambda: writer.replica.has_store("other"))
                with pytest.raises(Unauthorized, match="no write access"):
                    await writer.open("other").put("k", b"x")
