"""`Testnet(processes=True)`: every node its own OS process over TCP on 127.0.0.1.

Each node runs `python -m edgekv origin ...` / `python -m edgekv edge ...` in its own process
group (`start_new_session`), with its own data_dir under the testnet's root.  Ports are picked
up front (bind port 0, read it, release it) so every edge can be told its peers' addresses.

What is supported, and how:
- crash = SIGKILL to the node's process group; restart = a new process on the same data_dir,
  listen address and flags.
- isolate = SIGSTOP (the node neither sends nor answers; its peers see it as silent, as with a
  partition of one), heal = SIGCONT to every stopped node.
- partition, block, latency and loss: every process runs with `--fault-file` on one shared
  JSON policy (`node/faultfile.py`); `write_faults` rewrites it atomically and each node
  reloads it within 0.1 s.  A node drops (or delays) its own sends by that policy, so a
  partition is cut from both sides.
- Reads for the checker go through each edge's admin HTTP API (GET /v1/stores/{s}/keys/{k});
  digests and watermarks come from GET /status.  The origin exposes no digest over the network,
  so "converged" means: every live edge reports the same digest and a watermark at least the
  highest seq the testnet's client has had acknowledged (`high_seq`).
Every process is killed (SIGKILL to its group) when the cluster closes, whatever happened, and
on Linux each node also gets PR_SET_PDEATHSIG, so it dies with the testnet process even if that
one is SIGKILLed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import AsyncResource

from edgekv.errors import InvalidInput
from edgekv.gossip.transport import TransportStats
from edgekv.node.admin_http import MAX_MGET_KEYS
from edgekv.node.faultfile import write_fault_file
from edgekv.node.faults import LinkFaults
from edgekv.node.keys import generate_keypair
from edgekv.testnet.checker import BatchRead, EdgeUnavailable

__all__ = ["ProcessCluster", "die_with_parent", "free_port"]

START_TIMEOUT = 60.0


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL me if the testnet process dies (Linux prctl), so even
    a SIGKILLed testnet leaves no node behind.  Elsewhere a no-op (close() still kills)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago, below the ephemeral range.

    A node gets its port only when its process starts.  A port from the ephemeral range (what
    `bind(0)` returns) may meanwhile become the source port of some outgoing connection, and
    the node then fails to bind; ports below that range are never handed out that way.  A
    port is handed out once per process.
    """
    low = max(1024, _ephemeral_low() - 12_000)
    high = max(low + 1000, _ephemeral_low() - 1)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a crowded range: fall back to any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup(nofile: int | None) -> Callable[[], None]:
    def setup() -> None:
        die_with_parent()
        if nofile is not None:  # the node's own fd limit (an OS-level fault for tests)
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return setup


@dataclass(eq=False)
class _Proc:
    name: str
    argv: list[str]
    log: Path
    http: str | None
    nofile: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(self.nofile),
            )
        self.stopped = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)


