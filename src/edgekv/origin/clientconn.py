"""One client connection at the origin: framed CBOR requests in, responses out.

Theory of operation
1. The connection arrives already authenticated by the handshake (role "client").  Every
   frame after it must be REQUEST {"t": 50, "id": int, "op": ..., ...}; anything else (or a
   frame the decoder rejects) closes this connection with a logged reason, nothing more.
2. Each request runs in its own task so one client may pipeline many requests (they then
   share group commits); at most `MAX_INFLIGHT` run at once per connection.
3. The answer is RESPONSE {"t": 51, "id", ...fields} or, for an EdgeKVError, ERROR {"t": 52,
   "id", "code", "message"}: a bad request costs the client one typed error, the connection
   and the origin keep serving.  Responses are written under a lock (one writer at a time).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import EdgeKVError, RemoteProtocolError
from ..gossip.wire import Message, MsgType

if TYPE_CHECKING:
    from ..gossip.wire import PeerInfo
    from ..node.tcp import FramedStream
    from .server import Origin

logger = logging.getLogger("edgekv.origin")

MAX_INFLIGHT = 256
_REQUEST, _RESPONSE, _ERROR = int(MsgType.REQUEST), int(MsgType.RESPONSE), int(MsgType.ERROR)


async def serve_client(origin: Origin, peer: PeerInfo, stream: FramedStream) -> None:
    """Serve one client connection until it closes or misbehaves.  Never raises."""
    lock = anyio.Lock()
    limiter = anyio.Semaphore(MAX_INFLIGHT)

    async def answer(req_id: int, body: Message) -> None:
        try:
            reply: Message = {"t": _RESPONSE, "id": req_id, **await origin.handle(body)}
        except EdgeKVError as exc:
            reply = {"t": _ERROR, "id": req_id, "code": exc.code, "message": str(exc)}
        except Exception as exc:  # a bug: report it to this client, keep serving
            logger.exception("request %r failed", body.get("op"))
            reply = {"t": _ERROR, "id": req_id, "code": "error", "message": f"internal: {exc!r}"}
        finally:
            limiter.release()
        try:
            try:
                async with lock:
                    await stream.send(reply)
            except EdgeKVError as exc:  # the reply itself is not sendable (too large, ...)
                err = {"t": _ERROR, "id": req_id, "code": exc.code, "message": str(exc)}
                async with lock:
                    await stream.send(err)
        except Exception as exc:  # the client went away: nothing to tell it
            logger.debug("cannot answer client %s: %r", peer.node_id, exc)

    async with anyio.create_task_group() as tg:
        try:
            while True:
                msg: dict[str, Any] = await stream.receive()
                req_id = msg.get("id")
                if msg.get("t") != _REQUEST or type(req_id) is not int:
                    raise RemoteProtocolError(f"expected REQUEST with an int id, got {msg!r:.80}")
                await limiter.acquire()
                tg.start_soon(answer, req_id, msg)
        except anyio.EndOfStream:
            pass
        except RemoteProtocolError as exc:
            logger.warning("closing client %s: %s", peer.node_id, exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            logger.debug("client %s connection lost: %r", peer.node_id, exc)
        except Exception:
            logger.exception("error serving client %s", peer.node_id)
        tg.cancel_scope.cancel()
