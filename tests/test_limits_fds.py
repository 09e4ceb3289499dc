"""A flood on every port of a node at once, past the process's fd limit (issue #12).

Each port caps its own connections below the fd limit, but the limit is the process's: a
flood on the gossip port and an HTTP port together once drove the node to EMFILE (every
accept failing, and a new store's SQLite files, log descriptors and outbound dials with it).
Here a real origin or edge (`ulimit -n 128`) is flooded on both of its ports at once, with
more idle connections than its fd limit, held (refilled as the node closes them) while a
legitimate client writes, a new store is created (new SQLite files at every node), gossip
carries the writes to the edges and the HTTP API answers; then, the flood gone, its
descriptors come back (the HTTP ones its client closed at once, not at the 5 s head timeout:
before that fix, after-flood HTTP connections found the budget full) and fresh connections
on both ports are served, over HTTP twice as many as the budget holds, one after another.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgekv.node.tcp import FramedStream, LinkOptions, parse_address
from edgekv.origin.client import OriginClient
from edgekv.testnet.procs import ProcessCluster
from test_limits_process import fd_headroom, wait_for

pytestmark = pytest.mark.anyio

NOFILE = 128
PER_PORT = 150  # idle connections held on each port: together over twice the fd limit
FLOOD_SECONDS = 60.0  # the flood stops by itself after this (bounded whatever happens)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class Flood:
    """Holds up to `per_port` idle connections to each address from a thread, replacing every
    one the node closes (a refused one, an HTTP head timeout), until stopped."""

    def __init__(self, addresses: list[str], per_port: int) -> None:
        self.addresses = [parse_address(a) for a in addresses]
        self.per_port = per_port
        self.held: list[list[socket.socket]] = [[] for _ in addresses]
        self.rounds = 0
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _alive(self, s: socket.socket) -> bool:
        try:
            return s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _run(self) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline:
            for (host, port), held in zip(self.addresses, self.held, strict=True):
                for s in [s for s in held if not self._alive(s)]:
                    held.remove(s)
                    s.close()
                while len(held) < self.per_port and not self._stop.is_set():
                    s = socket.socket()
                    s.settimeout(0.5)
                    try:
                        s.connect((host, port))
                    except OSError:
                        s.close()
                        break  # the backlog is full: try again next round
                    s.setblocking(False)
                    held.append(s)
                    self.opened += 1
            self.rounds += 1
            self._stop.wait(0.05)

    @contextmanager
    def running(self) -> Iterator[Flood]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)
            for held in self.held:
                for s in held:
                    s.close()


async def writes_reach_every_edge(
    cluster: ProcessCluster, client: OriginClient, store: str, key: str
) -> None:
    """A write through `client` is acknowledged, reaches every edge by gossip and is read
    back through every edge's admin HTTP API."""
    v = await client.put(store, key, key.encode())
    await wait_for(lambda: all(w >= v.seq for w in cluster.watermarks().values()))
    for name, read in cluster.readers().items():
        assert await anyio.to_thread.run_sync(read, store, key) == key.encode(), name


def status_of(cluster: ProcessCluster, name: str) -> dict[str, Any]:
    status = cluster.node_status(name)
    assert status is not None, f"{name}'s HTTP API does not answer"
    return status


def counters(status: dict[str, Any], name: str) -> dict[str, Any]:
    transport: dict[str, Any]
    transport = status["transport"] if name == "origin" else status["counters"]["transport"]
    return transport


class KeptAlive:
    """One HTTP connection to a node, opened before a flood and kept open by asking for its
    status every 0.5 s (within the node's 5 s head timeout); counts answers and failures."""

    def __init__(self, address: str, path: str) -> None:
        self.url = f"http://{address}{path}"
        self.http = httpx.Client(timeout=5.0, trust_env=False)
        self.answered = 0
        self.failed: list[str] = []
        self.last: dict[str, Any] = {}

    def ask(self) -> None:
        try:
            r = self.http.get(self.url)
            r.raise_for_status()
            self.last = r.json()
            self.answered += 1
        except (httpx.HTTPError, ValueError) as exc:
            self.failed.append(repr(exc))

    async def keep(self, until: anyio.Event) -> None:
        while not until.is_set():
            await anyio.to_thread.run_sync(self.ask)
            with anyio.move_on_after(0.5):
                await until.wait()


def fresh_http_answers(address: str, path: str, n: int) -> int:
    """How many of `n` requests, each on a new connection, are answered 200."""
    ok = 0
    for _ in range(n):
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            try:
                ok += http.get(f"http://{address}{path}").status_code == 200
            except httpx.HTTPError:
                pass
    return ok


