"""Serving a node's HTTP app (the origin's API, the edge's admin API) with hypercorn, bounded.

Theory of operation (issue #12)
1. Under trio (the daemons' backend) the port's accept loop is ours: connections are capped
   in total (`HttpLimits.max_connections`, lowered to keep 64 file descriptors free) and per
   source IP (`max_per_address`); one over a cap is closed at once, an accept error (EMFILE,
   ...) is counted and retried after a back-off (listener.py).  Each admitted connection is
   served by hypercorn's own connection handler.  `stats` counts refusals and accept errors.
2. Hypercorn closes a connection whose request head is not complete within
   `HttpLimits.head_timeout` of its start or of its previous answer (its keep-alive timeout
   covers a connection until a whole head has arrived) and bounds a head's size (16 KiB).
   The app bounds the body: size caps before reading, `body_timeout` for the whole body
   (httpapi.py).  So a slow sender holds a connection for head_timeout + body_timeout at most.
3. Under asyncio (an application embedding a node) hypercorn's own server runs with the same
   timeouts; the connection caps of rule 1 are not applied there.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import sniffio
from starlette.applications import Starlette

from edgekv.gossip.transport import TransportStats
from edgekv.node.framed import format_address, parse_address
from edgekv.node.httpapi import HttpLimits
from edgekv.node.listener import ACCEPT_BACKOFF_MAX, ConnectionCaps, accept_failed
from edgekv.node.tlsconfig import TlsConfig

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

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
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with hypercorn on the bound `sock` until `shutdown` is set or the caller
    cancels (trio or asyncio), within `limits` (see the module docstring).  With `tls`, HTTPS
    with the node's certificate; a client certificate is verified against the CA if offered,
    not required (tokens authorise)."""
    from hypercorn.config import Config

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
    if sniffio.current_async_library() == "trio":
        caps = ConnectionCaps(
            limits.max_connections,
            limits.max_per_address,
            limits.max_connections,
            fd_reserve=FD_RESERVE,
        )
        await _serve_trio(app, config, sock, shutdown, caps, stats or TransportStats(), task_status)
        return
    from hypercorn.asyncio import serve as asyncio_serve

    fd = sock.detach()  # hypercorn owns (and closes) the listening socket from here on
    config.bind = [f"fd://{fd}"]
    task_status.started()
    await asyncio_serve(_asgi(app), config, shutdown_trigger=shutdown.wait)


async def _serve_trio(
    app: Starlette,
    config: Any,
    sock: socket.socket,
    shutdown: anyio.Event,
    caps: ConnectionCaps,
    stats: TransportStats,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    """Rule 1: our accept loop, hypercorn's connection handler."""
    import trio
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    wrapped = wrap_app(_asgi(app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    ssl_context = config.create_ssl_context()
    name = socket_address(sock)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def handle(stream: Any, host: str) -> None:
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(
                    stream, ssl_context, server_side=True, https_compatible=True
                )
            await TCPServer(wrapped, config, context, ConnectionState({}), stream)
        finally:
            caps.closed(host, False)
            # hypercorn's close awaits send_eof first: cancelled there, it never closes
            await trio.aclose_forcefully(stream)

    async def accept(server: trio.Nursery) -> None:
        backoff = 0.0
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                backoff = min(max(backoff * 2, caps.accept_backoff), ACCEPT_BACKOFF_MAX)
                await trio.sleep(accept_failed(exc, stats, backoff, name))
                continue
            backoff = 0.0
            try:
                host = str(stream.socket.getpeername()[0])
            except OSError:
                host = "?"
            if not caps.admit(host, stats, name):
                await trio.aclose_forcefully(stream)
                continue
            caps.authenticated()  # no handshake of ours: only the connection counts
            server.start_soon(handle, stream, host)

    async with listener, trio.open_nursery() as server:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(partial(accept, server))
            task_status.started()
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await context.terminated.set()  # idle keep-alive connections close now
        server.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        if not math.isfinite(server.cancel_scope.deadline):
            server.cancel_scope.cancel()
