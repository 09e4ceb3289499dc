"""BENCHMARKS.md is what `python benchmarks/run.py --collect-only` writes: a header, then each
benchmark's last results (benchmarks/results/<name>.md) followed by its notes
(benchmarks/notes/<name>.md).  A figure or a paragraph written into BENCHMARKS.md alone would be
erased by the next run, so it fails here instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _run_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_md_is_the_results_and_notes_collected() -> None:
    run = _run_module()
    doc = (ROOT / "BENCHMARKS.md").read_text()
    assert doc.startswith("# edgekv benchmarks\n")
    body = run.body()
    assert doc.endswith("\n" + body), (
        "BENCHMARKS.md differs from results/ + notes/: write notes in benchmarks/notes/<name>.md"
        " and run `python benchmarks/run.py --collect-only`"
    )
    header = doc[: -len(body)]
    assert "\n## " not in header  # nothing between the header and the first section


def test_every_note_follows_a_section() -> None:
    notes = sorted(p.name for p in (ROOT / "benchmarks" / "notes").glob("*.md"))
    results = {p.name for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert notes and [n for n in notes if n not in results] == []
