"""Offer one item to many subscribers' memory streams, never waiting on a slow one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

__all__ = ["send_each"]

T = TypeVar("T")


def send_each(
    subscribers: list[MemoryObjectSendStream[T]], item: T, fell_behind: Callable[[], None]
) -> list[MemoryObjectSendStream[T]]:
    """Send `item` to each subscriber without waiting; return those still subscribed.

    A subscriber whose buffer is full is closed after `fell_behind()` is called (it must catch
    up some other way); one whose receiving end is closed is dropped."""
    keep = []
    for sub in subscribers:
        try:
            sub.send_nowait(item)
            keep.append(sub)
        except anyio.WouldBlock:
            fell_behind()
            sub.close()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            sub.close()
    return keep
