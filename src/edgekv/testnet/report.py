"""Experiments: run a `Scenario` on a `Testnet`, measure it, judge its assertions, report.

`run_experiment` drives the timeline (open-loop write load, faults, crashes), runs the outside
`ConvergenceChecker` probe and a digest-agreement sampler alongside, and returns a JSON-ready
report: the seed, the config, every write with the time each edge first served it, the fault
timeline, digest agreement over time, message counts by type, and the assertion verdicts.
`write_report` saves report.json, report.html and plot.png; `summary_table` is the terminal
summary.  Samplers also record each edge's watermark and the traffic by message type over time,
and `faults` says what each fault did to whom (see `timeline.py`).

In sim mode every time in the report is virtual (seconds since the workload started) and the
run is a function of the seed; only `wall_seconds` varies between runs.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from edgekv.errors import EdgeKVError, OriginUnavailable, StoreExists
from edgekv.gossip.transport import TransportStats
from edgekv.testnet.checker import ConvergenceChecker, percentile, probe_loop, probe_once
from edgekv.testnet.harness import Testnet
from edgekv.testnet.scenario import Scenario, Step
from edgekv.testnet.timeline import fault_summary

__all__ = [
    "Sampler",
    "evaluate",
    "run_experiment",
    "run_record",
    "summary_table",
    "write_report",
]

SETUP_TIMEOUT = 30.0  # seconds for every edge to learn the experiment's store


def _r(x: float) -> float:
    return round(x, 6)


class _Workload:
    """Open-loop writes with unique values; keys uniform or zipf over a key space."""

    def __init__(self, net: Testnet, checker: ConvergenceChecker, store: str, seed: int) -> None:
        self.net = net
        self.checker = checker
        self.store = store
        self.rng = random.Random(seed)
        self.seed = seed
        self.ids = itertools.count()
        self.failed = 0

    def key_chooser(self, step: Step) -> Callable[[], str]:
        n = int(step.params.get("keys", 1000))
        if step.params.get("distribution", "uniform") == "zipf":
            s = float(step.params.get("zipf_s", 1.1))
            cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))
            total = cum[-1]
            return lambda: f"k{bisect.bisect_left(cum, self.rng.random() * total):06d}"
        return lambda: f"k{self.rng.randrange(n):06d}"

    async def run(self, step: Step, t0: float, tg: anyio.abc.TaskGroup) -> None:
        rate = float(step.params["rate"])
        count = int(rate * float(step.params["duration"]))
        size = int(step.params.get("value_size", 32))
        choose = self.key_chooser(step)
        start = t0 + step.at
        for i in range(count):
            await _sleep_until(start + i / rate)
            wid = next(self.ids)
            value = f"w{wid}:s{self.seed}:".encode().ljust(size, b".")
            tg.start_soon(self.one, choose(), value)

    async def one(self, key: str, value: bytes) -> None:
        w = self.checker.issue(self.store, key, value, anyio.current_time())
        try:
            version = await self.net.client.put(self.store, key, value)
        except EdgeKVError:
            self.failed += 1
            return
        self.checker.ack(w, version.seq, anyio.current_time())


async def _sleep_until(t: float) -> None:
    delay = t - anyio.current_time()
    if delay > 0:
        await anyio.sleep(delay)
    else:
        await anyio.lowlevel.checkpoint()


async def _do_step(
    step: Step,
    net: Testnet,
    checker: ConvergenceChecker,
    workload: _Workload,
    t0: float,
    tg: anyio.abc.TaskGroup,
) -> None:
    a, p = step.action, step.params
    if a == "write":
        tg.start_soon(workload.run, step, t0, tg)
    elif a == "partition":
        if "a" in p:
            group_a = list(p["a"])
            group_b = list(p["b"]) if "b" in p else None
        else:
            edges = net.edge_names
            cut = round(float(p["split"]) * len(edges))
            group_a, group_b = ["origin", *edges[:cut]], edges[cut:]
        net.partition(group_a, group_b)
    elif a == "heal":
        net.heal()
    elif a == "isolate":
        net.isolate(p["node"])
    elif a == "block":
        net.block(p["src"], p["dst"])
    elif a == "crash":
        await _crash(net, checker, p["node"])
    elif a == "restart":
        await _restart(net, checker, p["node"])
    elif a == "rolling_restart":
        nodes = net.edge_names if p.get("nodes", "edges") == "edges" else list(p["nodes"])
        tg.start_soon(_rolling, net, checker, nodes, float(p["downtime"]), float(p["interval"]))
    elif a == "set_latency":
        jitter = p.get("jitter_ms")
        net.set_latency(float(p["latency_ms"]) / 1000, None if jitter is None else jitter / 1000)
    elif a == "set_loss":
        net.set_loss(float(p["loss"]))
    elif a == "wait":
        pass  # a wait only extends the timeline (its end is awaited by the runner)


async def _crash(net: Testnet, checker: ConvergenceChecker, name: str) -> None:
    await net.crash(name)
    if name != "origin":
        checker.set_live(name, False)


async def _restart(net: Testnet, checker: ConvergenceChecker, name: str) -> None:
    await net.restart(name)
    if name != "origin":
        checker.forget(name)  # a crash may lose what was not yet flushed (see checker.py)
        checker.set_live(name, True)


async def _rolling(
    net: Testnet, checker: ConvergenceChecker, nodes: list[str], downtime: float, interval: float
) -> None:
    for name in nodes:
        start = anyio.current_time()
        await _crash(net, checker, name)
        await anyio.sleep(downtime)
        await _restart(net, checker, name)
        await _sleep_until(start + max(interval, downtime))


class Sampler:
    """Every `interval`: digest agreement, each edge's watermark (None while down) and the
    cumulative node-to-node traffic by message type (for the lag heatmap and traffic plots)."""

    def __init__(self, net: Testnet, t0: float, interval: float) -> None:
        self.net, self.t0, self.interval = net, t0, interval
        self.agreement: list[list[float]] = []
        self.times: list[float] = []
        self.watermarks: list[list[int | None]] = []
        self.messages: list[dict[str, int]] = []
        self.bytes: list[dict[str, int]] = []

    async def run(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(self.interval)

    def sample(self) -> None:
        frac, distinct, wms, stats = self.net.observe()
        t = _r(anyio.current_time() - self.t0)
        self.agreement.append([t, _r(frac), distinct])
        self.times.append(t)
        self.watermarks.append([wms.get(e) for e in self.net.edge_names])
        self.messages.append(dict(stats.sent_messages))
        self.bytes.append(dict(stats.sent_bytes))

    def lag(self) -> dict[str, Any]:
        return {"edges": self.net.edge_names, "times": self.times, "watermarks": self.watermarks}

    def traffic(self) -> dict[str, Any]:
        kinds = sorted({k for m in self.messages for k in m})
        return {
            "times": self.times,
            "messages": {k: [m.get(k, 0) for m in self.messages] for k in kinds},
            "bytes": {k: [b.get(k, 0) for b in self.bytes] for k in kinds},
        }


def _recovery(events: list[tuple[float, str, str]], samples: list[list[float]]) -> list[list[Any]]:
    """Per heal/restart: [time, action, detail, seconds until every live edge's digest equalled
    the origin's (first agreement sample at 1.0), or None].  Under continuing write load the
    digests only agree once the load pauses, so this is an upper bound."""
    out: list[list[Any]] = []
    for t, action, detail in events:
        if action not in ("heal", "restart"):
            continue
        after = next((st for st, frac, _ in samples if st >= t and frac == 1.0), None)
        out.append([_r(t), action, detail, None if after is None else _r(after - t)])
    return out


async def run_experiment(
    scenario: Scenario,
    *,
    network: str | None = None,
    seed: int | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run `scenario` and return its report (see the module docstring)."""
    mode = network or scenario.mode
    seed = scenario.seed if seed is None else seed
    wall0 = time.perf_counter()
    converge_limit = scenario.assertions.converged_within or SETUP_TIMEOUT
    async with Testnet(
        edges=scenario.edges,
        network="tcp" if mode == "processes" else mode,
        processes=mode == "processes",
        latency=scenario.latency,
        jitter=scenario.jitter,
        loss=scenario.loss,
        seed=seed,
        data_dir=data_dir,
    ) as net:
        checker = ConvergenceChecker(net.edge_names)
        await _create_store(net, scenario.store)
        setup = await net.convergence_time(timeout=SETUP_TIMEOUT)
        t0 = anyio.current_time()
        net.t0 = t0
        workload = _Workload(net, checker, scenario.store, seed)
        sampler = Sampler(net, t0, 0.1 if scenario.edges <= 200 else 0.25)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: probe_loop(
                    checker,
                    net.readers,
                    interval=scenario.probe_interval,
                    batch_readers=net.batch_readers,
                )
            )
            tg.start_soon(sampler.run)
            async with anyio.create_task_group() as timeline:
                for step in scenario.steps:
                    await _sleep_until(t0 + step.at)
                    await _do_step(step, net, checker, workload, t0, timeline)
                await _sleep_until(t0 + max(s.end() for s in scenario.steps))
            timeline_end = anyio.current_time() - t0
            convergence = await net.convergence_time(timeout=converge_limit)
            # Give the probe the same bound to see every acked write at every live edge.
            with anyio.move_on_after(converge_limit):
                while any(checker.to_read(e) for e in checker.live_edges()):  # noqa: ASYNC110 (polls the outside checker)
                    await anyio.sleep(scenario.probe_interval)
            tg.cancel_scope.cancel()
        sampler.sample()  # the state at the end of the run
        now = anyio.current_time()
        probe_once(checker, net.readers(), now, full=True)
        lost = checker.final_check(net.readers(), now)
        stats = net.stats()
        events = list(net.events)
        event_nodes = list(net.event_nodes)
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": seed,
        "network": mode,
        "config": scenario.config(),
        "wall_seconds": round(time.perf_counter() - wall0, 3),
        "setup_convergence": None if setup is None else _r(setup),
        "timeline_end": _r(timeline_end),
        "convergence_after_timeline": None if convergence is None else _r(convergence),
        "writes_failed": workload.failed,
        "lost": [[v.edge, v.store, v.key, v.detail] for v in lost],
        **run_record(checker, t0, stats, events, event_nodes, sampler),
    }
    report["faults"] = fault_summary(report)
    report["assertions"] = evaluate(scenario, report, checker)
    report["passed"] = all(a["passed"] for a in report["assertions"])
    return report


