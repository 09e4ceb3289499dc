"""`store.watch(prefix)`: a stream of the changes applied on this edge, for cache invalidation.

Theory of operation
1. The `WatchHub` is a runtime listener: after every batch of applied changes it offers each
   change of store S to the live watchers of S whose prefix the key starts with.  Watchers are
   held weakly: one the application drops stops costing anything.
2. A change whose new state is a key version yields `WatchEvent(key, Version(seq, written_at),
   deleted)` (`deleted` for a tombstone).  Each watcher remembers the last seq it delivered per
   key and skips anything not newer, so every applied version reaches it exactly once, in
   version order per key (a late delta that only fills in an older zset member is not a new
   version and yields nothing).  A key removed without a new version (tombstone purge, expired
   value collected, anti-entropy found it deleted and purged elsewhere) yields one
   `WatchEvent(key, None, True)` unless the watcher's last event for it was already a deletion.
3. Overflow policy: each watcher buffers at most `max_buffer` events.  A consumer that falls that
   far behind is cut off: it still receives every buffered event, then iteration raises
   `WatchOverflow`; it should re-read what it caches and open a new watch.  Nothing is silently
   skipped and the node never blocks or grows without bound for a slow consumer.
4. Dropping the store ends its watchers with `StoreNotFound` (after the buffered events); closing
   the node ends them normally.
5. A whole snapshot installed (gossip/snapshot.py: the node was fresh or too far behind)
   replaces every store at once, without per-key changes: it ends every watcher with
   `WatchReset` (a `WatchOverflow`: the same "re-read what you cache, then watch again"),
   after its buffered events.  One event per key was rejected: at a million keys it would
   overflow any watcher's buffer anyway (10,000 by default) after costing a prefix test per
   key and watcher on the event loop.  A delta snapshot (a node holding a prefix) applies
   its keys as ordinary changes: watchers see each of them (rule 2, rule 3 if too many).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import AsyncResource

from edgekv.crdt import META, Change, Register, StoreReplica
from edgekv.crdt.version import Version
from edgekv.errors import EdgeKVError, InvalidInput, StoreNotFound
from edgekv.node.kvstore import KvStore

__all__ = ["EdgeStore", "WatchEvent", "WatchHub", "WatchOverflow", "WatchReset", "Watcher"]

WATCH_BUFFER = 10_000


class WatchOverflow(EdgeKVError):
    """A watcher fell more than its buffer behind and was cut off: re-read and watch again."""

    code = "watch_overflow"


class WatchReset(WatchOverflow):
    """The store's contents were replaced at once (a whole snapshot was installed, rule 5):
    re-read what you cache and watch again."""

    code = "watch_reset"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One applied change: the key, its new version (None for a removal without a new version),
    and whether the key now reads as deleted."""

    key: str
    version: Version | None
    deleted: bool


class Watcher(AsyncResource):
    """Async iterator of `WatchEvent`s under one prefix of one store (see the module docstring);
    an async context manager that stops watching on exit."""

    def __init__(self, hub: WatchHub, store: str, prefix: str, max_buffer: int) -> None:
        self.store = store
        self.prefix = prefix
        self.max_buffer = max_buffer
        self._hub = hub
        self._events: deque[WatchEvent] = deque()
        self._last: dict[str, tuple[int, bool]] = {}
        self._wakeup = anyio.Event()
        self._end: BaseException | None = None  # raised once the buffer is drained
        self._closed = False

    # -- fed by the hub ------------------------------------------------------------------------

    def offer(self, change: Change) -> None:
        if self._closed:
            return
        key, state = change.key, change.state
        last = self._last.get(key)
        if state is None:
            if last is not None and last[1]:
                return
            event = WatchEvent(key, None, True)
            self._last[key] = (last[0] if last else 0, True)
        else:
            seq = state.seq
            if last is not None and seq <= last[0]:
                return
            deleted = isinstance(state, Register) and state.value is None
            event = WatchEvent(key, Version(seq, state.written_at), deleted)
            self._last[key] = (seq, deleted)
        if len(self._events) >= self.max_buffer:
            self.finish(WatchOverflow(f"watcher of {self.store!r}/{self.prefix!r} fell behind"))
            return
        self._events.append(event)
        self._wakeup.set()

    def finish(self, end: BaseException | None = None) -> None:
        """No more events: iteration raises `end` (or stops) after the buffered ones."""
        if self._closed:
            return
        self._closed = True
        self._end = end
        self._hub._discard(self)
        self._wakeup.set()

    # -- consumed by the application -----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._events:
            if self._closed:
                if self._end is not None:
                    end, self._end = self._end, None
                    raise end
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._events.popleft()

    def pending(self) -> int:
        """Events buffered and not yet consumed."""
        return len(self._events)

    async def aclose(self) -> None:
        """Stop watching (pending events are discarded)."""
        self._events.clear()
        self.finish()
        await anyio.lowlevel.checkpoint()


class WatchHub:
    """Fans applied changes out to the watchers of each store (a runtime listener)."""

    def __init__(self) -> None:
        self._by_store: dict[str, weakref.WeakSet[Watcher]] = {}
        self.closed = False

    def watch(self, store: str, prefix: str = "", max_buffer: int = WATCH_BUFFER) -> Watcher:
        if not isinstance(prefix, str):
            raise InvalidInput("a watch prefix must be a string")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise InvalidInput("max_buffer must be a positive integer")
        watcher = Watcher(self, store, prefix, max_buffer)
        if self.closed:
            watcher.finish()
        else:
            self._by_store.setdefault(store, weakref.WeakSet()).add(watcher)
        return watcher

    def on_changes(self, changes: list[Change]) -> None:
        by_store = self._by_store
        if not by_store:
            return
        for change in changes:
            store = change.store
            if store == META:
                state = change.state
                if change.key in by_store and not (
                    isinstance(state, Register) and state.value is not None
                ):
                    for watcher in list(by_store[change.key]):
                        watcher.finish(StoreNotFound(f"store {change.key!r} was dropped"))
                continue
            watchers = by_store.get(store)
            if watchers:
                key = change.key
                for watcher in list(watchers):
                    if key.startswith(watcher.prefix):
                        watcher.offer(change)

    def reset(self) -> None:
        """Rule 5: every store was replaced at once; every watcher ends with `WatchReset`."""
        for watchers in list(self._by_store.values()):
            for watcher in list(watchers):
                watcher.finish(
                    WatchReset(
                        f"{watcher.store!r} was replaced by a snapshot: re-read, watch again"
                    )
                )

    def close(self) -> None:
        """The node stops: every watcher ends after its buffered events."""
        self.closed = True
        for watchers in list(self._by_store.values()):
            for watcher in list(watchers):
                watcher.finish()
        self._by_store.clear()

    def _discard(self, watcher: Watcher) -> None:
        watchers = self._by_store.get(watcher.store)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._by_store[watcher.store]

    def count(self) -> int:
        return sum(len(w) for w in self._by_store.values())


class EdgeStore(KvStore):
    """The KvStore an EdgeNode hands out: the read/write API plus `watch(prefix)`."""

    __slots__ = ("_hub",)

    def __init__(self, store: StoreReplica, *, hub: WatchHub, **options: Any) -> None:
        super().__init__(store, **options)
        self._hub = hub

    def watch(self, prefix: str = "", *, max_buffer: int = WATCH_BUFFER) -> Watcher:
        """Async iterator of `WatchEvent`s for changes applied on this edge under `prefix`."""
        self._live()
        return self._hub.watch(self.name, prefix, max_buffer)
