"""Durability: SIGKILL the origin process mid-load, restart it, check every acknowledged write.

The origin runs as a separate process (`python -m edgekv.origin_cli origin`); 8 concurrent
writers put unique keys; at each kill point the process gets SIGKILL, is restarted on the same
data directory, and the test checks that every acknowledged write is present with its exact
version, that the seqs in the store are exactly 1..high (contiguous), and that no seq is ever
handed out twice (across all the restarts).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from edgekv.crdt import Version
from edgekv.errors import OriginUnavailable
from edgekv.origin.client import OriginClient

WRITERS = 8


async def start_origin(data_dir: Path) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "edgekv.origin_cli",
            "origin",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(1)
        assert chunk, "origin exited before listening"
        line += chunk
    words = line.decode().split()
    return proc, words[words.index("on") + 1]


async def load_and_kill(
    address: str, proc: trio.Process, kill_after: int, acked: dict[str, Version], tag: str
) -> int:
    """8 writers put unique keys until `kill_after` acks, then SIGKILL; returns the acks."""
    done = trio.Event()
    count = 0

    async def writer(i: int) -> None:
        nonlocal count
        async with OriginClient(address, timeout=3) as client:
            n = 0
            while True:
                key = f"{tag}:w{i}:{n}"
                try:
                    v = await client.put("crash", key, key.encode())
                except OriginUnavailable:
                    return
                acked[key] = v
                n += 1
                count += 1
                if count >= kill_after:
                    done.set()

    async with trio.open_nursery() as nursery:
        for i in range(WRITERS):
            nursery.start_soon(writer, i)
        await done.wait()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return count


async def verify(address: str, acked: dict[str, Version], seen_seqs: set[int]) -> int:
    """Every ack present with its version; seqs contiguous; returns the high seq."""
    async with OriginClient(address, timeout=5) as client:
        keys = await client.scan("crash", "*")
        assert set(acked) <= set(keys)
        seqs = {1}  # the store's creation
        for key in keys:
            entry = await client.get_entry("crash", key)
            assert entry is not None
            assert entry.value == key.encode()
            if key in acked:
                assert entry.version == acked[key], key
            seqs.add(entry.version.seq)
        high = max(seqs)
        assert seqs == set(range(1, high + 1)), "seqs are not contiguous"
        # a new write takes the next seq: nothing is reused
        probe_key = f"probe{high}"
        probe = await client.put("crash", probe_key, probe_key.encode())
        assert probe.seq == high + 1
        assert probe.seq not in seen_seqs
        seen_seqs.add(probe.seq)
        acked[probe_key] = probe
        return probe.seq


async def crash_cycles(tmp_path: Path, kill_points: list[int]) -> None:
    data = tmp_path / "origin"
    acked: dict[str, Version] = {}
    procs: list[trio.Process] = []
    try:
        proc, address = await start_origin(data)
        procs.append(proc)
        async with OriginClient(address, timeout=5) as client:
            await client.create_store("crash")
        seen: set[int] = {1}
        for cycle, kill_after in enumerate(kill_points):
            before = len(acked)
            await load_and_kill(address, proc, kill_after, acked, f"c{cycle}")
            new = [v.seq for k, v in acked.items() if k.startswith(f"c{cycle}:")]
            assert len(new) == len(acked) - before
            assert len(set(new)) == len(new) and not (set(new) & seen), "a seq was reused"
            seen.update(new)
            proc, address = await start_origin(data)
            procs.append(proc)
            await verify(address, acked, seen)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    finally:
        for p in procs:  # never leave an origin process behind, even when an assert failed
            if p.returncode is None:
                p.kill()
                with trio.CancelScope(shield=True):
                    await p.wait()


async def test_sigkill_mid_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with trio.fail_after(60):
        await crash_cycles(tmp_path, [1, 150, 600, random.Random(7).randrange(50, 400)])


@pytest.mark.slow
async def test_sigkill_many_kill_points(tmp_path: Path) -> None:
    rng = random.Random(11)
    with trio.fail_after(600):
        await crash_cycles(tmp_path, [rng.randrange(1, 3000) for _ in range(20)])
