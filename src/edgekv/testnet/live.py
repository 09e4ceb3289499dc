"""`edgekv testnet`: launch an origin and N edges, write a demo workload, watch it replicate.

The demo: create a store, write `rate` unique values per second to a few hundred keys, isolate
the last edge for the middle fifth of the run and heal it, stop writing a little before the
end, and wait for convergence.  A rich live view shows each edge's watermark, lag behind the
origin, known peers and messages/s; the final summary gives propagation p50/p99/max (from the
outside checker), messages per write, how long the isolated edge took to catch up after the
heal, and the final convergence time.  Everything runs in real time (also in sim mode).  With
`report_dir` it also samples watermarks and traffic and writes the same report.json /
report.html / plot.png as `edgekv experiment`.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from edgekv.errors import EdgeKVError
from edgekv.testnet.checker import ConvergenceChecker, probe_loop, probe_once
from edgekv.testnet.harness import Testnet
from edgekv.testnet.report import Sampler, run_record

__all__ = ["LiveOptions", "run_live", "summary"]

STORE = "demo"


@dataclass(frozen=True, slots=True)
class LiveOptions:
    edges: int = 5
    network: str = "tcp"  # sim | tcp | processes
    latency: float = 0.02  # seconds, one way (sim and tcp)
    loss: float = 0.0
    seed: int = 1
    duration: float | None = 10.0  # None: until Ctrl-C
    rate: float = 20.0  # writes per second
    keys: int = 200
    live_view: bool = True
    report_dir: str | None = None  # write report.json, report.html and plot.png here


class _Demo:
    def __init__(self, net: Testnet, opts: LiveOptions) -> None:
        self.net = net
        self.opts = opts
        self.checker = ConvergenceChecker(net.edge_names)
        self.rng = random.Random(opts.seed)
        self.isolated: str | None = None
        self.catch_up: float | None = None
        self.final_convergence: float | None = None
        self.failed = 0
        self._last_sent: dict[str, tuple[float, int, float]] = {}
        self.status = "starting"
        self.fault_done = anyio.Event()

    async def write_loop(self, stop_at: float | None) -> None:
        n = 0
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            while stop_at is None or anyio.current_time() < stop_at:
                value = f"demo-{n}-{self.opts.seed}".encode()
                key = f"key-{self.rng.randrange(self.opts.keys):04d}"
                tg.start_soon(self.write, key, value)
                n += 1
                await anyio.sleep(max(0.0, start + n / self.opts.rate - anyio.current_time()))

    async def write(self, key: str, value: bytes) -> None:
        w = self.checker.issue(STORE, key, value, anyio.current_time())
        try:
            version = await self.net.client.put(STORE, key, value)
        except EdgeKVError:
            self.failed += 1
            return
        self.checker.ack(w, version.seq, anyio.current_time())

    async def fault_demo(self, start: float, length: float) -> None:
        """Isolate the last edge for `length` seconds, heal, time its catch-up."""
        try:
            await self._fault_demo(start, length)
        finally:
            self.fault_done.set()

    async def _fault_demo(self, start: float, length: float) -> None:
        if self.opts.edges < 2:
            return
        await anyio.sleep(max(0.0, start))
        victim = self.net.edge_names[-1]
        self.isolated = victim
        self.status = f"{victim} isolated"
        self.net.isolate(victim)
        await anyio.sleep(length)
        target = self.net.watermarks().get("origin") if self.opts.network != "processes" else None
        self.net.heal()
        healed = anyio.current_time()
        self.status = f"{victim} healed, catching up"
        with anyio.move_on_after(30):
            while True:
                wms = self.net.watermarks()
                goal = target if target is not None else max(wms.values(), default=0)
                if wms.get(victim, -1) >= goal:
                    self.catch_up = anyio.current_time() - healed
                    break
                await anyio.sleep(0.05)
        self.isolated = None
        self.status = "running"

    def view(self) -> Table:
        wms = self.net.watermarks()
        origin_wm = wms.get("origin", max(wms.values(), default=0))
        now = time.monotonic()
        t = Table(
            title=f"edgekv testnet: {self.opts.edges} edges, {self.opts.network}, seed {self.opts.seed} -- {self.status}"
        )
        for col in ("node", "state", "watermark", "lag (seqs)", "peers", "msgs/s"):
            t.add_column(col, justify="right" if col not in ("node", "state") else "left")
        names = (
            ["origin", *self.net.edge_names]
            if self.opts.network != "processes"
            else self.net.edge_names
        )
        for name in names:
            live = self.net.live(name) if self.opts.network != "processes" else name in wms
            if not live:
                t.add_row(name, "[red]down[/]", "-", "-", "-", "-")
                continue
            wm = wms.get(name, 0)
            peers, sent = self._node_info(name)
            prev = self._last_sent.get(name)
            if prev is None or now - prev[0] >= 0.4:
                rate = (sent - prev[1]) / (now - prev[0]) if prev is not None else 0.0
                self._last_sent[name] = (now, sent, rate)
            else:
                rate = prev[2]
            state = "[yellow]isolated[/]" if name == self.isolated else "[green]up[/]"
            snap = self._snapshot(name)
            if snap is not None:
                state = (
                    f"[cyan]syncing[/] {snap['keys']:,}/{snap['total_keys']:,} keys"
                    f" {snap['keys_per_s']:,.0f}/s {snap['seconds_left']:.1f} s left"
                )
            t.add_row(name, state, str(wm), str(max(0, origin_wm - wm)), str(peers), f"{rate:.0f}")
        c = self.checker.summary()
        t.caption = f"writes acked {c['writes_acked']}, failed {self.failed}"
        return t

    def _snapshot(self, name: str) -> dict[str, Any] | None:
        try:
            return self.net.snapshot_progress(name)
        except Exception:  # a node going down between two refreshes
            return None

    def _node_info(self, name: str) -> tuple[int, int]:
        try:
            return self.net.node_info(name)
        except Exception:  # a node going down between two refreshes
            return 0, 0


async def cancel_on_signals(
    scope: anyio.CancelScope,
    hit: list[int],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel `scope` on SIGINT (Ctrl-C), SIGTERM or SIGHUP, so every `finally` runs and no
    node process is left behind (also when SIGINT was ignored, as for background jobs).
    Started with `tg.start`: the receiver is in place before any node process exists."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            hit.append(int(signum))
            scope.cancel()
            return


async def run_live(opts: LiveOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary figures (also rendered by `summary`).

    On SIGINT/SIGTERM/SIGHUP it stops cleanly and returns {"interrupted": signal number}.
    """
    hit: list[int] = []
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(cancel_on_signals, tg.cancel_scope, hit)
        result = await _run_live(opts, console or Console())
        tg.cancel_scope.cancel()
    return {"interrupted": hit[0]} if hit else result


