"""The C heap's free pages go back to the OS after bulk work (node/gcpolicy.py rule 2)."""

from __future__ import annotations

import ctypes.util
import platform
from pathlib import Path

import pytest

from edgekv.crdt import META, Register
from edgekv.node import gcpolicy, persistence
from edgekv.node.persistence import ReplicaStore

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_returns_free_heap_pages_to_the_os() -> None:
    assert ctypes.util.find_library("c") is not None
    # 64 MiB of blocks too large for pymalloc, so they come from malloc's heap; one block
    # allocated last pins the heap's top, so free() alone cannot give the pages back
    junk = [bytes(1000) for _ in range(64 * 1024)]
    pin = bytes(1000)
    del junk
    before = _rss()
    assert gcpolicy.release()
    assert _rss() < before - 32 * 2**20
    del pin


async def test_a_bulk_of_persisted_rows_releases_the_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []

    def release() -> bool:
        calls.append(None)
        return False

    monkeypatch.setattr(gcpolicy, "release", release)
    monkeypatch.setattr(persistence, "RELEASE_ROWS", 100)
    store = ReplicaStore(tmp_path)
    store.load()
    assert len(calls) == 1  # after the load
    replica = store.replica
    changes = replica.apply_batch([(META, "s", Register(1, 0, b"", None))], [(1, 1)])
    seq = 1
    for rows, released in ((60, 1), (60, 2), (60, 2), (50, 3)):  # one release per 100 rows
        items = [("s", f"k{s}", Register(s, 0, b"v", None)) for s in range(seq + 1, seq + rows + 1)]
        changes += replica.apply_batch(items, [(seq + 1, seq + rows)])
        seq += rows
        store.on_changes(changes)
        written = len(changes)
        changes = []
        assert await store.flush() == written
        assert len(calls) == released
    await store.close()
