"""The Origin: the source of truth.  A node plus sequencer, write-ahead log and write API.

`async with Origin(data_dir=..., listen=...) as origin:` recovers the log into the origin's
replica, starts the commit loop, listens on ONE address for edges (gossip) and clients (the
handshake role "client" hands the connection to `clientconn.serve_client`), and optionally
serves the HTTP API.  The same operations are methods (`await origin.put(...)`) for in-process
use; every path goes through `handle(body)` so TCP, HTTP, edges and in-process calls share one
set of checks.  Each commit is applied to the replica and then handed to gossip: the origin's
NodeRuntime (a GossipNode with role "origin" on the origin's replica) publishes it, subscribers
of `committed()` receive `(items, covers)`, and the optional `on_commit` callback is called.
`transport=` injects another Transport (the testnet's simulated network) instead of TCP; with
neither `listen` nor `transport` the origin runs without a network (in-process use only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..clock import wall_clock_ms
from ..crdt import Limits, Replica
from ..crdt.codec import encode_delta
from ..crdt.ops import DEFAULT_LIMITS
from ..crdt.proofs import ProofStore, Signer
from ..errors import InvalidInput, NotLeader, StoreNotFound
from ..gossip.config import GossipConfig
from ..gossip.transport import Transport
from ..gossip.wire import Message
from ..node.auth import TokenAuth, TokenSpec
from ..node.fanout import send_each
from ..node.faults import LinkFaults
from ..node.httpapi import HttpLimits
from ..node.identity import load_node_id
from ..node.keys import origin_signing_key, raw_public_key
from ..node.limits import DEFAULT_NET_LIMITS, NetLimits
from ..node.tlsconfig import TlsConfig
from .api import StoreApi
from .log import CommitLog, LogError, is_postgres, open_log
from .requests import is_write, op_name, opt_int, parse_write, store_of
from .sequencer import Covers, Sequencer
from .writer import BatchCommand, Command, Item, Planned, StoreCommand

if TYPE_CHECKING:
    from ..node.runtime import NodeRuntime
    from .clientconn import ClientConnection
    from .poller import ClientPoller

__all__ = ["Origin"]

logger = logging.getLogger("edgekv.origin")

Committed = tuple[list[Item], Covers]
SUBSCRIBER_BUFFER = 4096


def _fell_behind() -> None:
    logger.warning("a committed-deltas subscriber fell behind; closing it")


def write_reply(planned: Planned, written_at: int, *, with_items: bool = False) -> Message:
    """The response fields of a durable write."""
    out: Message = {
        "seq": planned.last,
        "written_at": written_at,
        "seqs": planned.seqs,
        "covers": [[planned.first, planned.last]] if planned.items else [],
    }
    if with_items:
        out["items"] = [[s, k, encode_delta(d)] for s, k, d in planned.items]
    return out


class Origin(StoreApi):
    """The origin node (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | Path | None = "origin-data",
        listen: str | None = "127.0.0.1:7300",
        http: str | None = None,
        tokens: TokenSpec | None = None,
        cluster_key: bytes | str | None = None,
        *,
        cluster_id: str = "edgekv",
        node_id: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        synchronous: str = "FULL",
        flush_threads: int = 0,
        compact_min_rows: int = 1_000_000,
        wall_ms: Callable[[], int] = wall_clock_ms,
        on_commit: Callable[[list[Item], Covers], Awaitable[None]] | None = None,
        transport: Transport | None = None,
        seeds: Sequence[str] = (),
        gossip_config: GossipConfig | None = None,
        rng: random.Random | None = None,
        faults: LinkFaults | None = None,
        advertise: str | None = None,
        net_limits: NetLimits = DEFAULT_NET_LIMITS,
        signing_key: Ed25519PrivateKey | str | Path | None = None,
        sign: bool = True,
        http_limits: HttpLimits | None = None,
        tls: TlsConfig | None = None,
        log: str | None = None,
        follow_interval: float = 0.1,
    ) -> None:
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.net_limits = net_limits
        self._signing_key = signing_key  # see node/keys.py: None keeps one in the data dir
        self.signer: Signer | None = None
        self._sign = sign  # False: writes go out unsigned (benchmarks; verifying edges refuse)
        self.listen = listen
        self.http_listen = http
        self.auth = TokenAuth(tokens)
        self.http_limits = http_limits or HttpLimits()
        self.cluster_key = cluster_key.encode() if isinstance(cluster_key, str) else cluster_key
        self.tls = tls  # TLS on the listen and HTTP ports (node/tlsconfig.py)
        self.cluster_id = cluster_id
        self._node_id_arg = node_id
        self.node_id = node_id or "origin"  # the data dir's id once started (node/identity.py)
        self.advertise = advertise
        self.limits = limits
        self.wall_ms = wall_ms
        self.on_commit = on_commit
        self.replica = Replica()
        self._synchronous = synchronous
        self.log_spec = log  # None: SQLite in data_dir; "postgresql://...": see pglog.py
        self.follow_interval = follow_interval  # a follower's log tail period (follower.py)
        self.leading = False  # takes writes (a follower of a PostgreSQL log does not)
        self._follows_on_failure = is_postgres(log)  # another origin may lead after a failure
        # the PostgreSQL log commits in a worker thread (a network round trip per group)
        self._flush_threads = flush_threads or (1 if is_postgres(log) else 0)
        self._compact_min_rows = compact_min_rows
        self._subscribers: list[MemoryObjectSendStream[Committed]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._wal: CommitLog | None = None
        self._sequencer: Sequencer | None = None
        self._sequencer_scope: anyio.CancelScope | None = None  # the commit loop's
        self.transport: Any = transport
        self._own_transport = transport is None
        self.faults = faults  # applied to the TCP transport this origin creates
        self.seeds = list(seeds)
        self.gossip_config = gossip_config
        self.rng = rng
        self.runtime: NodeRuntime | None = None
        self.address = ""
        self.http_address = ""
        self.recovered_rows = 0
        self.answered: list[ClientConnection] = []  # client connections with answers to send
        self.client_poller: ClientPoller | None = None  # reads of client connections (trio)
        self.clients = 0  # client connections being served
        self.idle_closed_clients = 0  # client connections closed for idling
        self.client_pauses = 0  # times a client connection's reading paused (back-pressure)
        self._http_stop: anyio.Event | None = None
        self._http_done: anyio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Origin:
        self._http_stop, self._http_done = anyio.Event(), anyio.Event()
        if self.data_dir is not None:
            self.node_id = load_node_id(self.data_dir, self._node_id_arg, "origin")
        self._wal = await anyio.to_thread.run_sync(
            lambda: open_log(
                self.log_spec, self.data_dir, synchronous=self._synchronous, owner=self.node_id
            )
        )
        if self._sign:
            key = await anyio.to_thread.run_sync(
                origin_signing_key, self._signing_key, self.data_dir
            )
            self.signer = Signer(key)
            proofs = ProofStore([self.signer.public], journal=False)  # nothing persists it
            self.replica.use_proofs(proofs).signer = self.signer
            check = getattr(self._wal, "check_signing_key", None)  # a shared PostgreSQL log
            if check is not None:
                try:
                    await anyio.to_thread.run_sync(check, raw_public_key(self.signer.public))
                except BaseException:
                    self._wal.close()
                    self._wal = None
                    raise
        self._sequencer = self.new_sequencer(self._wal)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            self.recovered_rows = await self._sequencer.recover()
            from .pglog import PostgresLog

            if isinstance(self._wal, PostgresLog):  # lead now, or follow until we can
                from .follower import lead_or_follow

                await tg.start(
                    partial(lead_or_follow, interval=self.follow_interval), self, self._wal
                )
            else:
                await self._sequencer.load_recent_outcomes()
                await self.start_leading()
            if self.transport is None and self.listen is not None:
                await self._start_tcp(tg)
            if self.transport is not None:
                await self._start_gossip(tg)
            if self.http_listen is not None:
                from .http import serve_http

                self.http_address = await tg.start(self._run_http, serve_http)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await self._exit(type(exc), exc, exc.__traceback__)
            raise
        return self

    def new_sequencer(self, wal: CommitLog) -> Sequencer:
        """A sequencer on `wal`: at start, and when a deposed leader follows again."""
        return Sequencer(
            wal,
            self.replica,
            signer=self.signer,
            on_commit=self._committed,
            after_answers=self._flush_answers,
            wall_ms=self.wall_ms,
            flush_threads=self._flush_threads,
            compact_min_rows=self._compact_min_rows,
        )

    async def start_leading(self) -> None:
        """Start the commit loop: from now on this origin takes writes."""
        assert self._tg is not None and self._sequencer is not None
        self._sequencer_scope = await self._tg.start(self._run_sequencer, self._sequencer)
        self.leading = True

    async def _run_sequencer(
        self, sequencer: Sequencer, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
    ) -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await tg.start(sequencer.run)
                task_status.started(scope)

    def stop_leading(self, error: LogError) -> None:
        """Deposed (origin/follower.py rule 4): refuse writes at once, fail those in flight
        with `error`, stop the commit loop."""
        self.leading = False
        if self._sequencer is not None:
            self._sequencer.depose(error)
            self._sequencer.close()
        if self._sequencer_scope is not None:
            self._sequencer_scope.cancel()
            self._sequencer_scope = None

    def follow(self, wal: CommitLog) -> None:
        """After `stop_leading`: a fresh sequencer on `wal` (a new session on the log)."""
        self._wal = wal
        self._sequencer = self.new_sequencer(wal)

    async def _run_http(
        self,
        serve: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._http_stop is not None and self._http_done is not None
        try:
            await serve(self, self.http_listen, self._http_stop, task_status=task_status)
        finally:
            self._http_done.set()

    async def _start_gossip(self, tg: anyio.abc.TaskGroup) -> None:
        """The origin is a gossip peer: a GossipNode(role="origin") on the origin's replica,
        driven by a NodeRuntime; edges' REQUESTs (forwarded writes, reads) come in through it."""
        from ..gossip.core import GossipNode
        from ..node.runtime import NodeRuntime

        self.address = self.transport.address
        gossip = GossipNode(
            self.transport.address,
            self.replica,
            role="origin",
            seeds=[s for s in self.seeds if s != self.transport.address],
            config=self.gossip_config,
            rng=self.rng,
        )
        self.runtime = NodeRuntime(
            self.transport, gossip, on_request=self._on_peer_request, wall_ms=self.wall_ms
        )
        await tg.start(self.runtime.run)

    async def _on_peer_request(self, peer: str, msg: Message) -> Message:
        """A REQUEST from a peer node (an edge forwarding a write or a read).  Checked like any
        client's: the cluster key or a certificate proves membership, never permission, so with
        tokens on the edge presents its own token (`EdgeNode(token=...)`)."""
        body = {k: v for k, v in msg.items() if k not in ("t", "id")}
        return await self.handle(body, with_items=True)

    async def _start_tcp(self, tg: anyio.abc.TaskGroup) -> None:
        from ..node.tcp import TcpTransport
        from .clientconn import serve_client
        from .poller import ClientPoller

        async def on_client(peer: Any, stream: Any) -> None:
            await serve_client(self, peer, stream)

        if sniffio.current_async_library() == "trio" and ClientPoller.available():
            self.client_poller = ClientPoller()
            tg.start_soon(self.client_poller.run)

        self.transport = await TcpTransport.create(
            self.listen or "127.0.0.1:0",
            task_group=tg,
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            role="origin",
            key=self.cluster_key,
            tls=self.tls,
            on_client=on_client,
            faults=self.faults,
            advertise=self.advertise,
            seeds=self.seeds,
            limits=self.net_limits,
        )
        self.address = self.transport.address
        # nobody else may claim the origin's address (a claim is confirmed by dialling it)
        self.transport.origins = frozenset({self.address})

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._http_stop is not None and self._http_done is not None and self.http_address:
            # let hypercorn shut down cleanly before cancelling the rest
            self._http_stop.set()
            with anyio.move_on_after(2.0, shield=True):
                await self._http_done.wait()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        return await self._exit(exc_type, exc, tb)

    async def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        try:
            if self.transport is not None and self._own_transport:
                with anyio.CancelScope(shield=True):
                    await self.transport.aclose()
            if tg is not None:
                # the body's own exception propagates as itself, not inside an ExceptionGroup;
                # a crashed background task still raises here
                await tg.__aexit__(None, None, None)
            return None
        finally:
            for sub in self._subscribers:
                sub.close()
            self._subscribers.clear()
            if self._sequencer is not None:
                self._sequencer.close()
            if self._wal is not None:
                self._wal.close()
                self._wal = None

    # -- committed deltas ---------------------------------------------------------------------------

    def committed(self, buffer: int = SUBSCRIBER_BUFFER) -> MemoryObjectReceiveStream[Committed]:
        """A stream of `(items, covers)` for every commit from now on.

        A subscriber that falls more than `buffer` commits behind is closed (it must resync
        from the replica, as an edge would by anti-entropy).
        """
        send, recv = anyio.create_memory_object_stream[Committed](buffer)
        self._subscribers.append(send)
        return recv

    async def _committed(self, items: list[Item], covers: Covers) -> None:
        self._subscribers = send_each(self._subscribers, (items, covers), _fell_behind)
        runtime = self.runtime
        if runtime is not None and runtime.running:
            await runtime.publish(items, covers)
        if self.on_commit is not None:
            await self.on_commit(items, covers)

    def _flush_answers(self) -> None:
        if self.answered:
            from .clientconn import flush_answers

            flush_answers(self.answered)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key edges verify this origin's writes with (known once the origin runs)."""
        if self.signer is None:
            raise RuntimeError("the origin is not running; use `async with Origin(...)`")
        return self.signer.public

    @property
    def sequencer(self) -> Sequencer:
        if self._sequencer is None:
            raise RuntimeError("the origin is not running; use `async with Origin(...)`")
        return self._sequencer

    @property
    def watermark(self) -> int:
        return self.replica.watermark

    def status(self) -> dict[str, Any]:
        """What `GET /v1/status` shows: the log, the commit pipeline, clients, gossip peers."""
        from .status import origin_status

        return origin_status(self)

    def metrics_text(self) -> str:
        """Prometheus text exposition of the origin (`GET /metrics`)."""
        from .status import origin_metrics

        return origin_metrics(self)

    async def compact(self) -> int:
        """Compact the log now; returns the number of rows removed."""
        return await self.sequencer.compact()

    # -- the one request path ----------------------------------------------------------------------

    async def handle(
        self, body: Mapping[str, Any], *, with_items: bool = False, trusted: bool = False
    ) -> Message:
        """Execute one request body (see `requests`); returns the response fields.

        `trusted` skips the token check: only for in-process callers, never for anything that
        came over a connection (whatever role it declared).  Raises an EdgeKVError subclass for every bad request.
        """
        prepared = self.prepare(body, trusted=trusted)
        if not isinstance(prepared, (StoreCommand, BatchCommand)):
            return prepared
        planned, written_at = await self.sequencer.submit(prepared)
        reply = write_reply(planned, written_at, with_items=with_items)
        proofs = self.replica.proofs
        if with_items and planned.items and proofs is not None:
            reply["proofs"] = [c.to_wire() for c in proofs.answer_material(planned.items)]
        return reply

    def prepare(self, body: Mapping[str, Any], *, trusted: bool = False) -> Message | Command:
        """Check one request body: a read is answered at once (its response fields are
        returned), a write becomes the Command to submit.  Raises EdgeKVError if bad."""
        op = op_name(body)
        token = body.get("token")
        if op == "stores":
            if not trusted:
                return {"stores": self.auth.visible(token, self.replica.store_names())}
            return {"stores": self.replica.store_names()}
        store = store_of(body)
        write = is_write(op)
        if not trusted:
            self.auth.check(token, "write" if write else "read", store)
        if write:
            if not self.leading or (self._follows_on_failure and self.sequencer.failed):
                # a PostgreSQL log that failed under us: deposed, or cut off from the database
                raise NotLeader(f"origin {self.address or self.node_id} does not lead the log")
            command = parse_write(body, self.limits, op, store)
            rid = body.get("rid")
            if rid is None:
                return command
            if type(rid) is not bytes or not 8 <= len(rid) <= 64:
                raise InvalidInput("rid (a request id) must be 8 to 64 bytes")
            return dataclasses.replace(command, rid=rid)
        return self._answer_read(op, store, body)

    def _answer_read(self, op: str, store: str, body: Mapping[str, Any]) -> Message:
        if not self.replica.has_store(store):
            raise StoreNotFound(f"no such store: {store!r}")
        sr = self.replica.store(store)
        now = self.wall_ms()
        if op == "scan":
            pattern = body.get("pattern", "*")
            if not isinstance(pattern, str) or len(pattern) > 4 * self.limits.max_key_bytes:
                raise InvalidInput("pattern must be a string of reasonable length")
            return {"keys": sr.scan(pattern, now, opt_int(body, "limit", 1))}
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput("a key must be a non-empty string")
        if op == "get":
            return {"value": sr.get(key, now)}
        if op == "get_entry":
            entry = sr.get_entry(key, now)
            if entry is None:
                return {"value": None}
            return {
                "value": entry.value,
                "seq": entry.version.seq,
                "written_at": entry.version.written_at,
                "expires_at": entry.expires_at,
            }
        if op == "zrange_by_score":
            lo, hi = body.get("min", -math.inf), body.get("max", math.inf)
            if type(lo) not in (int, float) or type(hi) not in (int, float):
                raise InvalidInput("min and max must be numbers")
            if math.isnan(lo) or math.isnan(hi):
                raise InvalidInput("min and max must not be NaN")
            return {"members": [[m, s] for m, s in sr.zrange_by_score(key, lo, hi, now)]}
        if op == "zscan":
            pattern = body.get("pattern", "*")
            if not isinstance(pattern, str):
                raise InvalidInput("pattern must be a string")
            return {"members": [[m, s] for m, s in sr.zscan(key, pattern, now)]}
        item = body.get("item")
        if not isinstance(item, bytes):
            raise InvalidInput("bf_exists needs an item (bytes)")
        return {"exists": sr.bf_exists(key, item, now)}

    # -- in-process API (api.StoreApi: the same operations as OriginClient) ---------------------

    async def _write(self, body: dict[str, Any]) -> Message:
        return await self.handle(body, trusted=True)

    async def _read(self, body: dict[str, Any]) -> Message:
        return self._answer_read(body["op"], body["store"], body)

    async def stores(self) -> list[str]:
        return self.replica.store_names()
