"""Serving a node's HTTP app (the origin's API, the edge's admin API) with hypercorn, bounded.

Theory of operation (issue #12)
1. Under trio (the daemons' backend) and asyncio alike the port's accept loop is ours:
   connections are capped in total (`HttpLimits.max_connections`, lowered to keep 64 file
   descriptors free) and per source IP (`max_per_address`), and counted in the node's
   `FdBudget` (`fds`), which every port and outbound connection of the node shares: one over
   a cap, or arriving when the process is near its fd limit (fdbudget.py), is closed at once;
   an accept error (EMFILE, ...) is counted and retried after a back-off (listener.py).  Each
   admitted connection is served by hypercorn's own connection handler.  `stats` counts
   refusals and accept errors.
2. Hypercorn closes a connection whose request head is not complete within
   `HttpLimits.head_timeout` of its start or of its previous answer (its keep-alive timeout
   covers a connection until a whole head has arrived) and bounds a head's size (16 KiB).
   The app bounds the body: size caps before reading, `body_timeout` for the whole body
   (httpapi.py).  So a slow sender holds a connection for head_timeout + body_timeout at most.
   A connection whose client has closed its end (EOF read, before a request, between two or
   during one) closes once the answer in progress, if any, is sent: hypercorn alone would
   keep it, with its descriptor and its place in the fd budget, until that keep-alive timer
   ran out, so a flood's closed connections still filled the budget for head_timeout after
   it went (and so did every client that closes after one request).
3. Under asyncio (an application embedding a node) the same accept loop (`accept_each`) and caps
   serve the raw listening socket, each connection handed to hypercorn's asyncio handler in
   the streams it takes: the caps, accept-error back-off and timeouts are those of rule 1 and 2.
"""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import sniffio
from starlette.applications import Starlette

from edgekv.gossip.transport import TransportStats
from edgekv.node.fdbudget import FdBudget
from edgekv.node.framed import format_address, parse_address
from edgekv.node.httpapi import HttpLimits
from edgekv.node.listener import ConnectionCaps, accept_each
from edgekv.node.tlsconfig import TlsConfig

if TYPE_CHECKING:
    from hypercorn.config import Config
    from hypercorn.typing import AppWrapper, ASGIFramework

__all__ = ["bind_socket", "serve_app", "socket_address"]

FD_RESERVE = 64


