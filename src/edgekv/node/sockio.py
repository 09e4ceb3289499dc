"""Reading and writing a socket without extra trips through the event loop, where that is safe.

A send through anyio costs a checkpoint (on trio and asyncio alike: a yield to the event loop
after sending), a task switch when the socket is not writable, and a few layers of wrappers;
the origin answers a whole commit group, an edge answers a client's read, and a client sends a
batch of requests, with one plain non-blocking `socket.send` instead, and falls back to the
stream's `send` for whatever the kernel does not take at once.

On trio the stream's `send` returns once everything is written, so the socket may be written
directly again afterwards (`direct_socket`).  On asyncio the stream's transport keeps what the
socket did not take in a buffer of its own and writes it later: the socket may be written
directly only until the stream's `send` has been used once (`write_socket` says which).
"""

from __future__ import annotations

import socket
import sys
import weakref

import anyio
import anyio.abc
import sniffio


def _raw(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The non-blocking socket under a plain anyio socket stream (on asyncio, the transport's
    `TransportSocket` stand-in, which cannot send or receive)."""
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    try:
        sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        blocking = sock.gettimeout() != 0.0
    except Exception:
        return None
    return None if blocking else sock


_DIRECT: weakref.WeakKeyDictionary[anyio.abc.ByteStream, socket.socket | None] = (
    weakref.WeakKeyDictionary()
)


def direct_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The non-blocking socket under `stream` if bytes may be written to it directly and it
    may be waited on and read directly: a plain anyio socket stream (not TLS or any wrapper) on
    the trio backend, whose `send` writes straight to the socket and keeps no buffer of its
    own.  Remembered per stream (a stream keeps its socket and its event loop for life): the
    senders ask at every frame, and the answer costs ~10 us of anyio attribute lookups."""
    try:
        return _DIRECT[stream]
    except KeyError:
        pass
    except TypeError:  # a stream that cannot be weakly referenced: not remembered
        return _raw(stream) if sniffio.current_async_library() == "trio" else None
    sock = _raw(stream) if sniffio.current_async_library() == "trio" else None
    _DIRECT[stream] = sock
    return sock


def write_socket(stream: anyio.abc.ByteStream) -> tuple[socket.socket | None, bool]:
    """The non-blocking socket under a plain anyio socket stream, to be written directly with
    `os.write(sock.fileno(), data)` (None if there is none), and whether it may still be
    written directly after the stream's own `send` has been used (trio: yes; asyncio: no, its
    transport may still hold bytes, see the module docstring).

    Only the writing side: on asyncio the transport reads the socket, and what it hands out
    cannot send (an `asyncio.trsock.TransportSocket`).  Ask for `fileno()` at every write: it
    is -1 once the socket is closed, whereas a descriptor kept as a number may by then belong
    to another connection."""
    return _raw(stream), sniffio.current_async_library() == "trio"


_MIN_RTT = 148  # offset of tcpi_min_rtt (u32, microseconds) in Linux's struct tcp_info


def tcp_min_rtt(stream: anyio.abc.ByteStream) -> float:
    """The lowest round trip, in seconds, the kernel has measured on the TCP connection under
    `stream` (plain or TLS): Linux's TCP_INFO `tcpi_min_rtt`, the path's own delay without the
    scheduling delays of either end.  0.0 where it is not known (not TCP, not Linux, no
    sample yet)."""
    try:
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _MIN_RTT + 4)
    except Exception:
        return 0.0
    if len(info) < _MIN_RTT + 4:
        return 0.0
    return int.from_bytes(info[_MIN_RTT : _MIN_RTT + 4], sys.byteorder) / 1e6


def send_now(sock: socket.socket, data: bytes) -> int:
    """Send what the kernel takes at once (0 when the socket would block); other OSErrors
    propagate."""
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0


async def receive_ready(sock: socket.socket, max_bytes: int) -> bytes:
    """Wait until `sock` is readable, then read it: one trip through the event loop, no read
    that fails first.  Raises anyio.EndOfStream once the peer has closed."""
    while True:
        await anyio.wait_readable(sock)
        try:
            data = sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            raise anyio.EndOfStream
        return data
