"""Request/reply matching: the requests waiting for their answers, by request id.

One implementation for every requester of the framed request protocol (REQUEST{id} out,
RESPONSE{id} or ERROR{id, code, message} back): `NodeRuntime.request` (a node asking a peer,
e.g. an edge forwarding a write to the origin), `OriginClient` (a client over its origin
connections) and the testnet's `SimClient`.

Theory of operation
1. `add(waiter)` files a waiter under a fresh id (1, 2, ... per table); the caller sends its
   REQUEST with that id, waits on `waiter.event`, and `discard`s the id when it is done,
   whatever happened (answered, timed out, cancelled).
2. `match(msg, accept)` finds the waiter an answer belongs to: a RESPONSE or ERROR whose int
   id is filed, whose waiter has no answer yet, and that `accept(waiter)` takes (a caller
   that sent to one peer refuses answers from another).  Anything else is unmatched (None):
   a late answer after a timeout, a duplicate, a forgery.  `waiter.answer(msg)` completes it;
   `complete` is both.
3. `wake(pred)` wakes the waiters (those `pred` selects) without an answer: their connection
   or node went away.
4. `outcome(reply, unavailable)` turns what a waiter got into the caller's result: the
   RESPONSE, its ERROR raised as the typed error it names (`errors.error_from_code`), or
   `OriginUnavailable(unavailable)` when there was no answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

import anyio

from ..errors import OriginUnavailable, error_from_code
from ..gossip.wire import Message, MsgType

__all__ = ["PendingRequests", "Waiter", "outcome"]

_RESPONSE, _ERROR = int(MsgType.RESPONSE), int(MsgType.ERROR)


class Event(Protocol):
    """What a waiter's event offers: anyio's, or the running backend's own (cheaper to make)."""

    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


class Waiter:
    """One request waiting for its answer (subclasses add what their requester tracks).
    `event`: a fresh event to use instead of an `anyio.Event`."""

    __slots__ = ("event", "reply")

    def __init__(self, event: Event | None = None) -> None:
        self.event: Event = anyio.Event() if event is None else event
        self.reply: Message | None = None

    def answer(self, msg: Message) -> None:
        self.reply = msg
        self.event.set()


W = TypeVar("W", bound=Waiter)


class PendingRequests(Generic[W]):
    """The waiters of one requester, by request id (see the module docstring)."""

    __slots__ = ("_ids", "_waiting")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, W] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[W]:
        return iter(list(self._waiting.values()))

    def add(self, waiter: W) -> int:
        rid = next(self._ids)
        self._waiting[rid] = waiter
        return rid

    def discard(self, rid: int) -> None:
        self._waiting.pop(rid, None)

    def match(self, msg: Message, accept: Callable[[W], bool] | None = None) -> W | None:
        rid = msg.get("id")
        if type(rid) is not int or msg.get("t") not in (_RESPONSE, _ERROR):
            return None
        waiter = self._waiting.get(rid)
        if (
            waiter is None
            or waiter.reply is not None
            or (accept is not None and not accept(waiter))
        ):
            return None
        return waiter

    def complete(self, msg: Message, accept: Callable[[W], bool] | None = None) -> W | None:
        waiter = self.match(msg, accept)
        if waiter is not None:
            waiter.answer(msg)
        return waiter

    def wake(self, pred: Callable[[W], bool] | None = None) -> None:
        for waiter in list(self._waiting.values()):
            if pred is None or pred(waiter):
                waiter.event.set()


def outcome(reply: Message | None, unavailable: str) -> Message:
    """The RESPONSE, or its ERROR raised as the typed error, or OriginUnavailable (rule 4)."""
    if reply is None:
        raise OriginUnavailable(unavailable)
    if reply["t"] == _ERROR:
        raise error_from_code(str(reply.get("code")), str(reply.get("message")))
    return reply
