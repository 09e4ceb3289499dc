"""TLS with a cluster CA and mutual authentication (issue #11): a TLS testnet replicates;
nodes without a certificate from the cluster CA are refused at the handshake; clients verify the
origin and may come without a certificate; the HTTP port serves HTTPS."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import httpx
import pytest
import trio

import edgekv
from edgekv.errors import InvalidInput, OriginUnavailable, RemoteProtocolError
from edgekv.node.certs import CertAuthority, write_dev_certs
from edgekv.node.tcp import FramedStream, LinkOptions
from edgekv.node.tlsconfig import TlsConfig
from edgekv.testnet import Testnet as TlsTestnet
from test_edge_harness import wait_until


def _config(d: Path, name: str) -> TlsConfig:
    return TlsConfig(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem")


async def test_tls_testnet_replicates_and_refuses_nodes_without_a_cluster_cert(
    tmp_path: Path,
) -> None:
    stranger_dir = tmp_path / "stranger"
    write_dev_certs(stranger_dir, ["stranger"])  # another CA: a valid cert, the wrong signer
    with trio.fail_after(60):
        async with TlsTestnet(edges=3, network="tcp", latency=0.002, tls=True) as net:
            assert net.tls_dir is not None
            await net.client.create_store("s")
            for i in range(5):
                await net.client.put("s", f"k{i}", b"v%d" % i)
            assert await net.converged(timeout=20)
            assert all(e.open("s").get("k4") == b"v4" for e in net.edges)
            assert net.origin is not None  # an in-process origin (network="tcp")
            origin_stats = net.origin.transport.stats
            rejected = origin_stats.rejected_connections
            assert rejected == 0

            origin = net.address_of("origin")
            # a node that trusts the cluster CA but whose certificate another CA signed:
            # the origin refuses it at the TLS handshake
            async with edgekv.EdgeNode(
                origin=origin,
                tls=TlsConfig(
                    net.tls_dir / "ca.pem",
                    stranger_dir / "stranger.pem",
                    stranger_dir / "stranger-key.pem",
                ),
                cluster_id=net.cluster_id,
                ready_timeout=0,
            ) as stranger:
                await wait_until(lambda: origin_stats.rejected_connections > rejected)
                assert not stranger.replica.has_store("s")
            rejected = origin_stats.rejected_connections
            # a node without TLS at all: refused too
            async with edgekv.EdgeNode(
                origin=origin, cluster_id=net.cluster_id, ready_timeout=0
            ) as plain:
                await wait_until(lambda: origin_stats.rejected_connections > rejected)
                assert not plain.replica.has_store("s")
            rejected = origin_stats.rejected_connections
            # TLS that verifies the origin but declares a node role with no certificate:
            # refused before its HELLO is answered
            no_cert = TlsConfig(net.tls_dir / "ca.pem")
            with pytest.raises(RemoteProtocolError, match="closed the connection"):
                await FramedStream.connect(
                    origin,
                    LinkOptions(
                        cluster_id=net.cluster_id,
                        node_id="sneaky",
                        role="edge",
                        ssl_context=no_cert.client_context(),
                    ),
                )
            await wait_until(lambda: origin_stats.rejected_connections > rejected)

            # a client verifies the origin and may come without a certificate (tokens decide)
            async with edgekv.OriginClient(
                origin, cluster_id=net.cluster_id, tls=no_cert, timeout=5
            ) as client:
                assert await client.get("s", "k0") == b"v0"
            # a plain client gets nowhere; a client trusting another CA refuses the origin
            for tls in (None, TlsConfig(stranger_dir / "ca.pem")):
                async with edgekv.OriginClient(
                    origin, cluster_id=net.cluster_id, tls=tls, timeout=1
                ) as client:
                    with pytest.raises(OriginUnavailable):
                        await client.get("s", "k0")

            # replication keeps working after all that
            await net.client.put("s", "after", b"yes")
            assert await net.converged(timeout=20)
            assert all(e.open("s").get("after") == b"yes" for e in net.edges)


async def test_https_on_the_origin_http_port(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, ["origin"])
    with trio.fail_after(30):
        async with edgekv.Origin(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            http="127.0.0.1:0",
            tls=_config(tmp_path, "origin"),
        ) as origin:
            verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            base = f"https://{origin.http_address}"
            async with httpx.AsyncClient(verify=verify, timeout=10) as http:
                r = await http.get(f"{base}/v1/status")
                assert r.status_code == 200
                assert r.json()["role"] == "origin"
            async with httpx.AsyncClient(timeout=10) as http:  # system CAs: the origin's is not
                with pytest.raises(httpx.ConnectError):
                    await http.get(f"{base}/v1/status")


async def test_edge_https_and_client_hostname_check(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, ["origin", "edge"], hosts=["127.0.0.1"])
    with trio.fail_after(30):
        async with (
            edgekv.Origin(
                data_dir=tmp_path / "data", listen="127.0.0.1:0", tls=_config(tmp_path, "origin")
            ) as origin,
            edgekv.EdgeNode(
                origin=origin.address, http="127.0.0.1:0", tls=_config(tmp_path, "edge")
            ) as edge,
        ):
            verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            async with httpx.AsyncClient(verify=verify, timeout=10) as http:
                r = await http.get(f"https://{edge.http_address}/status")
                assert r.status_code == 200 and r.json()["role"] == "edge"
            # with the host name check, the name dialled must be in the origin's certificate
            checked = TlsConfig(tmp_path / "ca.pem", verify_hostname=True)
            async with edgekv.OriginClient(origin.address, tls=checked, timeout=5) as client:
                assert await client.stores() == []
            port = origin.address.rpartition(":")[2]
            async with edgekv.OriginClient(f"localhost:{port}", tls=checked, timeout=1) as client:
                with pytest.raises(OriginUnavailable, match="match"):
                    await client.stores()


def test_origin_and_client_over_tls_under_asyncio(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, ["origin"])

    async def main() -> bytes | None:
        with anyio.fail_after(20):
            async with (
                edgekv.Origin(
                    data_dir=tmp_path / "data",
                    listen="127.0.0.1:0",
                    tls=_config(tmp_path, "origin"),
                ) as origin,
                edgekv.OriginClient(
                    origin.address, tls=TlsConfig(tmp_path / "ca.pem"), timeout=10
                ) as client,
            ):
                await client.create_store("s")
                await client.put("s", "k", b"over tls")
                return await client.get("s", "k")

    assert anyio.run(main, backend="asyncio") == b"over tls"


def test_config_errors_are_clear(tmp_path: Path) -> None:
    ca = CertAuthority.create()
    ca_path = ca.save(tmp_path)
    with pytest.raises(InvalidInput, match="cannot load the TLS CA"):
        TlsConfig(tmp_path / "missing.pem")
    with pytest.raises(InvalidInput, match="both a certificate and its key"):
        TlsConfig(ca_path, cert=ca_path)
    with pytest.raises(InvalidInput, match="needs --tls-ca"):
        TlsConfig.from_options("cert.pem", "key.pem", None)
    assert TlsConfig.from_options(None, None, None) is None
    # a certificate with somebody else's key
    cert, _ = ca.issue_files(tmp_path, "a")
    _, other_key = ca.issue_files(tmp_path, "b")
    with pytest.raises(InvalidInput, match="cannot load the TLS certificate"):
        TlsConfig(ca_path, cert, other_key)
    with pytest.raises(InvalidInput, match="serving TLS needs a certificate"):
        TlsConfig(ca_path).server_context()
    assert (tmp_path / "a-key.pem").stat().st_mode & 0o077 == 0  # private keys: owner only
