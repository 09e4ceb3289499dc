"""Across network namespaces (issue #14): two origins on one PostgreSQL log and three edges,
each in its own namespace on one bridge, bound to 0.0.0.0; the leader SIGKILLed during writes
from 16 clients.

Needs root (to make namespaces, a bridge and veth pairs) and a throwaway PostgreSQL; skips
with the reason otherwise.  The namespaces stand in for hosts: each daemon binds 0.0.0.0 and
advertises its namespace's address (the origins with `--advertise`, the edges by finding the
interface that routes to their first origin).  PostgreSQL and the 16 clients run in the root
namespace, which reaches the others over the bridge.  Everything (processes, namespaces,
bridge, PostgreSQL) is removed at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from edgekv.node.keys import generate_keypair
from edgekv.testnet.failover import run_failover
from edgekv.testnet.postgres import postgres_unavailable, throwaway_postgres


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"ekvp{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create a network namespace here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return postgres_unavailable()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextmanager
def bridge_network(names: list[str]) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """A bridge in the root namespace (address .1) and one namespace per name, each with a
    veth on the bridge (addresses .11, .12, ...); yields (bridge address, name -> namespace,
    name -> address)."""
    tag = secrets.token_hex(3)
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    bridge, made, links = f"ekb{tag}", [], []
    addresses, spaces = {}, {}
    try:
        _ip("link", "add", bridge, "type", "bridge")
        links.append(bridge)
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            ns, veth = f"ekv{tag}-{i}", f"ekv{tag}v{i}"
            spaces[name] = ns
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            links.append(veth)
            _ip("link", "set", veth, "master", bridge, "up")
            addresses[name] = f"{subnet}.{11 + i}"
            _ip("-n", ns, "addr", "add", f"{addresses[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield f"{subnet}.1", spaces, addresses
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


@contextmanager
def daemon(ns: str, args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """`edgekv ARGS` inside namespace `ns`, killed at the end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "edgekv", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)  # `ip netns exec` execs
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def ready(proc: subprocess.Popen[bytes]) -> str:
    """A daemon's first stdout line (it says where it listens)."""
    assert proc.stdout is not None
    return proc.stdout.readline().decode()


def field(line: str, name: str) -> str:
    """`name=value` or `name VALUE` from a daemon's ready line."""
    words = line.split()
    for w in words:
        if w.startswith(f"{name}="):
            return w.split("=", 1)[1]
    return words[words.index(name) + 1]


@pytest.mark.slow  # about 20 s on an idle 2-core machine (processes, PostgreSQL's initdb)
async def test_failover_across_namespaces(tmp_path: Path) -> None:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    names = ["origin-a", "origin-b", "edge-1", "edge-2", "edge-3"]
    with bridge_network(names) as (gateway, ns, ip), ExitStack() as stack:
        pg = stack.enter_context(throwaway_postgres(listen=[gateway]))
        dsn = pg.create_database("netns")  # through 127.0.0.1, for the checks
        dsn_there = pg.dsn_at(gateway).rsplit("/", 1)[0] + "/netns"  # from the namespaces
        private, public = generate_keypair(tmp_path / "keys")  # one key for both origins
        addresses = [f"{ip['origin-a']}:7300", f"{ip['origin-b']}:7300"]
        edges = ["edge-1", "edge-2", "edge-3"]
        started: dict[str, subprocess.Popen[bytes]] = {}
        for name in ["origin-a", "origin-b", *edges]:  # origin-a first: it leads
            if name.startswith("origin"):
                args = ["origin", "--data-dir", str(tmp_path / name), "--log", dsn_there]
                args += ["--listen", "0.0.0.0:7300", "--advertise", f"{ip[name]}:7300"]
                args += ["--http", "0.0.0.0:8300", "--signing-key", str(private)]
            else:  # no --advertise: the interface routing to the first origin
                args = ["edge", "--data-dir", str(tmp_path / name), "--listen", "0.0.0.0:7301"]
                args += ["--origin", ",".join(addresses), "--http", "0.0.0.0:8301"]
                args += ["--origin-public-key", str(public)]
                for other in edges[: edges.index(name)]:
                    args += ["--peer", f"{ip[other]}:7301"]
            # the bridge is private to the test: no TLS, cluster key or HTTP tokens (protected
            # mode would refuse 0.0.0.0 without them)
            started[name] = stack.enter_context(daemon(ns[name], [*args, "--insecure"]))
            if name == "origin-a":  # the others start together
                assert f"listening on {addresses[0]}" in ready(started[name])
        for name in ["origin-b", *edges]:
            line = ready(started[name])
            if name in edges:  # it found its address: not 0.0.0.0
                assert field(line, "address") == f"{ip[name]}:7301", line
            else:
                assert f"listening on {addresses[1]}" in line, line
        edge_http = [f"{ip[name]}:8301" for name in edges]
        status_b = f"http://{ip['origin-b']}:8300/v1/status"

        with trio.fail_after(120):
            async with httpx.AsyncClient(timeout=5) as http:
                from edgekv.origin.client import OriginClient

                async with OriginClient(addresses) as admin:
                    await admin.create_store("failover")

                async def roots() -> tuple[str | None, list[str]]:
                    leader = await http.get(status_b)
                    out = []
                    for h in edge_http:
                        out.append((await http.get(f"http://{h}/status")).json()["root"])
                    return leader.json()["root"], out

                report = await run_failover(
                    addresses,
                    addresses[0],
                    lambda: started["origin-a"].send_signal(signal.SIGKILL),
                    dsn,
                    roots,
                    clients=16,
                    before_kill=300,
                    after_kill=300,
                )
                for h in edge_http:  # no member row for an unspecified address
                    status = (await http.get(f"http://{h}/status")).json()
                    print(h, status["watermark"], status["root"], status["peers"])
                    assert not any(a.startswith("0.0.0.0") for a in status["peers"])
    print(report)
    assert report.ok, report
    assert report.failover_seconds <= 5.0, report
