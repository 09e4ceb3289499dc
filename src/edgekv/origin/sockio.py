"""Writing to a socket without a trip through the event loop, where that is safe.

A send through anyio (on trio) costs a checkpoint, a task switch when the socket is not
writable, and a few layers of wrappers; the origin answers a whole commit group, and a client
sends a batch of requests, with one plain non-blocking `socket.send` instead, and falls back to
the stream's `send` for whatever the kernel does not take at once.
"""

from __future__ import annotations

import socket

import anyio.abc
import sniffio


def direct_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The non-blocking socket under `stream` if bytes may be written to it directly: a plain
    anyio socket stream (not TLS or any wrapper) on the trio backend, whose `send` writes
    straight to the socket and keeps no buffer of its own."""
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    if sniffio.current_async_library() != "trio":
        return None
    try:
        sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except Exception:
        return None
    return None if sock.getblocking() else sock
