"""Fault injection across processes: every node follows one JSON policy file.

`edgekv origin|edge --fault-file PATH` gives the node's TCP transport a `LinkFaults` policy and
follows PATH: whenever the file changes (size or modification time), the node loads it with
`LinkFaults.load_spec`.  The testnet's processes mode writes one such file for the whole
cluster (`testnet.procs`), atomically (a new file renamed over the old), so that partitions,
blocks, latency and loss apply across real processes as they do in one process.  Faults act
on sends, by the sender's and receiver's gossip addresses; every node reading the same policy
makes a partition symmetric.  A missing file means no faults; a malformed one is reported in
the log and leaves the last good policy in force.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from .faults import LinkFaults

__all__ = [
    "add_fault_file_argument",
    "fault_policy",
    "follow_fault_file",
    "write_fault_file",
]

logger = logging.getLogger("edgekv.faults")


def write_fault_file(path: str | Path, faults: LinkFaults) -> None:
    """Write `faults` to `path` atomically (readers see the old or the new policy, whole)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(faults.to_spec()))
    os.replace(tmp, path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size  # a renamed-over file has a new inode


def load_fault_file(path: str | Path, faults: LinkFaults) -> bool:
    """Load the policy in `path` into `faults`; False (and a log line) if it cannot be used.
    A missing file is the empty policy."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text()) if path.exists() else {}
        faults.load_spec(spec)
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        logger.warning("event=fault_file_ignored path=%s error=%r", path, exc)
        return False
    return True


async def follow_fault_file(path: str | Path, faults: LinkFaults, interval: float = 0.1) -> None:
    """Load `path` now and again whenever it changes, until cancelled."""
    path = Path(path)
    seen: tuple[int, int, int] | bool | None = False  # False: nothing loaded yet
    while True:
        stamp = _stamp(path)
        if stamp != seen:
            seen = stamp
            if load_fault_file(path, faults):
                logger.info("event=fault_policy path=%s spec=%s", path, faults.to_spec())
        await anyio.sleep(interval)


def add_fault_file_argument(parser: argparse.ArgumentParser) -> None:
    """`--fault-file PATH` for the `origin` and `edge` daemons."""
    parser.add_argument(
        "--fault-file",
        default=None,
        metavar="PATH",
        help="follow a JSON link-fault policy in PATH (testnets: partitions, latency, loss)",
    )


@asynccontextmanager
async def fault_policy(path: str | None) -> AsyncIterator[LinkFaults | None]:
    """A daemon's fault policy for its transport: None without `--fault-file`; else loaded from
    `path` at once (in force from the first message on) and followed while the block runs."""
    if path is None:
        yield None
        return
    faults = LinkFaults()
    load_fault_file(path, faults)
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow_fault_file, path, faults)
        yield faults
        tg.cancel_scope.cancel()
