"""Sim-mode run environment: what makes a simulated testnet replayable and fast.

`seed_scheduler` seeds trio's scheduler, `InlineThreads` runs worker-thread calls inline (a
simulated disk), `sim_clock` is the autojumping virtual clock, `QuietGC` keeps the cyclic
garbage collector from re-scanning a large simulation's live objects over and over.  All are
process-wide switches that the `Testnet` installs for its lifetime and restores afterwards.

Two of them reach into trio's private internals (the scheduler's random source and its
deterministic-scheduling flag; `MockClock._autojump`), for which trio has no public hook (a
custom `trio.abc.Clock` cannot autojump: the run loop only autojumps a `MockClock`, a final
class; an instrument hook on every task step would slow every simulation).  Each is confined to
one function here, they degrade gracefully at run time (an unseeded scheduler, a plain
autojump), and tests/test_simenv.py is the tripwire: it fails in CI the day a trio upgrade
moves them.  Module attributes and the clock's hook are replaced with `unittest.mock.patch`,
which restores what it replaced.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from typing import TypeVar
from unittest import mock

from trio.testing import MockClock

__all__ = ["InlineThreads", "QuietGC", "restore_scheduler", "seed_scheduler", "sim_clock"]

T = TypeVar("T")

_DETERMINISTIC = "_ALLOW_DETERMINISTIC_SCHEDULING"
_saved: list[bool] = []  # the flag's values before each seed_scheduler (pytest-trio sets it)


def seed_scheduler(seed: int) -> bool:
    """Make trio's scheduler replayable: seed its shuffling and shuffle only real batches.

    Private trio details, guarded: trio's run loop draws from `_r` on every pass, even an
    empty one, and the number of empty passes while a worker thread runs varies; in its
    deterministic mode (the one pytest-trio uses under Hypothesis) it sorts each batch by task
    creation order and shuffles it, which draws nothing for batches of 0 or 1 task.
    """
    try:
        import trio._core._run as run_mod

        rng = getattr(run_mod, "_r", None)
        if isinstance(rng, random.Random) and hasattr(run_mod, _DETERMINISTIC):
            _saved.append(bool(getattr(run_mod, _DETERMINISTIC)))
            setattr(run_mod, _DETERMINISTIC, True)  # undone by `restore_scheduler`
            rng.seed(seed)
            return True
    except Exception:  # pragma: no cover - a trio without these knobs
        pass
    return False


def restore_scheduler() -> None:
    """Back to the scheduling mode in force before the matching `seed_scheduler`."""
    try:
        import trio._core._run as run_mod

        if hasattr(run_mod, _DETERMINISTIC) and _saved:
            setattr(run_mod, _DETERMINISTIC, _saved.pop())
    except Exception:  # pragma: no cover
        pass


class InlineThreads:
    """In sim mode, run `anyio.to_thread.run_sync` calls inline (the simulated disk).

    Worker threads finish in real time, at a moment that races the simulated tasks; run inline,
    the origin's log writes happen at a fixed point of the schedule, so a seed replays exactly.
    Installed for the life of a sim `Testnet` only and restored afterwards (nested uses count).
    """

    depth = 0
    patches: list[mock._patch[object]] = []

    @classmethod
    def install(cls) -> None:
        import anyio.to_thread
        import trio.to_thread

        if cls.depth == 0:

            async def run_inline(func: Callable[..., T], *args: object, **_: object) -> T:
                await anyio.lowlevel.checkpoint()
                return func(*args)

            cls.patches = [
                mock.patch.object(anyio.to_thread, "run_sync", run_inline),
                mock.patch.object(trio.to_thread, "run_sync", run_inline),
            ]
            for patch in cls.patches:
                patch.start()
        cls.depth += 1

    @classmethod
    def remove(cls) -> None:
        cls.depth -= 1
        if cls.depth == 0:
            for patch in reversed(cls.patches):
                patch.stop()
            cls.patches = []


def sim_clock() -> MockClock:
    """trio's `MockClock(autojump_threshold=0)` that does not jump while a worker thread runs.

    The origin logs writes to SQLite in a worker thread; a plain autojumping clock would leap
    to the next timer while that thread works, so virtual time would depend on disk speed.
    This clock holds still instead, which keeps a seeded simulation reproducible.
    """
    import trio

    clock = MockClock(autojump_threshold=0)
    jump = clock._autojump
    current_limiter = trio.to_thread.current_default_thread_limiter  # run-local
    cache: list[trio.CapacityLimiter] = []  # this run's limiter, looked up on the first jump

    def autojump() -> None:
        if not cache:
            cache.append(current_limiter())
        if not cache[0].borrowed_tokens:
            jump()

    mock.patch.object(clock, "_autojump", autojump).start()  # this clock's own: never undone
    return clock


class QuietGC:
    """In sim mode, run the cyclic garbage collector rarely (young generation every 100,000
    allocations instead of 700, the oldest one 50 times less often).

    A 1,000-edge simulation keeps millions of long-lived objects (every node's member table and
    replica) and makes little cyclic garbage, so with the default thresholds the collector spends
    a third of the run re-scanning live objects (flood-1000: 77 s -> 51 s of CPU without that).
    Reference counting still frees everything else at once.  Installed for the life of a sim
    `Testnet` and restored afterwards (nested uses count); it does not change what runs, only
    when unreachable cycles are freed, so a seed replays the same.
    """

    THRESHOLDS = (100_000, 50, 100)
    depth = 0
    original: tuple[int, int, int] | None = None

    @classmethod
    def install(cls) -> None:
        if cls.depth == 0:
            cls.original = gc.get_threshold()
            gc.set_threshold(*cls.THRESHOLDS)
        cls.depth += 1

    @classmethod
    def remove(cls) -> None:
        cls.depth -= 1
        if cls.depth == 0 and cls.original is not None:
            gc.set_threshold(*cls.original)
            cls.original = None
