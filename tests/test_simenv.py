"""The sim-mode switches in testnet/simenv.py, two of which reach into trio's private internals.

These tests are the tripwire the Seams issue asks for: if a trio upgrade renames the knobs that
`seed_scheduler` and `sim_clock` rely on, they fail here, loudly, instead of sim runs silently
losing their replayability.
"""

from __future__ import annotations

import gc
import threading

import anyio.to_thread
import trio
import trio.testing

from edgekv.testnet.simenv import (
    InlineThreads,
    QuietGC,
    restore_scheduler,
    seed_scheduler,
    sim_clock,
)


def test_trio_still_has_the_scheduler_knobs_seed_scheduler_uses() -> None:
    assert seed_scheduler(1), "trio's private scheduler knobs moved: simenv.seed_scheduler"
    restore_scheduler()


def test_trio_mockclock_still_has_the_autojump_hook_sim_clock_wraps() -> None:
    assert callable(getattr(trio.testing.MockClock(), "_autojump", None))


def _virtual_time_after_a_thread(clock: trio.abc.Clock) -> float:
    """Virtual time when a 0.2 s (real) worker thread ends, while another task sleeps 10 s."""

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)
            await trio.to_thread.run_sync(threading.Event().wait, 0.2)
            ended = trio.current_time()
            nursery.cancel_scope.cancel()
        return ended

    return float(trio.run(main, clock=clock))


def test_sim_clock_holds_still_while_a_worker_thread_runs() -> None:
    assert _virtual_time_after_a_thread(sim_clock()) < 1.0


def test_plain_autojump_clock_would_leap_past_the_thread() -> None:
    # the behaviour sim_clock exists to prevent, so the test above can fail
    assert _virtual_time_after_a_thread(trio.testing.MockClock(autojump_threshold=0)) >= 10


def test_inline_threads_run_inline_nest_and_restore() -> None:
    before = anyio.to_thread.run_sync
    InlineThreads.install()
    InlineThreads.install()
    try:
        assert anyio.to_thread.run_sync is not before

        async def main() -> int:
            return await anyio.to_thread.run_sync(threading.get_ident)

        assert trio.run(main) == threading.get_ident()  # ran on this thread
    finally:
        InlineThreads.remove()
        assert anyio.to_thread.run_sync is not before  # still one user left
        InlineThreads.remove()
    assert anyio.to_thread.run_sync is before


def test_quiet_gc_nests_and_restores_thresholds() -> None:
    before = gc.get_threshold()
    QuietGC.install()
    QuietGC.install()
    assert gc.get_threshold() == QuietGC.THRESHOLDS
    QuietGC.remove()
    assert gc.get_threshold() == QuietGC.THRESHOLDS
    QuietGC.remove()
    assert gc.get_threshold() == before