def run_record(
    checker: ConvergenceChecker,
    t0: float,
    stats: TransportStats,
    events: list[tuple[float, str, str]],
    event_nodes: list[list[str]],
    sampler: Sampler,
) -> dict[str, Any]:
    """The part of a report every run has (experiment or live testnet): the fault log, the
    checker's verdicts and every write, traffic, and the samples over time."""
    acked = checker.acked
    messages = dict(sorted(stats.sent_messages.items()))
    total_messages = sum(messages.values())
    return {
        "events": [[_r(t), a, d] for t, a, d in events],
        "event_nodes": event_nodes,
        "checker": checker.summary(),
        "violations": [
            [v.kind, v.edge, v.key, v.detail, _r(v.at - t0)] for v in checker.violations
        ],
        "messages": {
            "by_type": messages,
            "bytes_by_type": dict(sorted(stats.sent_bytes.items())),
            "total": total_messages,
            "dropped": stats.dropped,
            "per_write": _r(total_messages / len(acked)) if acked else None,
        },
        "agreement": sampler.agreement,
        "recovery": _recovery(events, sampler.agreement),
        "lag": sampler.lag(),
        "traffic": sampler.traffic(),
        "writes": [
            {
                "id": w.id,
                "key": w.key,
                "seq": w.seq,
                "acked_at": _r(w.acked_at - t0) if w.acked_at is not None else None,
                "reached": {e: _r(t - t0) for e, t in sorted(w.reached.items())},
            }
            for w in checker.writes
        ],
    }


