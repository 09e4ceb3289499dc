"""Bytecode for the processes a benchmark spawns, as an installed package has it.

An editable install has none until a process writes it, and with PYTHONDONTWRITEBYTECODE set
(this machine sets it) none ever does: every edge or origin process a benchmark started
compiled edgekv's ~80 modules from source first, about 0.11 s of its start (an edge's start
to its first log line: 0.49 s without, 0.38 s with, median of 5).  `compile_sources` writes it
once (compileall writes whatever that variable says), so spawn-to-serving times measure what
a deployed node does.
"""

from __future__ import annotations

from pathlib import Path


def compile_sources() -> None:
    """Write the bytecode of edgekv's modules where imports look for it (__pycache__)."""
    import compileall  # here: a benchmark's child processes import this module too

    import edgekv

    compileall.compile_dir(Path(edgekv.__file__).parent, quiet=1)
