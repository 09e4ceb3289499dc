"""edgekv beside Redis and etcd, the same work for each, on this machine.

Run: `python benchmarks/bench_peers.py [--replicas 5,20] [--runs 3] [--writes 1000] [--rate 100]
[--keys 1000000] [--only read,propagation,writes,memory,restart] [--systems edgekv,redis,etcd]`.
Prints a markdown section and writes it to benchmarks/results/peers.md (with a chart, peers.png);
a run of fewer parts (`--only`), systems or replica counts writes results/peers-partial.md (and
.png) instead, so a quick check does not replace the full report.

Needs redis-server, redis-benchmark and etcd (Debian: `apt-get install redis-server
etcd-server`); the script says so and exits when they are missing.  Every server runs on
127.0.0.1 in a temporary directory, each in its own process (own session, SIGKILLed at the end,
on Ctrl-C and on failure too, and with PR_SET_PDEATHSIG so none outlives this script).

What is measured, the same way for every system:
- read: local read latency, one client, 2,000 sequential reads of one 100-byte value after 200
  warm-up reads, each timed alone: `KvStore.get` in a process embedding an `EdgeNode` (and, for
  reference, a get through the edge's client port with `OriginClient` and the edge's admin HTTP
  GET), redis-py `GET` against a replica, etcd range requests
  through its JSON gateway (serializable: served by the member; linearizable: a quorum read).
- propagation: a writer makes `--writes` writes of one key at `--rate` per second to the source
  of truth (the origin, the Redis primary, the etcd leader), the value being the write's
  number.  One observer task per replica polls that key in a loop through the system's own
  cheap network read path, one connection per replica, the same loop for all: `OriginClient.get`
  on the edge's gossip port (a "client" connection served from the edge's replica,
  node/clientreads.py: one CBOR frame each way, like a RESP GET), redis-py GET, etcd
  serializable range through its JSON gateway (etcd has no cheaper public read path); a write is
  visible on a replica when it serves that number or a later one.  Reported: time from the
  write's acknowledgement to visibility on each replica (p50/p99) and on the last replica
  (p50/p99/max).  All observers share one asyncio loop, so the resolution is one polling round:
  its median is reported too.  Also reported: CPU milliseconds per write over the run (user +
  system, from /proc/PID/stat) of the source of truth, of a replica (mean), of all the
  system's processes, and of this script (the writer and the pollers): on a shared machine
  wall-clock latency follows load, CPU per write much less.
- writes: durable writes/s at the source of truth with 64 concurrent clients for 5 s, all in
  Python on asyncio: 64 `OriginClient`s (the origin's log fsynced per commit group), redis-py
  asyncio on 64 connections to a primary with `appendfsync always`, an httpx client with 64
  connections to etcd's gateway (etcd fsyncs its WAL per batch).  redis-benchmark (C, 64
  clients) is the ceiling.
- memory: resident set (VmRSS) of one replica process holding `--keys` keys of 16 bytes with
  100-byte values, loaded through the source of truth in batches.
- restart: with those keys loaded and writes going on at `--rate`/s, a replica is SIGKILLed and
  restarted; reported is the time from the restart until it serves the latest acknowledged
  value.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytecode import compile_sources
from edgekv.testnet.procs import die_with_parent, free_port  # ports below the ephemeral range
from peers_report import Figures, chart, machine, ratio_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "peers.md"
PARTIAL = HERE / "results" / "peers-partial.md"  # a run of fewer parts or systems (docstring)
ALL_PARTS = "read,propagation,writes,memory,restart"
ALL_SYSTEMS = "edgekv,redis,etcd"
ALL_REPLICAS = "5,20"
READ_FIGURES = (("edgekv", "edgekv KvStore.get"), ("Redis", "Redis replica GET"),
                ("etcd", "etcd serializable"))  # fmt: skip
STORE = "bench"
PROBE = "probe"
VALUE = b"v" * 100
CLIENTS = 64

Read = Callable[[], Awaitable[int | None]]  # the probe key's write number, or None
CPU_FIELDS = ("cpu_source_ms", "cpu_replica_ms", "cpu_all_ms", "cpu_poller_ms")


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far; 0 once it is gone."""
        if self.popen is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        assert self.popen is not None
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@dataclass
class Cluster:
    """One system's processes; `close` kills them all."""

    root: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(argv, self.root / f"{name}.log")
        proc.start()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