def evaluate(
    scenario: Scenario, report: dict[str, Any], checker: ConvergenceChecker
) -> list[dict[str, Any]]:
    """The verdict of each assertion of `scenario` on a finished run."""
    a = scenario.assertions
    out: list[dict[str, Any]] = []
    lat = checker.latencies()

    def check(name: str, expected: Any, actual: Any, passed: bool) -> None:
        out.append({"name": name, "expected": expected, "actual": actual, "passed": passed})

    if a.converged_within is not None:
        conv = report["convergence_after_timeline"]
        check(
            "converged_within",
            a.converged_within,
            conv,
            conv is not None and conv <= a.converged_within,
        )
    if a.nothing_lost:
        summary = report["checker"]
        bad = len(report["lost"]) + int(summary["unreached"]) + int(summary["violations"])
        check(
            "nothing_lost",
            True,
            {
                "lost": len(report["lost"]),
                "unreached": summary["unreached"],
                "violations": summary["violations"],
            },
            bad == 0 and bool(checker.acked),
        )
    for name, q in (
        ("propagation_p50_max", 50),
        ("propagation_p99_max", 99),
        ("propagation_max_max", 100),
    ):
        limit = getattr(a, name)
        if limit is not None:
            value = _r(percentile(lat, q))
            check(name, limit, value, bool(lat) and value <= limit)
    if a.messages_per_write_max is not None:
        per = report["messages"]["per_write"]
        check(
            "messages_per_write_max",
            a.messages_per_write_max,
            per,
            per is not None and per <= a.messages_per_write_max,
        )
    return out


