"""`edgekv soak`: a processes-mode testnet under steady writes and random faults for a given
time, sampling every node's resident memory, open file descriptors and tasks.

Theory of operation
1. An origin and N edges run as OS processes (`ProcessCluster`).  One writer puts `rate`
   values a second over a bounded key space (`keys`), so the data stops growing once every
   key has been written: what grows after that is a leak.
2. Every `fault_every` seconds a seeded choice among: pause an edge (SIGSTOP) for a few
   seconds, partition an edge from everyone (the shared fault file), crash an edge (SIGKILL)
   and restart it.  Each fault heals before the next one starts.
3. Every `sample_every` seconds each live node's status gives its RSS, fds and task count
   (`node/procinfo.py`).  A node is judged over its current incarnation (since its last
   start) after `warmup` seconds: `start` and `end` are the medians of the first and last
   fifth of those samples, `change` is end / start - 1, and `per hour` is the least-squares
   slope times 3600.  A metric is flat when |change| is at most `tolerance`.
4. At the end writes stop, faults heal, and every edge must converge (same digest, watermark
   at least the last acknowledged seq) within `converge_timeout`.
`summary_markdown` renders the verdict and the table; `edgekv soak --out FILE` writes it.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from edgekv.node.faults import LinkFaults
from edgekv.origin.client import OriginClient
from edgekv.testnet.procs import ProcessCluster

__all__ = [
    "MetricSummary",
    "SoakConfig",
    "SoakResult",
    "parse_duration",
    "run_soak",
    "summarize",
    "summary_markdown",
    "verdict",
]

METRICS = ("rss_bytes", "fds", "tasks")


def parse_duration(text: str) -> float:
    """'90', '90s', '10m' or '1h' -> seconds."""
    text = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 0)
    number = text[:-1] if scale else text
    value = float(number) * (scale or 1)
    if not value > 0:
        raise ValueError(f"bad duration {text!r}")
    return value


@dataclass
class SoakConfig:
    duration: float = 600.0
    edges: int = 3
    rate: float = 50.0
    keys: int = 2000
    value_size: int = 100
    fault_every: float = 20.0
    fault_length: float = 4.0
    sample_every: float = 5.0
    warmup: float = 60.0
    tolerance: float = 0.10
    converge_timeout: float = 60.0
    seed: int = 1


@dataclass
class MetricSummary:
    node: str
    metric: str
    samples: int
    start: float
    end: float
    peak: float
    per_hour: float

    @property
    def change(self) -> float:
        return self.end / self.start - 1 if self.start else 0.0


@dataclass
class SoakResult:
    config: SoakConfig
    seconds: float
    writes: int
    write_errors: int
    faults: dict[str, int]
    converged: bool
    converge_seconds: float
    samples: dict[str, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)
    summaries: list[MetricSummary] = field(default_factory=list)

    @property
    def flat(self) -> bool:
        return all(abs(s.change) <= self.config.tolerance for s in self.summaries)

    @property
    def ok(self) -> bool:
        return self.flat and self.converged and bool(self.summaries)

    @property
    def not_flat(self) -> list[MetricSummary]:
        """The metrics that moved by more than the tolerance, in table order."""
        return [s for s in self.summaries if abs(s.change) > self.config.tolerance]


def verdict(result: SoakResult) -> str:
    """One line naming exactly which node's metrics moved, e.g.
    "**GREW**: origin rss_bytes +12.3% (+75.7 MiB/h); every other metric within 10%"."""
    tolerance = f"{result.config.tolerance:.0%}"
    if not result.summaries:
        return "**NO DATA** (no node was sampled past its warm-up)"
    moved = result.not_flat
    if not moved:
        return f"**flat** (RSS, open fds and tasks of every node within {tolerance})"
    word = "GREW" if all(s.change > 0 for s in moved) else "NOT FLAT"
    named = "; ".join(
        f"{s.node} {s.metric} {s.change:+.1%} ({_signed(s.metric, s.per_hour)}/h)" for s in moved
    )
    rest = "every other metric" if len(moved) < len(result.summaries) else "no metric"
    return f"**{word}**: {named}; {rest} within {tolerance}"


def summarize(
    node: str, samples: list[tuple[float, dict[str, float]]], warmup: float
) -> list[MetricSummary]:
    """Growth of each metric over `samples` (t, values) of one incarnation after `warmup`."""
    if not samples:
        return []
    t0 = samples[0][0]
    kept = [(t, v) for t, v in samples if t - t0 >= warmup]
    if len(kept) < 5:
        return []
    fifth = max(1, len(kept) // 5)
    out = []
    for metric in METRICS:
        points = [(t, v[metric]) for t, v in kept if v.get(metric, -1) >= 0]
        if len(points) < 5:
            continue
        ys = [y for _, y in points]
        out.append(
            MetricSummary(
                node,
                metric,
                len(points),
                statistics.median(ys[:fifth]),
                statistics.median(ys[-fifth:]),
                max(ys),
                _slope(points) * 3600,
            )
        )
    return out


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (y - my) for t, y in points) / var if var else 0.0


async def run_soak(config: SoakConfig, root: Path | None = None) -> SoakResult:
    """Run one soak (see the module docstring); every process is gone when it returns."""
    with tempfile.TemporaryDirectory(prefix="edgekv-soak-") as tmp:
        return await _run(config, Path(root or tmp))


async def _run(config: SoakConfig, root: Path) -> SoakResult:
    rng = random.Random(config.seed)
    result = SoakResult(config, 0.0, 0, 0, {}, False, 0.0)
    samples: dict[str, list[tuple[float, dict[str, float]]]] = {}
    started = time.monotonic()
    async with (
        ProcessCluster(config.edges, root, seed=config.seed) as cluster,
        OriginClient(cluster.origin_address, timeout=10) as client,
    ):
        await client.create_store("soak")
        end = anyio.current_time() + config.duration
        async with anyio.create_task_group() as tg:
            tg.start_soon(_writer, client, cluster, config, result, end)
            tg.start_soon(_faults, cluster, config, rng, result, samples, end)
            await _sampler(cluster, config, samples, end)
        cluster.heal()
        cluster.write_faults(LinkFaults(config.seed))
        result.converge_seconds, result.converged = await _converge(cluster, config)
    result.seconds = time.monotonic() - started
    result.samples = samples
    for node, points in samples.items():
        result.summaries.extend(summarize(node, points, config.warmup))
    return result


async def _writer(
    client: OriginClient,
    cluster: ProcessCluster,
    config: SoakConfig,
    result: SoakResult,
    end: float,
) -> None:
    interval = 1.0 / config.rate
    value = b"v" * config.value_size
    next_at = anyio.current_time()
    i = 0
    while anyio.current_time() < end:
        try:
            v = await client.put("soak", f"k{i % config.keys}", value)
            cluster.high_seq = max(cluster.high_seq, v.seq)
            result.writes += 1
        except Exception:  # a write lost to a fault is counted, not fatal
            result.write_errors += 1
        i += 1
        next_at = max(next_at + interval, anyio.current_time() - 1.0)
        await anyio.sleep(max(0.0, next_at - anyio.current_time()))


async def _faults(
    cluster: ProcessCluster,
    config: SoakConfig,
    rng: random.Random,
    result: SoakResult,
    samples: dict[str, list[tuple[float, dict[str, float]]]],
    end: float,
) -> None:
    edges = [n for n in cluster.procs if n != "origin"]
    while anyio.current_time() + config.fault_every + config.fault_length < end:
        await anyio.sleep(config.fault_every)
        edge = rng.choice(edges)
        kind = rng.choice(("pause", "partition", "crash"))
        result.faults[kind] = result.faults.get(kind, 0) + 1
        if kind == "pause":
            cluster.isolate(edge)
            await anyio.sleep(config.fault_length)
            cluster.heal()
        elif kind == "partition":
            faults = LinkFaults(config.seed)
            faults.isolate(cluster.address_of(edge))
            cluster.write_faults(faults)
            await anyio.sleep(config.fault_length)
            cluster.write_faults(LinkFaults(config.seed))
        else:
            await cluster.crash(edge)
            await anyio.sleep(config.fault_length)
            await cluster.restart(edge)
            samples.pop(edge, None)  # a new incarnation is judged on its own


async def _sampler(
    cluster: ProcessCluster,
    config: SoakConfig,
    samples: dict[str, list[tuple[float, dict[str, float]]]],
    end: float,
) -> None:
    t0 = anyio.current_time()
    while anyio.current_time() < end:
        for name in cluster.procs:
            status = await anyio.to_thread.run_sync(cluster.node_status, name)
            process: dict[str, Any] = (status or {}).get("process") or {}
            if process:
                values = {m: float(process.get(m, -1)) for m in METRICS}
                samples.setdefault(name, []).append((anyio.current_time() - t0, values))
        await anyio.sleep(config.sample_every)


async def _converge(cluster: ProcessCluster, config: SoakConfig) -> tuple[float, bool]:
    start = anyio.current_time()
    with anyio.move_on_after(config.converge_timeout):
        while True:
            share, _roots = await anyio.to_thread.run_sync(cluster.agreement)
            if share >= 1.0:
                return anyio.current_time() - start, True
            await anyio.sleep(0.5)
    return anyio.current_time() - start, False


def _fmt(metric: str, value: float) -> str:
    if metric == "rss_bytes":
        return f"{value / 2**20:,.1f} MiB"
    return f"{value:,.0f}"


def _signed(metric: str, value: float) -> str:
    return f"{'+' if value >= 0 else '-'}{_fmt(metric, abs(value))}"


def summary_markdown(result: SoakResult, command: str) -> str:
    """The soak's verdict and per-node table (for benchmarks/results/soak.md)."""
    c = result.config
    faults = ", ".join(f"{n} {k}" for k, n in sorted(result.faults.items())) or "none"
    lines = [
        "## Soak (`edgekv soak`)",
        "",
        f"Command: `{command}`.  An origin and {c.edges} edges as processes on 127.0.0.1,"
        f" {c.rate:g} writes/s over {c.keys:,} keys of {c.value_size} bytes for"
        f" {c.duration / 60:g} min, a fault every {c.fault_every:g} s ({faults}).  Each node is"
        f" judged over its current incarnation after {c.warmup:g} s of warm-up: start and end"
        " are medians of the first and last fifth of its samples; flat means within"
        f" {c.tolerance:.0%}.",
        "",
        f"- writes acknowledged: {result.writes:,} ({result.write_errors} failed during faults)",
        f"- converged after the run: {'yes' if result.converged else 'NO'}"
        f" ({result.converge_seconds:.1f} s)",
        f"- verdict: {verdict(result)}",
        "",
        "| node | metric | samples | start | end | peak | change | per hour |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result.summaries:
        lines.append(
            f"| {s.node} | {s.metric} | {s.samples} | {_fmt(s.metric, s.start)} |"
            f" {_fmt(s.metric, s.end)} | {_fmt(s.metric, s.peak)} | {s.change:+.1%} |"
            f" {_signed(s.metric, s.per_hour)} |"
        )
    return "\n".join(lines) + "\n"