def bind_socket(listen: str, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on `listen` (port 0 picks a free port)."""
    host, port = parse_address(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return format_address(host, port)


def _asgi(app: Starlette) -> ASGIFramework:
    # Starlette spells an ASGI scope as a MutableMapping, hypercorn as TypedDicts: same protocol
    return cast("ASGIFramework", app)


async def serve_app(
    app: Starlette,
    sock: socket.socket,
    *,
    shutdown: anyio.Event | None = None,
    errorlog: logging.Logger | None = None,
    tls: TlsConfig | None = None,
    limits: HttpLimits | None = None,
    stats: TransportStats | None = None,
    fds: FdBudget | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with hypercorn on the bound `sock` until `shutdown` is set or the caller
    cancels (trio or asyncio), within `limits` (see the module docstring).  With `tls`, HTTPS
    with the node's certificate; a client certificate is verified against the CA if offered,
    not required (tokens authorise).  With `fds` (the node's, its transport's), connections
    are counted in it and refused when the process is near its fd limit (fdbudget.py)."""
    from hypercorn.config import Config
    from hypercorn.utils import wrap_app

    limits = limits or HttpLimits()
    config = Config()
    config.accesslog = None
    config.errorlog = errorlog
    config.graceful_timeout = 0.5
    config.keep_alive_timeout = limits.head_timeout  # rule 2
    if tls is not None:
        tls.server_context()  # InvalidInput unless it has a certificate and key
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
        config.ca_certs = str(tls.ca)
        config.verify_mode = ssl.CERT_OPTIONAL
    if shutdown is None:
        shutdown = anyio.Event()
    caps = ConnectionCaps(
        limits.max_connections,
        limits.max_per_address,
        limits.max_connections,
        fd_reserve=FD_RESERVE,
        fds=fds,
    )
    wrapped = wrap_app(_asgi(app), config.wsgi_max_body_size, "asgi")
    if sniffio.current_async_library() == "trio":
        port = _trio_port(wrapped, config, sock)
    else:
        port = _asyncio_port(wrapped, config, sock)
    stats = stats or TransportStats()
    name = socket_address(sock)

    async def serve(conn: Any, host: str) -> None:
        try:
            await port.serve(conn)
        finally:
            caps.closed(host, False)

    async with port, anyio.create_task_group() as server:

        def start(conn: Any, host: str) -> None:
            caps.authenticated()  # no handshake of ours: only the connection counts
            server.start_soon(serve, conn, host)

        async with anyio.create_task_group() as accepting:
            accepting.start_soon(
                partial(
                    accept_each,
                    port.accept,
                    start,
                    port.close,
                    caps=caps,
                    stats=stats,
                    name=lambda: name,
                )
            )
            task_status.started()
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await port.context.terminated.set()  # idle keep-alive connections close now
        server.cancel_scope.deadline = anyio.current_time() + config.graceful_timeout


class _ClosingAtEof:
    """Mixed into hypercorn's TCPServer (trio's or asyncio's), rule 2: once it has stopped
    reading (the client closed its end, or the stream broke), the connection closes as soon
    as it would go idle, instead of waiting out the keep-alive timer."""

    idle_task: Any
    _read_all = False

    async def _read_data(self) -> None:
        await super()._read_data()  # type: ignore[misc]
        self._read_all = True
        await self.idle_task.stop()  # idle now (no request in progress): it ends here

    async def protocol_send(self, event: Any) -> None:
        if self._read_all:
            from hypercorn.events import Closed, Updated

            if isinstance(event, Updated) and event.idle:
                event = Closed()  # answered after the client's EOF: nothing more can come
        await super().protocol_send(event)  # type: ignore[misc]


class _Port:
    """One backend's side of rule 1: accept a connection, serve it with hypercorn's handler for
    that backend (closing it however that ends), close a refused one, close the listener."""

    context: Any  # hypercorn's WorkerContext: `terminated` ends idle keep-alive connections

    async def accept(self) -> tuple[Any, str] | None:
        raise NotImplementedError

    async def serve(self, conn: Any) -> None:
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> _Port:
        return self

    async def __aexit__(self, *exc: object) -> None:
        raise NotImplementedError


def _trio_port(app: AppWrapper, config: Config, sock: socket.socket) -> _Port:
    import trio
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext

    ssl_context = config.create_ssl_context()
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    class Server(_ClosingAtEof, TCPServer):
        pass

    class TrioPort(_Port):
        context = WorkerContext(None)

        async def accept(self) -> tuple[Any, str] | None:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return None
            try:
                return stream, str(stream.socket.getpeername()[0])
            except OSError:
                return stream, "?"

        async def serve(self, conn: Any) -> None:
            stream: Any = conn
            try:
                if ssl_context is not None:
                    stream = trio.SSLStream(
                        stream, ssl_context, server_side=True, https_compatible=True
                    )
                await Server(app, config, self.context, {}, stream)
            finally:
                # hypercorn's close awaits send_eof first: cancelled there, it never closes
                await trio.aclose_forcefully(stream)

        async def close(self, conn: Any) -> None:
            await trio.aclose_forcefully(conn)

        async def __aexit__(self, *exc: object) -> None:
            await listener.aclose()

    return TrioPort()


def _asyncio_port(app: AppWrapper, config: Config, sock: socket.socket) -> _Port:
    """Rule 3: the raw listening socket accepted by the loop, each connection wrapped in the
    asyncio streams hypercorn's asyncio handler takes (TLS handshake within its timeout)."""
    import asyncio

    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext

    loop = asyncio.get_running_loop()
    ssl_context = config.create_ssl_context()
    sock.setblocking(False)

    class Server(_ClosingAtEof, TCPServer):
        pass

    class AsyncioPort(_Port):
        context = WorkerContext(None)

        async def accept(self) -> tuple[Any, str] | None:
            # not `loop.sock_accept`: cancelled just as it accepted, it drops the socket
            # unclosed; here nothing is awaited between the accept and the return
            while True:
                await anyio.wait_readable(sock)
                try:
                    conn, peer = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(False)
                return conn, str(peer[0])

        async def serve(self, conn: Any) -> None:
            reader = asyncio.StreamReader(loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport: asyncio.BaseTransport | None = None
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    conn,
                    ssl=ssl_context,
                    ssl_handshake_timeout=config.ssl_handshake_timeout if ssl_context else None,
                )
                assert isinstance(transport, asyncio.Transport)
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                await Server(app, loop, config, self.context, {}, reader, writer)
            except (OSError, ssl.SSLError):
                pass  # a failed TLS handshake or a connection reset: it is closed below
            finally:
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
                conn.close()

        async def close(self, conn: Any) -> None:
            conn.close()

        async def __aexit__(self, *exc: object) -> None:
            sock.close()

    return AsyncioPort()