def write_report(report: dict[str, Any], out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """Write report.json, report.html (self-contained) and plot.png (the lag heatmap, with
    matplotlib; `plots=False` leaves the plots out) into `out_dir`; returns the files
    written, report.json and report.html first."""
    from edgekv.testnet.html import render_html
    from edgekv.testnet.plot import render_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    pngs = render_plots(report) if plots else None
    page = out / "report.html"
    page.write_text(render_html(report, pngs), encoding="utf-8")
    paths = [path, page]
    png = pngs.get("lag") if pngs is not None else None
    if png is not None:
        (out / "plot.png").write_bytes(png)
        paths.append(out / "plot.png")
    return paths


def summary_table(report: dict[str, Any]) -> Any:
    """A rich renderable: the headline figures and the assertion verdicts."""
    from rich.table import Table

    c = report["checker"]
    t = Table(title=f"{report['scenario']} ({report['network']}, seed {report['seed']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    prop, last = c["propagation"], c["propagation_to_last_edge"]
    t.add_row("edges", str(c["edges"]))
    t.add_row("writes acked / issued", f"{c['writes_acked']} / {c['writes_issued']}")
    t.add_row(
        "propagation p50 / p99 / max (s)",
        f"{prop['p50']:.3f} / {prop['p99']:.3f} / {prop['max']:.3f}",
    )
    t.add_row(
        "to last edge p50 / p99 / max (s)",
        f"{last['p50']:.3f} / {last['p99']:.3f} / {last['max']:.3f}",
    )
    per = report["messages"]["per_write"]
    t.add_row("messages per write", "-" if per is None else f"{per:.2f}")
    conv = report["convergence_after_timeline"]
    t.add_row("convergence after timeline (s)", "not converged" if conv is None else f"{conv:.3f}")
    t.add_row(
        "unreached / lost / violations",
        f"{c['unreached']} / {len(report['lost'])} / {c['violations']}",
    )
    t.add_row("wall time (s)", f"{report['wall_seconds']:.1f}")
    for a in report["assertions"]:
        mark = "[green]pass[/]" if a["passed"] else "[red]FAIL[/]"
        t.add_row(
            f"assert {a['name']} <= {a['expected']}"
            if a["name"] != "nothing_lost"
            else "assert nothing_lost",
            f"{a['actual']} {mark}",
        )
    return t


async def _create_store(net: Testnet, store: str, attempts: int = 5) -> None:
    """Create the scenario's store, retrying when the request or its answer is lost (a lossy
    scenario's client link drops messages too); `StoreExists` on a retry means an earlier
    attempt got through."""
    for attempt in range(attempts):
        try:
            await net.client.create_store(store)
            return
        except StoreExists:
            if attempt == 0:
                raise
            return
        except OriginUnavailable:
            if attempt == attempts - 1:
                raise
