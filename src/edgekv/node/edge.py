"""EdgeNode: a full replica that answers reads locally and forwards writes to the origin.

Lifecycle (`async with EdgeNode(...) as node`, under trio or asyncio through anyio):
1. Open the persisted replica in `data_dir` (SQLite; a corrupt file is moved aside and the
   node starts empty) and read only its metadata: the watermark its rows reflect.
2. Bind the transport (TCP unless one is injected, e.g. the testnet's simulated network), build
   the gossip core with the origin and `peers` as seeds, and run it with a `NodeRuntime`: it
   asks for what changed after the file's watermark at once, while the rows load in a worker
   thread (`_load_file`) and are then joined with the live replica (gossip/snapshot.py rule
   11); `async with` returns once they are, so reads work with the last persisted state.
3. Start the persistence flusher (once the file is joined; held while a whole snapshot streams)
   and the admin HTTP server (`http`); `KvStore.open(name)` works inside the block.
4. On exit: say BYE to live peers (best effort), end watchers, close the transport (an
   injected one too: the node leaves the network), stop the runtime and HTTP server, then
   flush and close the database.

Readiness: a fresh node (nothing loaded) returns from `async with` once it holds everything
up to the origin's watermark as first heard after joining (`is_ready()`), which for a large
store means once its snapshot (gossip/snapshot.py) is installed; or after `ready_timeout`
(default: `READY_BASE` s plus `READY_PER_KEY` s per key the snapshot offer announced, extended
while the snapshot progresses: see `expected_ready_timeout`), with the reason logged.  While a snapshot streams the node logs progress lines (`event=snapshot`) and
`/status` reports them under "snapshot".

Writes (`await store.put(...)` etc.) travel to the origin as a REQUEST over the gossip transport.
The origin's RESPONSE carries the write's version, deltas and covered seqs; the edge hands them
to `runtime.publish` (at an edge the gossip core only applies them: the origin's own push
spreads the write) before returning, so the writer reads its own write at once and watchers and
persistence see it like any other change.  If the origin does not answer within
`write_timeout`, the write raises `OriginUnavailable`; reads keep working.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import astuple
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgekv.clock import wall_clock_ms
from edgekv.crdt import META, Delta, Replica
from edgekv.crdt.proofs import Certificate, ProofStore
from edgekv.crdt.version import Version
from edgekv.errors import (
    EdgeKVError,
    InvalidInput,
    OriginUnavailable,
    RemoteProtocolError,
    StoreNotFound,
)
from edgekv.gossip import fields
from edgekv.gossip.config import GossipConfig
from edgekv.gossip.core import GossipNode
from edgekv.gossip.messages import Send
from edgekv.gossip.snapshot import StagedSnapshot, TreeJob
from edgekv.gossip.snapshot_build import Copies
from edgekv.gossip.transport import Transport
from edgekv.gossip.wire import Message, PeerIdentity
from edgekv.node import gcpolicy, kvstore
from edgekv.node.admin_http import bind_socket, build_app, serve_app, socket_address
from edgekv.node.auth import TokenAuth, TokenSpec
from edgekv.node.clientreads import serve_reads
from edgekv.node.edge_status import edge_metrics_text, edge_status, log_progress, progress_logger
from edgekv.node.faults import LinkFaults
from edgekv.node.httpapi import HttpLimits
from edgekv.node.identity import load_node_id
from edgekv.node.keys import load_public_key
from edgekv.node.limits import DEFAULT_NET_LIMITS, NetLimits
from edgekv.node.persistence import FLUSH_INTERVAL, LoadReport, ReplicaStore
from edgekv.node.runtime import NodeRuntime
from edgekv.node.tcp import FramedStream, TcpTransport, parse_address
from edgekv.node.tlsconfig import TlsConfig
from edgekv.node.watch import EdgeStore, WatchHub

__all__ = ["EdgeNode"]

ORIGIN_TRY = 1.0
"""With several origins, a write waits this long for one before trying the next."""

BACKGROUND_TREES_FROM = 50_000
"""A restart with at least this many keys builds its Merkle trees in a worker thread after
reads start, while gossip runs (about 2 s per million keys); a smaller one builds them before
it returns."""

READY_BASE = 10.0
READY_PER_KEY = 20e-6  # 20 s per million keys: 4x the measured snapshot time on 2 shared cores
READY_MAX = 600.0

logger = logging.getLogger("edgekv.edge")


class EdgeNode:
    """An edge node: local reads, writes through the origin, gossip, persistence, admin HTTP."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        origin: str | Sequence[str] = "",
        peers: Sequence[str] = (),
        data_dir: str | None = None,
        *,
        cluster_id: str = "edgekv",
        cluster_key: bytes | None = None,
        http: str | None = None,
        node_id: str | None = None,
        config: GossipConfig | None = None,
        transport: Transport | None = None,
        write_timeout: float = 5.0,
        token: str | None = None,
        wall_ms: Callable[[], int] | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        rng: random.Random | None = None,
        ready_timeout: float | None = None,
        faults: LinkFaults | None = None,
        advertise: str | None = None,
        net_limits: NetLimits = DEFAULT_NET_LIMITS,
        origin_public_keys: Sequence[Ed25519PublicKey | str | Path] = (),
        tokens: TokenSpec | None = None,
        http_limits: HttpLimits | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.net_limits = net_limits
        origins = origin.split(",") if isinstance(origin, str) else list(origin)
        if not origins or not all(isinstance(o, str) and o for o in origins):
            raise InvalidInput(
                "EdgeNode needs the origin's address (origin='host:port' or a list of them)"
            )
        if isinstance(peers, str):
            raise InvalidInput("peers must be a list of 'host:port' addresses, not one string")
        own = [] if transport is not None else [listen, *([advertise] if advertise else [])]
        for address in (*origins, *peers, *own, *([] if http is None else [http])):
            try:
                parse_address(address)
            except (ValueError, TypeError, AttributeError):
                raise InvalidInput(f"bad address {address!r}, expected 'host:port'") from None
        if write_timeout <= 0:
            raise InvalidInput("write_timeout must be positive")
        if ready_timeout is not None and not ready_timeout >= 0:
            raise InvalidInput("ready_timeout must be >= 0 (or None: fit the snapshot)")
        self.ready_timeout = ready_timeout
        if isinstance(origin_public_keys, str | Path):
            raise InvalidInput("origin_public_keys must be a list of keys or key files")
        self.origin_public_keys = [
            k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in origin_public_keys
        ]
        self.listen = listen
        self.origins = origins  # one or several (a leader and its followers, in any order)
        self.origin = origins[0]  # the one writes go to: the leader, as far as we know
        self.seeds = [p for p in dict.fromkeys([*origins, *peers])]
        self.data_dir = data_dir
        self.cluster_id = cluster_id
        self.cluster_key = cluster_key
        self.tls = tls  # TLS with mutual authentication on gossip, TLS on admin HTTP
        self.http = http
        self._node_id_arg = node_id
        self.node_id = node_id or f"edge-{uuid.uuid4().hex[:8]}"  # data_dir's id once started
        self.advertise = advertise
        self.config = config
        self.write_timeout = write_timeout
        self.token = token
        self.auth = TokenAuth(tokens)  # what the admin HTTP API accepts (off when None)
        self.http_limits = http_limits or HttpLimits()
        self.flush_interval = flush_interval
        self._wall_ms = wall_ms or wall_clock_ms
        self._rng = rng
        self._transport = transport
        self._owns_transport = transport is None
        self.faults = faults  # applied to the TCP transport this node creates
        self._stack: AsyncExitStack | None = None
        self._runtime: NodeRuntime | None = None
        self._replica = Replica()
        if self.origin_public_keys:
            # persistence, when on, replaces this replica with its own (journaled) one
            self._replica.use_proofs(ProofStore(self.origin_public_keys, journal=False))
        self._persist: ReplicaStore | None = None
        self.load_report: LoadReport | None = None
        self._trees_started: float | None = None  # a restart's trees are being built since
        self._load_started = 0.0
        self._file_wm = 0  # the watermark of the persisted replica's file (its metadata)
        self._file_joined = anyio.Event()  # the persisted replica is joined (or there is none)
        self.hub = WatchHub()
        self.http_address: str | None = None
        self._ctx_token: Any = None
        self._ready = False  # latched by `is_ready`

    @property
    def address(self) -> str:
        """The address peers reach this node at (known once started)."""
        if self._transport is None:
            raise RuntimeError("the node is not started")
        return self._transport.address

    @property
    def replica(self) -> Replica:
        return self._replica

    @property
    def watermark(self) -> int:
        """Highest seq below which this node has applied every write."""
        return self._replica.watermark

    @property
    def runtime(self) -> NodeRuntime:
        if self._runtime is None:
            raise RuntimeError("the node is not started")
        return self._runtime

    @property
    def gossip(self) -> GossipNode:
        return self.runtime.gossip  # type: ignore[return-value]

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> EdgeNode:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._ctx_token = kvstore.current_node.set(self)
        await self._file_joined.wait()  # a restarted node serves its stored data on return
        fresh = len(self._replica) == 0 and self._replica.watermark == 0
        if fresh and self.ready_timeout != 0:
            # a fresh node has nothing to serve yet: wait for the initial sync, so that
            # `node.open(store)` right after `async with` finds what the origin has
            started = anyio.current_time()
            while not self.is_ready():
                limit = self.expected_ready_timeout()
                if anyio.current_time() - started >= limit:
                    progress_logger.warning(
                        "event=not_ready node=%s timeout=%.1f reason=%s: serving what it has"
                        " while it syncs",
                        self.node_id,
                        limit,
                        self._not_ready_reason(),
                    )
                    break
                await anyio.sleep(0.01)
            progress_logger.info(
                "event=ready node=%s ready=%s seconds=%.3f keys=%d watermark=%d",
                self.node_id,
                self.is_ready(),
                anyio.current_time() - started,
                len(self._replica),
                self._replica.watermark,
            )
        return self

    def expected_ready_timeout(self) -> float:
        """`ready_timeout`, or by default one that fits the snapshot announced (if any): the
        base plus a time per key announced, extended while a snapshot makes progress to its
        elapsed time plus twice its estimated time left (never beyond `READY_MAX`)."""
        if self.ready_timeout is not None:
            return self.ready_timeout
        runtime = self._runtime
        if runtime is None:
            return READY_BASE
        boot = self.gossip.bootstrap
        limit = READY_BASE + READY_PER_KEY * boot.progress.total
        if boot.active and boot.progress.keys:
            st = boot.status(runtime.now())
            limit = max(limit, runtime.now() - boot.progress.started + 2 * st["seconds_left"] + 5)
        return min(limit, READY_MAX)

    def _not_ready_reason(self) -> str:
        runtime = self._runtime
        if runtime is None or not runtime.running:
            return "gossip_not_started"
        boot = self.gossip.bootstrap
        if boot.base_wm is not None:
            return "loading_file"
        if boot.target is None:
            return "origin_not_heard"
        if boot.active:
            return f"snapshot_{boot.state}_{boot.progress.keys}_of_{boot.progress.total}_keys"
        return f"catching_up_{self._replica.watermark}_of_{boot.target}"

    async def _load_file(self, persist: ReplicaStore, tg: anyio.abc.TaskGroup) -> None:
        """The file's rows, read in a worker thread while gossip runs, then joined with the
        live replica (snapshot.py rule 11): built with its delta into one replica when that
        delta is already staged, else indexed (a second thread hop: its trees deferred, built
        as a job once caught up) and adopted.  Then the flusher starts (persistence.py rule
        6)."""
        boot = self.gossip.bootstrap  # (`wants_file`: snapshot.py rule 12 may drop the file)
        rows = await anyio.to_thread.run_sync(persist.read_rows, boot.wants_file)
        keys, watermark, joined = 0, 0, False
        if rows is not None:
            keys = sum(map(len, rows.groups.values())) - len(rows.groups.get(META, ()))
            watermark = self._file_wm

            def join(now: float) -> list[Send]:
                nonlocal joined
                joined = self.gossip.join_file(rows)
                return []

            await self.runtime.run_core(join)
        if not joined:

            def index() -> tuple[Replica | None, Copies]:
                if rows is None:
                    return None, []
                replica = persist.index_rows(rows)
                if len(replica) < BACKGROUND_TREES_FROM:  # cheap: built here, no job
                    replica.install_trees(replica.build_pending_trees())
                    return replica, []
                return replica, replica.defer_trees()

            loaded, copies = await anyio.to_thread.run_sync(index)
            gcpolicy.settle()
            await self.runtime.run_core(partial(self.gossip.install_base, loaded, copies))
        while boot.file_pending:  # noqa: ASYNC110 (built with its delta)
            await anyio.sleep(0.01)
        persist.loading = False
        if self._replica.trees_pending:  # built off the loop once caught up (a job)
            self._trees_started = time.perf_counter()
        self.load_report = report = LoadReport(
            keys, watermark, time.perf_counter() - self._load_started, persist.corrupt_moved_to
        )
        logger.info(
            "event=loaded node=%s keys=%d watermark=%d seconds=%.3f corrupt_moved_to=%s"
            " with_delta=%s",
            self.node_id,
            *astuple(report),
            joined,
        )
        await tg.start(persist.run)
        self._file_joined.set()

    def _on_job(self, job: object, result: object) -> None:
        """A snapshot installed: watchers re-read (one event per key would overflow them) and
        the file is rewritten whole, from the copies its tree job holds (persistence.py rule
        4: no copy on the loop; every change since they were taken was reported).  (Its
        trees, installed after, change no state.)"""
        if isinstance(job, StagedSnapshot):
            self.hub.reset()
            if self._persist is not None:
                self._persist.rewrite_all(job.trees.by_store() if job.trees else None)
        elif isinstance(job, TreeJob) and self._trees_started is not None:
            logger.info(
                "event=trees_built node=%s seconds=%.3f",
                self.node_id,
                time.perf_counter() - self._trees_started,
            )
            self._trees_started = None

    async def _start(self, stack: AsyncExitStack) -> None:
        base_wm, self._ready = 0, False  # readiness is latched per run (`is_ready`)
        if self.data_dir is not None:
            self.node_id = load_node_id(self.data_dir, self._node_id_arg, "edge")
            persist = ReplicaStore(
                self.data_dir,
                flush_interval=self.flush_interval,
                public_keys=self.origin_public_keys or None,
            )
            # the file's metadata only: its rows load while gossip already asks for what
            # changed since (`_load_file`; snapshot.py rule 11)
            self._load_started = time.perf_counter()
            base_wm = self._file_wm = await anyio.to_thread.run_sync(persist.open)
            self._replica = persist.replica
            self._persist = persist
            stack.push_async_callback(persist.close)  # runs after the task group has stopped
        if not self.origin_public_keys:
            logger.warning(
                "event=unverified node=%s: no origin public key configured, states from peers"
                " are applied WITHOUT checking the origin's signature",
                self.node_id,
            )
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        if self._transport is None:
            self._transport = await TcpTransport.create(
                self.listen,
                task_group=tg,
                cluster_id=self.cluster_id,
                node_id=self.node_id,
                role="edge",
                key=self.cluster_key,
                tls=self.tls,
                faults=self.faults,
                advertise=self.advertise,
                seeds=self.seeds,
                limits=self.net_limits,
                origins=self.origins,
                on_client=self._serve_client,
            )
        transport = self._transport
        stack.push_async_callback(transport.aclose)  # injected or not: leaving the network
        gossip = GossipNode(
            transport.address,
            self._replica,
            role="edge",
            seeds=[s for s in self.seeds if s != transport.address],
            config=self.config,
            rng=self._rng,
            origins=self.origins,
        )
        runtime = NodeRuntime(transport, gossip, wall_ms=self._wall_ms)
        self._runtime = runtime
        runtime.add_listener(self.hub.on_changes)
        runtime.add_job_listener(self._on_job)
        stack.callback(self.hub.close)
        if self._persist is not None:
            runtime.add_listener(self._persist.on_changes)
            self._persist.held = lambda: gossip.bootstrap.whole  # (persistence.py rule 6)
            gossip.expect_base(base_wm)
        tg.start_soon(log_progress, self)
        await tg.start(runtime.run)
        if self._persist is not None:
            tg.start_soon(self._load_file, self._persist, tg)
        else:
            self._file_joined.set()
        stack.push_async_callback(runtime.leave)  # first thing on exit, while still connected
        if self.http is not None:
            sock = bind_socket(self.http)
            self.http_address = socket_address(sock)
            app = build_app(self, self.auth, self.http_limits)
            fds = getattr(transport, "fds", None)  # the node's one fd budget
            await tg.start(
                partial(serve_app, app, sock, tls=self.tls, limits=self.http_limits, fds=fds)
            )
        logger.info(
            "event=started node=%s address=%s origin=%s peers=%d http=%s",
            self.node_id,
            transport.address,
            self.origin,
            len(self.seeds) - 1,
            self.http_address,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._ctx_token is not None:
            try:
                kvstore.current_node.reset(self._ctx_token)
            except ValueError:  # exited in another context than entered
                pass
            self._ctx_token = None
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            logger.info("event=stopped node=%s", self.node_id)

    def is_ready(self) -> bool:
        """True once this node holds everything up to the origin's watermark as first heard
        after joining (no snapshot under way then), and from then on while it runs: a later
        delta only brings newer writes (`/status` `syncing` shows it); see the module doc."""
        runtime = self._runtime
        if runtime is None or not runtime.running:
            return False
        self._ready = self._ready or self.gossip.bootstrap.ready()
        return self._ready

    async def wait_ready(self, *, poll: float = 0.01) -> None:
        """Wait until `is_ready()` (bound it with `anyio.move_on_after`)."""
        # readiness turns on messages as well as on applied changes: a short poll is simplest
        while not self.is_ready():  # noqa: ASYNC110
            await anyio.sleep(poll)

    # -- reads -------------------------------------------------------------------------------------

    def open(self, name: str) -> EdgeStore:
        """The store `name` (StoreNotFound if this node does not know it)."""
        if not self._replica.has_store(name):
            raise StoreNotFound(f"no such store: {name!r}")
        return EdgeStore(
            self._replica.store(name), hub=self.hub, writer=self._write, clock=self._wall_ms
        )

    def stores(self) -> list[str]:
        return self._replica.store_names()

    async def _serve_client(self, peer: PeerIdentity, stream: FramedStream) -> None:
        """A client connection on the gossip port: local reads only (node/clientreads.py)."""
        limits = self.net_limits
        await serve_reads(
            self,
            stream,
            limits.idle_timeout,
            stream.max_frame_size,
            budget=getattr(self._transport, "client_budget", None),
            room_timeout=limits.handshake_timeout,
            events=None if self._runtime is None else self._runtime.metrics.events,
        )

    # -- writes ------------------------------------------------------------------------------------

    async def _write(self, store: str, body: dict[str, Any]) -> Version:
        """Forward one write to the origin, apply its deltas here, return its version."""
        if self.token is not None and body.get("token") is None:
            body = {**body, "token": self.token}
        if len(self.origins) == 1:
            reply = await self.runtime.request(self.origin, body, self.write_timeout)
        else:
            reply = await self._write_to_leader(body)
        seq, written_at, items, covers = _parse_write_reply(reply)
        proofs = self._replica.proofs
        if proofs is not None and items:
            try:
                certs = [Certificate.from_wire(c) for c in reply.get("proofs", [])]
                ok = proofs.verify(items, certs, self._replica.state)
            except RemoteProtocolError as exc:
                self.runtime.reject(self.origin, exc)
                raise
            if len(ok) != len(items):  # a Bloom delta that does not land here: AE brings it
                items, covers = ok, []
        if items or covers:
            await self.runtime.publish(items, covers)
        return Version(seq, written_at)

    async def _write_to_leader(self, body: dict[str, Any]) -> Message:
        """Several origins: try the presumed leader, move on to the next origin when it does
        not lead (NotLeader) or does not answer within a short try.  Every try carries the
        same request id, so the log applies the write at most once."""
        body = {**body, "rid": os.urandom(16)}
        deadline = anyio.current_time() + self.write_timeout
        error: OriginUnavailable | None = None
        while (left := deadline - anyio.current_time()) > 0:
            try:
                return await self.runtime.request(self.origin, body, min(left, ORIGIN_TRY))
            except OriginUnavailable as exc:  # NotLeader included
                error = exc
            except EdgeKVError as exc:
                if exc.code not in ("log_error", "fenced"):
                    raise
                error = OriginUnavailable(f"{self.origin}: {exc}")  # failed mid-commit: retry
            i = self.origins.index(self.origin) if self.origin in self.origins else -1
            self.origin = self.origins[(i + 1) % len(self.origins)]
            if self.origin == self.origins[0]:  # a whole round without a leader: wait a bit
                await anyio.sleep(min(0.1, max(0.0, deadline - anyio.current_time())))
        raise error or OriginUnavailable("no origin answered")

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Node id, address, watermark, lag, peers, roots, counters (node/edge_status.py)."""
        return edge_status(self)

    def metrics_text(self) -> str:
        """Prometheus text exposition of this node."""
        return edge_metrics_text(self)


def _parse_write_reply(
    reply: Message,
) -> tuple[int, int, list[tuple[str, str, Delta]], list[tuple[int, int]]]:
    """Validate a write RESPONSE: {"seq", "written_at", "items": [[store, key, delta]],
    "covers": [[lo, hi]]}, with the field checks of a PUSH (gossip/fields.py)."""
    seq = fields.check_int(reply.get("seq"), "write reply seq")
    written_at = fields.check_int(reply.get("written_at", 0), "write reply written_at")
    covers = fields.RANGES.decode(reply.get("covers", []), "write reply covers")
    items = fields.ITEMS.decode(reply.get("items", []), "write reply items")
    return seq, written_at, items, covers