async def _run_live(opts: LiveOptions, console: Console) -> dict[str, Any]:
    console.print(f"edgekv testnet: {opts.edges} edges over {opts.network}, seed {opts.seed}")
    async with Testnet(
        edges=opts.edges,
        network="tcp" if opts.network == "processes" else opts.network,
        processes=opts.network == "processes",
        latency=opts.latency,
        loss=opts.loss,
        seed=opts.seed,
    ) as net:
        demo = _Demo(net, opts)
        await net.client.create_store(STORE)
        start = anyio.current_time()
        net.t0 = start
        sampler = Sampler(net, start, 0.1 if opts.edges <= 200 else 0.25)
        record: dict[str, Any] = {}
        elapsed = 0.0
        d = opts.duration
        writes_until = None if d is None else start + max(0.5, d * 0.7)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: probe_loop(
                    demo.checker, net.readers, interval=0.02, batch_readers=net.batch_readers
                )
            )
            if d is not None:
                tg.start_soon(demo.fault_demo, d * 0.3, d * 0.2)
            if opts.report_dir is not None:
                tg.start_soon(sampler.run)
            demo.status = "running"
            with (
                Live(demo.view(), console=console, refresh_per_second=4, transient=False)
                if opts.live_view
                else _Null() as live
            ):
                async with anyio.create_task_group() as writers:
                    writers.start_soon(demo.write_loop, writes_until)
                    while True:
                        await anyio.sleep(0.5)
                        if opts.live_view:
                            live.update(demo.view())
                        if d is not None and anyio.current_time() >= start + d * 0.75:
                            break
                    writers.cancel_scope.cancel()
                demo.status = "converging"
                remaining = max(1.0, start + d - anyio.current_time()) if d is not None else 10.0
                demo.final_convergence = await net.convergence_time(timeout=remaining + 5)
                if d is not None:
                    with anyio.move_on_after(10):
                        await demo.fault_done.wait()
                probe_once(demo.checker, net.readers(), anyio.current_time(), full=True)
                if opts.live_view:
                    live.update(demo.view())
            tg.cancel_scope.cancel()
        stats = net.stats()
        if opts.report_dir is not None:
            sampler.sample()
            record = run_record(
                demo.checker, start, stats, list(net.events), list(net.event_nodes), sampler
            )
            elapsed = anyio.current_time() - start
    result = demo.checker.summary()
    acked = result["writes_acked"]
    total = sum(stats.sent_messages.values())
    result.update(
        {
            "messages": total,
            "messages_per_write": round(total / acked, 2)
            if isinstance(acked, int) and acked
            else None,
            "catch_up_after_heal": None if demo.catch_up is None else round(demo.catch_up, 3),
            "final_convergence": None
            if demo.final_convergence is None
            else round(demo.final_convergence, 3),
            "writes_failed": demo.failed,
            "seed": opts.seed,
        }
    )
    console.print()
    console.print(summary(result))
    if opts.report_dir is not None:
        page = _write_live_report(opts, result, record, elapsed)
        console.print(f"report: {page}", soft_wrap=True, highlight=False)
        result["report"] = str(page)
    return result