class ProcessCluster(AsyncResource):
    """An origin and `edges` edge processes (see the module docstring).

    `node_args` are appended to every node's command line (e.g. limits such as
    `--idle-timeout 2`); `nofile` sets every node's RLIMIT_NOFILE soft limit.
    """

    def __init__(
        self,
        edges: int,
        root: Path,
        *,
        seed: int = 1,
        node_args: Sequence[str] = (),
        nofile: int | None = None,
    ) -> None:
        self.root = root
        self.origin_address = f"127.0.0.1:{free_port()}"
        self.fault_file = root / "faults.json"
        py = [sys.executable, "-m", "edgekv"]
        self.procs: dict[str, _Proc] = {}
        origin_dir = root / "origin"
        origin_dir.mkdir(parents=True, exist_ok=True)
        origin_http = f"127.0.0.1:{free_port()}"
        argv = [*py, "origin", "--data-dir", str(origin_dir), "--listen", self.origin_address]
        argv += ["--http", origin_http, "--fault-file", str(self.fault_file), *node_args]
        signing, public = generate_keypair(root / "keys")  # throwaway, like the in-process testnet
        argv += ["--signing-key", str(signing)]
        self.origin_http = origin_http
        self.procs["origin"] = _Proc("origin", argv, root / "origin.log", origin_http, nofile)
        gossip = {f"edge-{i}": f"127.0.0.1:{free_port()}" for i in range(edges)}
        self.addresses = {"origin": self.origin_address, **gossip}
        names = list(gossip)
        for i, name in enumerate(names):
            peers = [gossip[names[(i + d) % len(names)]] for d in (1, 2, 3) if len(names) > d]
            http = f"127.0.0.1:{free_port()}"
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            argv = [*py, "edge", "--data-dir", str(d), "--listen", gossip[name]]
            argv += ["--origin", self.origin_address, "--http", http]
            argv += ["--fault-file", str(self.fault_file), *node_args]
            argv += ["--origin-public-key", str(public)]
            for p in dict.fromkeys(peers):
                argv += ["--peer", p]
            self.procs[name] = _Proc(name, argv, root / f"{name}.log", http, nofile)
        self._http = httpx.Client(timeout=2.0, trust_env=False)
        self._probe_http: dict[str, httpx.Client] = {}  # edge -> its probe's own client
        self._status: dict[str, dict[str, Any]] = {}
        self.high_seq = 0  # highest seq acked to the testnet's client

    async def __aenter__(self) -> ProcessCluster:
        try:
            for proc in self.procs.values():
                proc.start()
            with anyio.fail_after(START_TIMEOUT):
                await self._wait_port("origin", self.origin_address)
                for name in self.procs:
                    if name != "origin":
                        await self._wait_http(name)
        except BaseException:
            self.close()
            raise
        return self

    async def aclose(self) -> None:
        self.close()

    async def _wait_port(self, name: str, address: str) -> None:
        proc = self.procs[name]
        host, _, port = address.rpartition(":")
        while True:
            if not proc.alive:
                raise InvalidInput(f"{name} exited at start; see {proc.log}")
            try:
                stream = await anyio.connect_tcp(host, int(port))
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return

    def close(self) -> None:
        """SIGKILL every process group; never leaves a process behind."""
        for proc in self.procs.values():
            proc.kill()
        self._http.close()
        for http in self._probe_http.values():
            http.close()
        self._probe_http.clear()

    async def _wait_http(self, name: str) -> None:
        proc = self.procs[name]
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as http:
            while True:
                if not proc.alive:
                    raise InvalidInput(f"{name} exited at start; see {proc.log}")
                try:
                    r = await http.get(f"http://{proc.http}{_status_path(name)}")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.1)

    # --- faults -----------------------------------------------------------------------------

    def _proc(self, name: str) -> _Proc:
        if name not in self.procs:
            raise InvalidInput(f"no node named {name!r}")
        return self.procs[name]

    async def crash(self, name: str) -> None:
        proc = self._proc(name)
        await anyio.to_thread.run_sync(proc.kill)

    async def restart(self, name: str) -> None:
        proc = self._proc(name)
        if proc.alive:
            raise InvalidInput(f"{name} is running")
        proc.start()
        if proc.http is not None:
            await self._wait_http(name)

    def address_of(self, name: str) -> str:
        self._proc(name)
        return self.addresses[name]

    def write_faults(self, faults: LinkFaults) -> None:
        """Make `faults` every node's link policy (each reloads it within 0.1 s)."""
        write_fault_file(self.fault_file, faults)

    async def faults_applied(self, faults: LinkFaults) -> None:
        """Return once every live node reports `faults` as its policy (in its /status)."""
        want = faults.to_spec()
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as http:
            for name, proc in self.procs.items():
                while proc.alive and not proc.stopped:
                    try:
                        r = await http.get(f"http://{proc.http}{_status_path(name)}")
                        if r.status_code == 200 and r.json().get("faults") == want:
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    await anyio.sleep(0.05)

    def isolate(self, name: str) -> None:
        proc = self._proc(name)
        proc.signal(signal.SIGSTOP)
        proc.stopped = True

    def heal(self) -> None:
        for proc in self.procs.values():
            if proc.stopped:
                proc.signal(signal.SIGCONT)
                proc.stopped = False

    # --- observation (blocking HTTP on 127.0.0.1: small clusters only) -----------------------

    def live_edges(self) -> list[str]:
        return [n for n, p in self.procs.items() if n != "origin" and p.alive and not p.stopped]

    def readers(self) -> dict[str, Callable[[str, str], bytes | None]]:
        out = {}
        for name in self.live_edges():
            out[name] = self._reader(self.procs[name].http or "")
        return out

    def batch_readers(self) -> dict[str, BatchRead]:
        """edge -> (store, keys) -> values, one `POST .../mget` per call, run in a worker
        thread (the probe that runs during a workload must not hold up this process's event
        loop; a thread with a plain client, because an async client's request body is an
        async generator that a request cut off by a killed edge leaves unfinished)."""
        out = {}
        for name in self.live_edges():
            http = self._probe_http.get(name)
            if http is None:
                http = self._probe_http[name] = httpx.Client(timeout=5.0, trust_env=False)
            out[name] = _batch_reader(http, self.procs[name].http or "")
        return out

    def _reader(self, http: str) -> Callable[[str, str], bytes | None]:
        def read(store: str, key: str) -> bytes | None:
            try:
                r = self._http.get(f"http://{http}/v1/stores/{store}/keys/{key}")
            except httpx.HTTPError as exc:
                raise EdgeUnavailable(f"{http}: {exc!r}") from None
            if r.status_code == 404:
                return None
            if r.status_code != 200:
                raise EdgeUnavailable(f"{http}: HTTP {r.status_code}")
            return r.content

        return read

    def _fetch_status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.live_edges():
            try:
                r = self._http.get(f"http://{self.procs[name].http}/status")
                if r.status_code == 200:
                    out[name] = r.json()
            except (httpx.HTTPError, ValueError):
                continue
        self._status = out
        return out

    def node_status(self, name: str) -> dict[str, Any] | None:
        """`name`'s status JSON (origin: GET /v1/status, edge: GET /status); None if down."""
        proc = self._proc(name)
        try:
            r = self._http.get(f"http://{proc.http}{_status_path(name)}")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def digests(self) -> dict[str, int]:
        # a node still building its trees after a restart reports no root yet
        return {n: int(s["root"], 16) for n, s in self._fetch_status().items() if s["root"]}

    def watermarks(self) -> dict[str, int]:
        return {n: int(s["watermark"]) for n, s in self._fetch_status().items()}

    def agreement(self) -> tuple[float, int]:
        return self._agreement(self._fetch_status())

    def observe(self) -> tuple[float, int, dict[str, int], TransportStats]:
        """(agreement, distinct roots, watermarks, stats) from one status round."""
        status = self._fetch_status()
        frac, distinct = self._agreement(status)
        wms = {n: int(s["watermark"]) for n, s in status.items()}
        return frac, distinct, wms, self._stats(status)

    def _agreement(self, status: dict[str, dict[str, Any]]) -> tuple[float, int]:
        live = self.live_edges()
        if not live:
            return 1.0, 0
        caught_up = [
            s["root"] for s in status.values() if s["root"] and int(s["watermark"]) >= self.high_seq
        ]
        roots = Counter(caught_up)
        top = roots.most_common(1)[0][1] if roots else 0
        return top / len(live), len({s["root"] for s in status.values()})

    def node_info(self, name: str) -> tuple[int, int]:
        """(peers known, messages sent) from the node's last fetched /status."""
        s = self._status.get(name, {})
        sent = s.get("counters", {}).get("transport", {}).get("sent_messages", 0)
        return len(s.get("peers", {})), int(sent)

    def snapshot_progress(self, name: str) -> dict[str, Any] | None:
        """The node's snapshot progress from its last fetched /status, while it syncs."""
        snap = self._status.get(name, {}).get("snapshot")
        return snap if isinstance(snap, dict) and snap.get("state") != "idle" else None

    def stats(self) -> TransportStats:
        """Sent messages and bytes by type, summed from each live edge's /status counters."""
        return self._stats(self._fetch_status())

    def _stats(self, status: dict[str, dict[str, Any]]) -> TransportStats:
        out = TransportStats()
        for s in status.values():
            total = s.get("counters", {}).get("transport", {})
            out.sent_messages["ALL"] += int(total.get("sent_messages", 0))
            out.sent_bytes["ALL"] += int(total.get("sent_bytes", 0))
            out.dropped += int(total.get("dropped", 0))
        return out


def _status_path(name: str) -> str:
    """Where a node's status is: the origin's HTTP API, or an edge's admin API."""
    return "/v1/status" if name == "origin" else "/status"


def _batch_reader(http: httpx.Client, address: str) -> BatchRead:
    def read_sync(store: str, keys: list[str]) -> list[bytes | None]:
        values: list[bytes | None] = []
        for i in range(0, len(keys), MAX_MGET_KEYS):
            part = keys[i : i + MAX_MGET_KEYS]
            try:
                r = http.post(f"http://{address}/v1/stores/{store}/mget", json={"keys": part})
            except httpx.HTTPError as exc:
                raise EdgeUnavailable(f"{address}: {exc!r}") from None
            if r.status_code == 404:  # no such store there yet
                values += [None] * len(part)
                continue
            if r.status_code != 200:
                raise EdgeUnavailable(f"{address}: HTTP {r.status_code}")
            values += [None if v is None else base64.b64decode(v) for v in r.json()["values"]]
        return values

    async def read(store: str, keys: list[str]) -> list[bytes | None]:
        return await anyio.to_thread.run_sync(read_sync, store, keys, abandon_on_cancel=True)

    return read