async def hold_a_flood(
    cluster: ProcessCluster, client: OriginClient, kept: KeptAlive, ports: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flood `ports` and, while the flood is held, write through `client` (to a store that
    exists and to a new one) and check every edge reads the writes and `kept` keeps being
    answered.  Returns the node's status under the flood and before it."""
    kept.ask()
    assert kept.answered == 1, kept.failed
    baseline = kept.last
    stop = anyio.Event()
    with fd_headroom(4 * PER_PORT + 64):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kept.keep, stop)
            with Flood(ports, PER_PORT).running() as flood:
                try:
                    # at its peak: more connections made than the node has descriptors
                    await wait_for(lambda: flood.opened >= NOFILE + 50 and flood.rounds >= 5)
                    answered = kept.answered
                    await writes_reach_every_edge(cluster, client, "s", "during")
                    await client.create_store("s2")  # new SQLite files at every node
                    await writes_reach_every_edge(cluster, client, "s2", "during")
                    await wait_for(lambda: kept.answered >= answered + 3)
                finally:
                    stop.set()
    return kept.last, baseline


def metric(http: str, name: str) -> float:
    """The value of the node's Prometheus metric `name` (one series) at `http`."""
    text = httpx.get(f"http://{http}/metrics", timeout=5.0, trust_env=False).text
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no {name} in /metrics"
    return float(found.group(1))


def given_back(cluster: ProcessCluster, name: str, baseline: dict[str, Any]) -> bool:
    """Whether the node's open descriptors and its fd budget are back near `baseline` (its
    status before the flood; a new store's SQLite files and a peer's connection may have
    come since)."""
    status = cluster.node_status(name)
    if status is None:
        return False  # not answered: the budget is still full
    fds, before = status["process"]["fds"], baseline["process"]["fds"]
    return bool(0 <= fds <= before + 20 and status["fds"]["held"] <= baseline["fds"]["held"] + 4)


async def flood_both_ports(tmp_path: Path, target: str) -> None:
    # a long handshake timeout: the flood's gossip connections stay until the node refuses
    # them or the flood goes, however slowly a loaded machine opens them
    args = ["--handshake-timeout", "60"]
    async with (
        ProcessCluster(2, tmp_path, nofile=NOFILE, node_args=args) as cluster,
        OriginClient(cluster.origin_address, timeout=10) as client,
    ):
        await client.create_store("s")
        await writes_reach_every_edge(cluster, client, "s", "before")
        gossip, http = cluster.address_of(target), cluster.procs[target].http
        assert http is not None
        path = "/v1/status" if target == "origin" else "/status"
        kept = KeptAlive(http, path)
        with kept.http:
            during, baseline = await hold_a_flood(cluster, client, kept, [gossip, http])
        assert cluster.procs[target].alive
        assert not kept.failed, kept.failed[:3]  # the HTTP API answered all along
        fds = during["process"]["fds"]
        assert 0 < fds < NOFILE, f"{target} had {fds} descriptors open under the flood"
        assert counters(during, target)["accept_errors"] == 0, "an accept failed (EMFILE)"
        assert counters(during, target)["refused_connections"] > 0
        budget = during["fds"]  # one count of connections for every port (fdbudget.py)
        assert budget["refused_inbound"] > 0 and budget["held"] <= budget["limit"], budget
        # the flood gone: its descriptors are given back (an HTTP connection its client
        # closed too, at once: not at the head timeout), and fresh connections on both ports
        # are served, over HTTP one after another twice as many as the whole budget
        await wait_for(lambda: given_back(cluster, target, baseline))
        n = 2 * budget["limit"]
        answered = await anyio.to_thread.run_sync(fresh_http_answers, http, path, n)
        if answered != n:
            after = status_of(cluster, target)
            raise AssertionError(f"{answered}/{n} answered: {after['fds']} {after['process']}")
        refused = await anyio.to_thread.run_sync(metric, http, "edgekv_fds_refused_inbound_total")
        assert refused >= budget["refused_inbound"] > 0
        assert await anyio.to_thread.run_sync(metric, http, "edgekv_fds_limit") == budget["limit"]
        fresh = []
        try:
            for i in range(20):
                fresh.append(
                    await FramedStream.connect(
                        gossip,
                        LinkOptions(cluster_id="edgekv", node_id=f"fresh{i}", role="client"),
                        connect_timeout=5,
                    )
                )
        finally:
            for fs in fresh:
                await anyio.aclose_forcefully(fs.stream)
        async with OriginClient(gossip, timeout=10) as again:
            if target == "origin":
                await writes_reach_every_edge(cluster, again, "s2", "after")
            else:
                await writes_reach_every_edge(cluster, client, "s2", "after")
                assert await again.get("s2", "after") == b"after"
        await wait_for(lambda: cluster.agreement()[0] >= 1.0)


@pytest.mark.parametrize("target", ["origin", "edge-0"])
async def test_a_flood_on_every_port_past_the_fd_limit_is_refused_not_fatal(
    tmp_path: Path, target: str
) -> None:
    await flood_both_ports(tmp_path, target)