async def wait_port(port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)


async def until(pred: Callable[[], Awaitable[bool]], limit: float, what: str) -> float:
    """Poll `pred` until true; seconds it took."""
    t0 = time.monotonic()
    while not await pred():
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"timed out after {limit:.0f} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


# -- the three systems behind one interface --------------------------------------------------------


class System:
    """One system under test: a source of truth and its replicas, each its own process."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = Cluster(root)

    async def start(self, replicas: int) -> None:
        raise NotImplementedError

    async def write(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    async def load(self, n: int, progress: Callable[[int], None]) -> None:
        raise NotImplementedError

    def readers(self) -> list[Read]:
        raise NotImplementedError

    def replica_proc(self, i: int) -> Proc:
        raise NotImplementedError

    async def restart_replica(self, i: int) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


def key_of(i: int) -> str:
    return f"key:{i:012d}"


class EdgekvSystem(System):
    name = "edgekv"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.edges: list[tuple[Proc, str]] = []
        self.edge_argv: list[list[str]] = []
        self.listens: list[str] = []
        self.edge_clients: list[Any] = []

    async def start(self, replicas: int) -> None:
        import httpx

        import edgekv

        py = [sys.executable, "-m", "edgekv"]
        port = free_port()
        self.origin_address = f"127.0.0.1:{port}"
        keys = self.root / "keys"  # signed writes, verified by every edge, as deployed
        gen = [*py, "keys", "generate", "--out", str(keys)]
        await asyncio.to_thread(subprocess.run, gen, check=True, capture_output=True)
        argv = [*py, "origin", "--data-dir", str(self.root / "origin")]
        argv += ["--listen", self.origin_address, "--signing-key", str(keys / "origin-signing.key")]
        self.cluster.spawn("origin", argv)
        await wait_port(port)
        self.client = edgekv.OriginClient(self.origin_address)
        await self.client.__aenter__()
        await self.client.create_store(STORE)
        for i in range(replicas):
            http = f"127.0.0.1:{free_port()}"
            listen = f"127.0.0.1:{free_port()}"
            argv = [*py, "edge", "--data-dir", str(self.root / f"edge-{i}")]
            argv += ["--listen", listen, "--origin", self.origin_address]
            argv += ["--http", http, "--origin-public-key", str(keys / "origin-signing.pub")]
            self.edge_argv.append(argv)
            self.edges.append((self.cluster.spawn(f"edge-{i}", argv), http))
            self.listens.append(listen)
        self.http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        for _, http in self.edges:
            await until(lambda http=http: self._ok(http), 60, f"edge {http} up")  # type: ignore[misc]
        # each edge's client port (node/clientreads.py): the origin's client protocol, reads
        # served from that edge's replica
        for listen in self.listens:
            reader = edgekv.OriginClient(listen, timeout=5.0)
            await reader.__aenter__()
            self.edge_clients.append(reader)

    async def _ok(self, http: str) -> bool:
        try:
            r = await self.http.get(f"http://{http}/v1/stores/{STORE}/keys/none")
            return r.status_code == 404 and r.json().get("error") == "not_found"
        except Exception:
            return False

    async def write(self, key: str, value: bytes) -> None:
        await self.client.put(STORE, key, value)

    async def load(self, n: int, progress: Callable[[int], None]) -> None:
        for lo in range(0, n, 1000):
            ops = [
                {"op": "put", "key": key_of(i), "value": VALUE}
                for i in range(lo, min(n, lo + 1000))
            ]
            await self.client.batch(STORE, ops)
            progress(min(n, lo + 1000))

    def readers(self) -> list[Read]:
        def reader(client: Any) -> Read:
            async def read() -> int | None:
                v = await client.get(STORE, PROBE)
                return None if v is None else int(v)

            return read

        return [reader(c) for c in self.edge_clients]

    def http_reader(self) -> Read:
        """The admin HTTP read of edge 0 (a reference figure of the read table)."""
        url = f"http://{self.edges[0][1]}/v1/stores/{STORE}/keys/{PROBE}"

        async def read() -> int | None:
            r = await self.http.get(url)
            return int(r.content) if r.status_code == 200 else None

        return read

    def replica_proc(self, i: int) -> Proc:
        return self.edges[i][0]

    async def restart_replica(self, i: int) -> None:
        proc, http = self.edges[i]
        proc.kill()
        self.edges[i] = (self.cluster.spawn(f"edge-{i}-again", self.edge_argv[i]), http)

    async def stop(self) -> None:
        for c in reversed([self.client, *self.edge_clients]):  # anyio scopes: last in, first out
            with contextlib.suppress(Exception):
                await c.__aexit__(None, None, None)
        with contextlib.suppress(Exception):
            await self.http.aclose()
        self.cluster.close()


class RedisSystem(System):
    name = "Redis"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.replicas: list[tuple[Proc, int]] = []

    def _argv(self, port: int, d: Path, *extra: str) -> list[str]:
        d.mkdir(parents=True, exist_ok=True)
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                "--save", "", "--protected-mode", "no", *extra]  # fmt: skip

    async def start(self, replicas: int) -> None:
        import redis.asyncio as aioredis

        self.port = free_port()
        self.cluster.spawn(
            "primary",
            self._argv(
                self.port, self.root / "primary", "--appendonly", "yes", "--appendfsync", "always"
            ),
        )
        await wait_port(self.port)
        self.primary = aioredis.Redis(port=self.port)
        self.clients: list[Any] = []
        for i in range(replicas):
            port = free_port()
            argv = self._argv(
                port, self.root / f"replica-{i}", "--replicaof", "127.0.0.1", str(self.port)
            )
            self.replicas.append((self.cluster.spawn(f"replica-{i}", argv), port))
        for _, port in self.replicas:
            await wait_port(port)
            client = aioredis.Redis(port=port)
            self.clients.append(client)

            async def synced(client: Any = client) -> bool:
                info = await client.info("replication")
                return bool(info.get("master_link_status") == "up")

            await until(synced, 60, f"redis replica {port} in sync")

    async def write(self, key: str, value: bytes) -> None:
        await self.primary.set(key, value)

    async def load(self, n: int, progress: Callable[[int], None]) -> None:
        for lo in range(0, n, 10_000):
            pipe = self.primary.pipeline(transaction=False)
            for i in range(lo, min(n, lo + 10_000)):
                pipe.set(key_of(i), VALUE)
            await pipe.execute()
            progress(min(n, lo + 10_000))

    def readers(self) -> list[Read]:
        def reader(client: Any) -> Read:
            async def read() -> int | None:
                v = await client.get(PROBE)
                return None if v is None else int(v)

            return read

        return [reader(c) for c in self.clients]

    def replica_proc(self, i: int) -> Proc:
        return self.replicas[i][0]

    async def restart_replica(self, i: int) -> None:
        proc, port = self.replicas[i]
        proc.kill()
        self.replicas[i] = (self.cluster.spawn(f"replica-{i}-again", proc.argv), port)

    async def stop(self) -> None:
        for c in [self.primary, *self.clients]:
            with contextlib.suppress(Exception):
                await c.aclose()
        self.cluster.close()


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class EtcdSystem(System):
    """An etcd cluster of `replicas` voting members; the first is the one written to."""

    name = "etcd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.members: list[tuple[Proc, int]] = []

    async def start(self, replicas: int) -> None:
        import httpx

        peers = [(f"m{i}", free_port(), free_port()) for i in range(replicas)]
        initial = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, _, pp in peers)
        for name, cp, pp in peers:
            argv = ["etcd", "--name", name, "--data-dir", str(self.root / name),
                    "--listen-client-urls", f"http://127.0.0.1:{cp}",
                    "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                    "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--quota-backend-bytes", str(8 << 30)]  # fmt: skip
            self.members.append((self.cluster.spawn(name, argv), cp))
        limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS + 8)
        self.http = httpx.AsyncClient(timeout=10.0, trust_env=False, limits=limits)
        for _, cp in self.members:
            await until(lambda cp=cp: self._healthy(cp), 60, f"etcd {cp} healthy")  # type: ignore[misc]
        self.leader = self.members[0][1]

    async def _healthy(self, port: int) -> bool:
        try:
            r = await self.http.get(f"http://127.0.0.1:{port}/health")
            return r.status_code == 200 and r.json().get("health") == "true"
        except Exception:
            return False

    async def write(self, key: str, value: bytes) -> None:
        r = await self.http.post(
            f"http://127.0.0.1:{self.leader}/v3/kv/put",
            json={"key": _b64(key), "value": _b64(value)},
        )
        r.raise_for_status()

    async def load(self, n: int, progress: Callable[[int], None]) -> None:
        url = f"http://127.0.0.1:{self.leader}/v3/kv/txn"
        for lo in range(0, n, 128):  # etcd's default --max-txn-ops
            ops = [
                {"request_put": {"key": _b64(key_of(i)), "value": _b64(VALUE)}}
                for i in range(lo, min(n, lo + 128))
            ]
            (await self.http.post(url, json={"success": ops})).raise_for_status()
            if lo % 10_240 == 0:
                progress(lo)
        progress(n)

    async def range(self, port: int, key: str, serializable: bool) -> bytes | None:
        r = await self.http.post(
            f"http://127.0.0.1:{port}/v3/kv/range",
            json={"key": _b64(key), "serializable": serializable},
        )
        kvs = r.json().get("kvs")
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def readers(self) -> list[Read]:
        def reader(port: int) -> Read:
            async def read() -> int | None:
                v = await self.range(port, PROBE, True)
                return None if v is None else int(v)

            return read

        return [reader(cp) for _, cp in self.members[1:]] or [reader(self.leader)]

    def replica_proc(self, i: int) -> Proc:
        return self.members[1 + i][0]

    async def restart_replica(self, i: int) -> None:
        proc, cp = self.members[1 + i]
        proc.kill()
        self.members[1 + i] = (self.cluster.spawn(f"m{1 + i}-again", proc.argv), cp)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()
        self.cluster.close()


# -- measurements -----------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


async def propagation(system: System, writes: int, rate: float) -> dict[str, float]:
    """Ack-to-visibility per replica and to the last replica, by polling (module docstring)."""
    readers = system.readers()
    acked: dict[int, float] = {}
    seen: list[dict[int, float]] = [{} for _ in readers]
    rounds: list[float] = []
    done = asyncio.Event()

    async def observe(i: int, read: Read) -> None:
        last = 0
        while not done.is_set():
            t0 = time.monotonic()
            try:
                v = await read()
            except Exception:
                v = None
            t = time.monotonic()
            rounds.append(t - t0)
            if v is not None and v > last:
                for n in range(last + 1, v + 1):
                    seen[i][n] = t
                last = v
            await asyncio.sleep(0)

    async def writer() -> None:
        t0 = time.monotonic()
        for n in range(1, writes + 1):
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
            await system.write(PROBE, str(n).encode())
            acked[n] = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(s) < writes for s in seen):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        done.set()

    await system.write(PROBE, b"0")
    procs = list(system.cluster.procs)  # the source of truth first, then the replicas
    cpu0, own0 = [p.cpu() for p in procs], _own_cpu()
    observers = [asyncio.create_task(observe(i, r)) for i, r in enumerate(readers)]
    await writer()
    await asyncio.gather(*observers)
    cpu = [(p.cpu() - c) * 1e3 / writes for p, c in zip(procs, cpu0, strict=True)]
    own = (_own_cpu() - own0) * 1e3 / writes
    each = [max(0.0, s[n] - acked[n]) for s in seen for n in acked if n in s]
    last = [max(s[n] for s in seen) - acked[n] for n in acked if all(n in s for s in seen)]
    return {
        "each_p50": pct(each, 50) * 1e3,
        "each_p99": pct(each, 99) * 1e3,
        "last_p50": pct(last, 50) * 1e3,
        "last_p99": pct(last, 99) * 1e3,
        "last_max": max(last) * 1e3 if last else float("nan"),
        "delivered": 100.0 * len(last) / writes,
        "round_ms": statistics.median(rounds) * 1e3 * len(readers) if rounds else float("nan"),
        "cpu_source_ms": cpu[0],
        "cpu_replica_ms": statistics.mean(cpu[1:]) if len(cpu) > 1 else float("nan"),
        "cpu_all_ms": sum(cpu),
        "cpu_poller_ms": own,
    }


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def write_rate(system: System, seconds: float = 5.0) -> float:
    """Durable writes/s with 64 concurrent writers (module docstring)."""
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(system, EdgekvSystem):
            import edgekv

            clients = [
                await stack.enter_async_context(edgekv.OriginClient(system.origin_address))
                for _ in range(CLIENTS)
            ]
            writes: list[Callable[[str], Awaitable[Any]]] = [
                lambda k, c=c: c.put(STORE, k, VALUE)  # type: ignore[misc]
                for c in clients
            ]
        else:
            writes = [lambda k: system.write(k, VALUE)] * CLIENTS
        return await _drive(writes, seconds)


async def _drive(writes: list[Callable[[str], Awaitable[Any]]], seconds: float) -> float:
    count = 0
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal count
        n = 0
        while time.monotonic() < stop:
            await writes[i](f"w{i}:{n % 1000}")
            n += 1
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
    return count / (time.monotonic() - t0)


def redis_benchmark_ceiling(port: int) -> float:
    argv = ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-n", "100000"]
    argv += ["-t", "set", "-d", "100", "-q", "-r", "100000"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    # "SET: 58823.53 requests per second, p50=0.999 msec"
    return float(out.stdout.split("SET:")[-1].split("requests")[0])


async def read_latencies(system: System) -> dict[str, tuple[float, float]]:
    """p50/p99 in microseconds of sequential single reads (module docstring)."""
    out: dict[str, tuple[float, float]] = {}

    async def timed(name: str, read: Callable[[], Awaitable[Any]]) -> None:
        for _ in range(200):
            await read()
        xs = []
        for _ in range(2000):
            t = time.perf_counter_ns()
            await read()
            xs.append((time.perf_counter_ns() - t) / 1e3)
        out[name] = (pct(xs, 50), pct(xs, 99))

    await system.write(PROBE, b"1" * 100)  # 100 bytes, and a number for the probe readers
    await asyncio.sleep(0.5)
    if isinstance(system, EdgekvSystem):
        out["edgekv KvStore.get (in process)"] = await asyncio.to_thread(
            _embedded_get_latency, system.origin_address
        )
        await timed("edgekv edge client-port get (OriginClient)", system.readers()[0])
        await timed("edgekv edge admin HTTP GET (httpx)", system.http_reader())
    elif isinstance(system, RedisSystem):
        client = system.clients[0]
        await timed("Redis replica GET (redis-py asyncio)", lambda: client.get(PROBE))
    elif isinstance(system, EtcdSystem):
        port = system.members[-1][1]
        await timed("etcd serializable range (httpx)", lambda: system.range(port, PROBE, True))
        await timed("etcd linearizable range (httpx)", lambda: system.range(port, PROBE, False))
    return out


_EMBEDDED = f"""
import json, sys, time, trio, edgekv
async def main(origin):
    async with edgekv.EdgeNode(listen="127.0.0.1:0", origin=origin) as node:
        with trio.fail_after(30):
            while True:
                try:
                    store = node.open({STORE!r})
                    if store.get({PROBE!r}) is not None:
                        break
                except edgekv.StoreNotFound:
                    pass
                await trio.sleep(0.05)
        get = store.get
        for _ in range(10000):
            get({PROBE!r})
        pc = time.perf_counter_ns
        xs = []
        for _ in range(100000):
            t = pc(); get({PROBE!r}); xs.append(pc() - t)
        base = []
        for _ in range(100000):
            t = pc(); base.append(pc() - t)
        xs.sort(); base.sort()
        over = base[len(base) // 2]
        print(json.dumps([(xs[len(xs) // 2] - over) / 1e3, (xs[int(len(xs) * 0.99)] - over) / 1e3]))
trio.run(main, sys.argv[1])
"""


def _embedded_get_latency(origin: str) -> tuple[float, float]:
    """KvStore.get p50/p99 (us, timer overhead subtracted) in a fresh process embedding an edge."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", _EMBEDDED, origin],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    p50, p99 = json.loads(out.stdout.strip().splitlines()[-1])
    return float(p50), float(p99)


async def memory_and_restart(system: System, keys: int, rate: float) -> dict[str, float]:
    """RSS of one replica holding `keys` keys, then the kill/restart time under writes."""
    t0 = time.monotonic()

    def progress(n: int) -> None:
        print(f"\r  {system.name}: loaded {n:,}/{keys:,} keys ({time.monotonic() - t0:.0f} s)",
              end="", file=sys.stderr, flush=True)  # fmt: skip

    await system.load(keys, progress)
    print(file=sys.stderr)
    await system.write(PROBE, b"0")
    read = system.readers()[0]

    async def has_last() -> bool:
        with contextlib.suppress(Exception):
            return (await read()) == 0
        return False

    await until(has_last, 600, f"{system.name} replica holds the loaded keys")
    await asyncio.sleep(2.0)  # settle: flushes, background index builds
    rss = system.replica_proc(0).rss()
    latest = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal latest
        n = 0
        while not stop.is_set():
            n += 1
            await system.write(PROBE, str(n).encode())
            latest = n
            await asyncio.sleep(1 / rate)

    task = asyncio.create_task(writer())
    await asyncio.sleep(1.0)
    await system.restart_replica(0)
    want = latest

    async def caught_up() -> bool:
        try:
            v = await system.readers()[0]()
        except Exception:
            return False
        return v is not None and v >= want

    took = await until(caught_up, 300, f"{system.name} replica restart")
    stop.set()
    await task
    return {"rss": rss, "restart": took}


# -- driver and report ------------------------------------------------------------------------


SYSTEMS: dict[str, type[System]] = {
    "edgekv": EdgekvSystem,
    "redis": RedisSystem,
    "etcd": EtcdSystem,
}


def check_installed(systems: list[str]) -> None:
    need = {"redis": ["redis-server", "redis-benchmark"], "etcd": ["etcd"]}
    missing = [b for s in systems for b in need.get(s, []) if shutil.which(b) is None]
    if missing:
        raise SystemExit(
            f"missing: {', '.join(missing)}; install with `apt-get install redis-server etcd-server`"
            " (Debian), or pass --systems to leave a system out"
        )
    try:
        import redis  # noqa: F401
    except ImportError:
        raise SystemExit("redis-py is missing: pip install 'redis>=5'") from None


async def with_system(
    kind: str, root: Path, replicas: int, fn: Callable[[System], Awaitable[Any]]
) -> Any:
    d = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    system = SYSTEMS[kind](d)
    try:
        await system.start(replicas)
        return await fn(system)
    finally:
        await system.stop()
        shutil.rmtree(d, ignore_errors=True)


async def alternating(
    kinds: list[str], runs: int, replicas: int, fn: Callable[[System], Awaitable[dict[str, float]]]
) -> dict[str, list[dict[str, float]]]:
    """`fn`'s figures of each system in turn, `runs` rounds, each system started afresh (in a
    temporary directory) for each: the ratios between systems come from one machine state."""
    root = Path(tempfile.mkdtemp(prefix="bench-alternating-"))
    out: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(runs):
            for kind in kinds:
                got = await with_system(kind, root, replicas, fn)
                out[kind].append(got)
                print(f"  {kind}: {got}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over `runs`."""
    return {f: statistics.median(r[f] for r in runs) for f in runs[0]}


def med(runs: list[dict[str, float]], field: str) -> float:
    xs = [r[field] for r in runs if field in r]
    return statistics.median(xs) if xs else float("nan")


async def run(args: argparse.Namespace, figures: Figures) -> str:
    systems = args.systems.split(",")
    only = set(args.only.split(","))
    sizes = [int(x) for x in args.replicas.split(",")]
    lines: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        if "read" in only:
            lat: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.runs):
                for kind in systems:
                    got = await with_system(kind, root, 1, read_latencies)
                    for name, v in got.items():
                        lat.setdefault(name, []).append(v)
            lines += ["", "### Local reads (one client, sequential, each read timed alone)", "",
                      "| read path | p50 | p99 |", "|---|---|---|"]  # fmt: skip
            for name, vs in lat.items():
                p50 = statistics.median(v[0] for v in vs)
                p99 = statistics.median(v[1] for v in vs)
                lines.append(f"| {name} | {p50:,.2f} us | {p99:,.2f} us |")
                for system, prefix in READ_FIGURES:
                    if name.startswith(prefix):
                        figures.add("local read p50", system, p50, "us")
                        figures.add("local read p99", system, p99, "us")
            ek = [v for k, v in lat.items() if k.startswith("edgekv KvStore")]
            rd = [v for k, v in lat.items() if k.startswith("Redis")]
            if ek and rd:
                ratio = statistics.median(v[0] for v in rd[0]) / statistics.median(
                    v[0] for v in ek[0]
                )
                lines.append(
                    f"\nRedis replica GET p50 / edgekv get() p50: **{ratio:,.0f}x** (target >= 50x)"
                )
        if "propagation" in only:
            lines += ["", f"### Propagation ({args.writes:,} writes at {args.rate:g}/s, ms from acknowledgement)", "",
                      "| system | replicas | each p50 | each p99 | last p50 | last p99 | last max | delivered | polling round |",
                      "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            same_run: list[str] = []
            cpu_lines: list[str] = []
            for n in sizes:
                kinds = [k for k in systems if not (k == "etcd" and n > 7)]
                by_kind: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
                for _ in range(args.runs):  # systems interleaved: each run sees the same load
                    for kind in kinds:
                        by_kind[kind].append(await with_system(
                            kind, root, n, lambda s: propagation(s, args.writes, args.rate)))  # fmt: skip
                        print(f"  {kind} N={n}: {by_kind[kind][-1]}", file=sys.stderr)
                for kind in systems:
                    if kind not in by_kind:
                        lines.append(
                            f"| etcd | {n} | | | | | | | not run: etcd clusters beyond 7 voting members are not a supported setup |"
                        )
                        continue
                    runs = by_kind[kind]
                    cells = " | ".join(
                        f"{med(runs, f):,.2f}"
                        for f in ("each_p50", "each_p99", "last_p50", "last_p99", "last_max")
                    )
                    lines.append(
                        f"| {SYSTEMS[kind].name} | {n} | {cells} | {med(runs, 'delivered'):.1f}% | {med(runs, 'round_ms'):.2f} |"
                    )
                    for f in ("last_p50", "last_p99"):
                        figures.add(f"propagation N={n}, {f.replace('_', ' ')}", SYSTEMS[kind].name,
                                    med(runs, f), "ms")  # fmt: skip
                cpu_lines.extend(
                    f"| {SYSTEMS[kind].name} | {n} | "
                    + " | ".join(f"{med(by_kind[kind], f):,.3f}" for f in CPU_FIELDS)
                    + " |"
                    for kind in kinds
                )
                if "edgekv" in by_kind and "redis" in by_kind:
                    r = [e["last_p99"] / max(x["last_p99"], 1e-9)
                         for e, x in zip(by_kind["edgekv"], by_kind["redis"], strict=True)]  # fmt: skip
                    same_run.append(
                        f"N={n}: edgekv last p99 / Redis last p99 in the same run: "
                        f"{', '.join(f'{x:.2f}' for x in r)} (median **{statistics.median(r):.2f}x**)"
                    )
            if same_run:
                lines += ["", "Acceptance (N = 20: at most 3x): " + "; ".join(same_run) + "."]
            lines += ["", "CPU ms per write during those runs (medians; /proc/PID/stat user + system):", "",
                      "| system | replicas | source of truth | one replica (mean) | all its processes | this script (writer + pollers) |",
                      "|---|---|---|---|---|---|", *cpu_lines]  # fmt: skip
        if "writes" in only:
            lines += ["", f"### Durable writes/s at the source of truth, {CLIENTS} concurrent clients, Python asyncio", "",
                      "| system | writes/s (median) | runs |", "|---|---|---|"]  # fmt: skip
            for kind in systems:
                rates = [
                    await with_system(kind, root, 0 if kind != "etcd" else 1, write_rate)
                    for _ in range(args.runs)
                ]
                lines.append(
                    f"| {SYSTEMS[kind].name} | {statistics.median(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |"
                )
                figures.add("durable writes/s, 64 clients", SYSTEMS[kind].name,
                            statistics.median(rates), "/s", lower=False)  # fmt: skip
            if "redis" in systems:

                async def ceiling(s: System) -> float:
                    assert isinstance(s, RedisSystem)
                    return await asyncio.to_thread(redis_benchmark_ceiling, s.port)

                c = [await with_system("redis", root, 0, ceiling) for _ in range(args.runs)]
                lines.append(
                    f"| Redis, redis-benchmark (C) ceiling | {statistics.median(c):,.0f} | {', '.join(f'{r:,.0f}' for r in c)} |"
                )
        if "memory" in only or "restart" in only:
            lines += ["", f"### One replica holding {args.keys:,} keys (16 B keys, 100 B values; etcd: a follower of 3 members; median of {args.memory_runs})", "",
                      "| system | replica RSS | per key | restart until the latest value is served |", "|---|---|---|---|"]  # fmt: skip
            for kind in systems:
                runs = [
                    await with_system(
                        kind,
                        root,
                        3 if kind == "etcd" else 1,
                        lambda s: memory_and_restart(s, args.keys, args.rate),
                    )
                    for _ in range(args.memory_runs)
                ]
                rss = med(runs, "rss")
                figures.add("replica RSS", SYSTEMS[kind].name, rss / 2**20, "MiB")
                figures.add("restart until the latest value", SYSTEMS[kind].name,
                            med(runs, "restart"), "s")  # fmt: skip
                lines.append(
                    f"| {SYSTEMS[kind].name} | {rss / 2**20:,.0f} MiB | {rss / args.keys:,.0f} B | {med(runs, 'restart'):.2f} s |"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)


def versions(systems: list[str]) -> str:
    out = [f"Python {platform.python_version()}"]
    if "redis" in systems:
        v = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True
        ).stdout.split()
        out.append(" ".join(x for x in v if x.startswith("v=")).replace("v=", "redis-server "))
    if "etcd" in systems:
        v = subprocess.run(
            ["etcd", "--version"], capture_output=True, text=True
        ).stdout.splitlines()
        out.append(v[0] if v else "etcd ?")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--replicas", default=ALL_REPLICAS, help="replica counts for the propagation runs"
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--memory-runs", type=int, default=3, help="runs of the memory/restart part")
    ap.add_argument("--only", default=ALL_PARTS)
    ap.add_argument("--systems", default=ALL_SYSTEMS)
    ap.add_argument("--no-write", action="store_true", help="print only, leave results/ alone")
    args = ap.parse_args()
    compile_sources()  # the spawned processes start as an installed package does
    check_installed(args.systems.split(","))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    figures = Figures()
    body = asyncio.run(run(args, figures))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join([
        "## edgekv beside Redis and etcd (`benchmarks/bench_peers.py`)", "",
        f"`python benchmarks/bench_peers.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"— medians of {args.runs} runs; {versions(args.systems.split(','))}; "
        f"{machine()}; load average at the end {load}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. How each figure is taken: the "
        "script's docstring.", body, ""])  # fmt: skip
    partial = any(
        set(given.split(",")) != set(every.split(","))
        for given, every in (
            (args.only, ALL_PARTS),
            (args.systems, ALL_SYSTEMS),
            (args.replicas, ALL_REPLICAS),
        )
    )
    results = PARTIAL if partial else RESULTS
    picture = results.with_suffix(".png")
    if figures.values:
        drawn = not args.no_write and chart(figures, picture)
        text += "\n".join([
            "", "### Ratios edgekv / peer (medians above; `better`: which way is better)", "",
            *ratio_table(figures), "",
            f"![edgekv vs Redis and etcd](benchmarks/results/{picture.name})" if drawn else
            "(The chart needs the plot extra: `pip install 'edgekv[plot]'`.)", ""])  # fmt: skip
    print(text)
    if not args.no_write:
        results.write_text(text)
        print(f"written to {results.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