def _write_live_report(
    opts: LiveOptions, result: dict[str, Any], record: dict[str, Any], elapsed: float
) -> Path:
    """The live run as an experiment report (same report.json / report.html / plot.png)."""
    from edgekv.testnet.report import write_report
    from edgekv.testnet.timeline import fault_summary

    c = record["checker"]
    ok = c["unreached"] == 0 and c["violations"] == 0 and c["writes_acked"] > 0
    report: dict[str, Any] = {
        "scenario": "testnet",
        "seed": opts.seed,
        "network": opts.network,
        "config": {
            "description": "edgekv testnet demo: writes to a few hundred keys, the last edge "
            "isolated for the middle fifth of the run, then healed",
            "edges": opts.edges,
            "latency": opts.latency,
            "loss": opts.loss,
            "rate": opts.rate,
            "duration": opts.duration,
            "keys": opts.keys,
        },
        "replay": f"edgekv testnet --edges {opts.edges} --network {opts.network} "
        f"--seed {opts.seed} --duration {opts.duration} --rate {opts.rate:g} --report DIR",
        "wall_seconds": round(elapsed, 3),
        "timeline_end": round(elapsed, 6),
        "convergence_after_timeline": result["final_convergence"],
        "writes_failed": result["writes_failed"],
        "lost": [],
        **record,
    }
    report["faults"] = fault_summary(report)
    report["assertions"] = [
        {
            "name": "nothing_lost",
            "expected": True,
            "actual": {"unreached": c["unreached"], "violations": c["violations"]},
            "passed": ok,
        }
    ]
    report["passed"] = ok
    assert opts.report_dir is not None
    return write_report(report, opts.report_dir)[1]


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: object) -> None:
        return None


def summary(result: dict[str, Any]) -> Group:
    """The final summary table."""
    t = Table(title="summary")
    t.add_column("measure")
    t.add_column("value", justify="right")
    p, last = result["propagation"], result["propagation_to_last_edge"]
    t.add_row("writes acked (failed)", f"{result['writes_acked']} ({result['writes_failed']})")
    t.add_row(
        "propagation to each edge p50 / p99 / max",
        f"{p['p50'] * 1000:.0f} / {p['p99'] * 1000:.0f} / {p['max'] * 1000:.0f} ms",
    )
    t.add_row(
        "propagation to last edge p50 / p99 / max",
        f"{last['p50'] * 1000:.0f} / {last['p99'] * 1000:.0f} / {last['max'] * 1000:.0f} ms",
    )
    mpw = result["messages_per_write"]
    t.add_row("node-to-node messages per write", "-" if mpw is None else f"{mpw:.2f}")
    cu = result["catch_up_after_heal"]
    t.add_row("isolated edge caught up after heal", "-" if cu is None else f"{cu * 1000:.0f} ms")
    fc = result["final_convergence"]
    t.add_row(
        "all digests equal after writes stop",
        "not converged" if fc is None else f"{fc * 1000:.0f} ms",
    )
    t.add_row("unreached writes / violations", f"{result['unreached']} / {result['violations']}")
    return Group(t)
