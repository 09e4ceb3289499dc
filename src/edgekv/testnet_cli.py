"""`edgekv testnet` (a live local testnet) and `edgekv experiment` (a scenario and its report).

Both run under trio.  `experiment` in sim mode runs in virtual time (MockClock with autojump),
so a 30 s partition takes far less than 30 s of wall time and the same seed gives the same
report; the seed is printed first.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_testnet_commands"]


def add_testnet_commands(subparsers: Any) -> None:
    """Register `testnet` and `experiment` on the `edgekv` parser's subparsers."""
    p = subparsers.add_parser(
        "testnet",
        help="launch an origin and N edges locally, write a demo workload, show replication live",
    )
    p.add_argument("--edges", type=int, default=5, help="number of edges (default 5)")
    p.add_argument("--network", choices=("sim", "tcp", "processes"), default="tcp")
    p.add_argument(
        "--latency", type=float, default=20.0, help="one-way link latency in ms (sim, tcp)"
    )
    p.add_argument("--loss", type=float, default=0.0, help="message loss probability (sim, tcp)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=None, help="seconds; default: until Ctrl-C")
    p.add_argument("--rate", type=float, default=20.0, help="demo writes per second")
    p.add_argument("--no-live", action="store_true", help="no live view, only the summary")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="write report.json, report.html and plot.png of the run into DIR",
    )
    p.set_defaults(func=_testnet)

    e = subparsers.add_parser(
        "experiment", help="run a fault-injection scenario and write a report"
    )
    e.add_argument("scenario", help="a scenario .toml file or a bundled scenario name")
    e.add_argument(
        "--out", required=True, help="directory for report.json, report.html and plot.png"
    )
    e.add_argument("--network", choices=("sim", "tcp", "processes"), default=None)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--short", action="store_true", help="the scenario's short version")
    e.add_argument("--scale", type=float, default=None, help="multiply every time by this (0, 1]")
    e.add_argument("--edges", type=int, default=None, help="override the number of edges")
    e.set_defaults(func=_experiment)

    s = subparsers.add_parser(
        "soak",
        help="run a processes testnet under writes and faults; report whether RSS, fds or "
        "tasks grew",
    )
    s.add_argument("--duration", default="10m", help="e.g. 90s, 10m, 1h (default 10m)")
    s.add_argument("--edges", type=int, default=3)
    s.add_argument("--rate", type=float, default=50.0, help="writes per second")
    s.add_argument("--keys", type=int, default=2000, help="size of the key space written")
    s.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    s.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    s.add_argument("--warmup", type=float, default=None, help="seconds (default: 20%% of run)")
    s.add_argument("--tolerance", type=float, default=0.10, help="allowed change (0.10: 10%%)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", default=None, help="also write the markdown summary to this file")
    s.set_defaults(func=_soak)


def _testnet(args: argparse.Namespace) -> int:
    import trio

    from edgekv.errors import InvalidInput
    from edgekv.testnet.live import LiveOptions, run_live

    if args.edges < 1 or (args.duration is not None and args.duration <= 0):
        raise InvalidInput("--edges must be >= 1 and --duration > 0")
    if not 0 <= args.loss <= 1 or args.latency < 0:
        raise InvalidInput("--loss must be in [0, 1] and --latency >= 0")
    opts = LiveOptions(
        edges=args.edges,
        network=args.network,
        latency=args.latency / 1000.0,
        loss=args.loss,
        seed=args.seed,
        duration=args.duration,
        rate=args.rate,
        live_view=not args.no_live,
        report_dir=args.report,
    )
    result = trio.run(run_live, opts)
    if "interrupted" in result:
        return 128 + int(result["interrupted"])
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0 if result["unreached"] == 0 and result["violations"] == 0 else 1


def _experiment(args: argparse.Namespace) -> int:
    import anyio
    import trio
    from rich.console import Console

    from edgekv.testnet.plot import available as plots_available
    from edgekv.testnet.report import run_experiment, summary_table, write_report
    from edgekv.testnet.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if args.short or args.scale is not None or args.edges is not None:
        scenario = scenario.shortened(args.scale, args.edges)
    network = args.network or scenario.mode
    seed = scenario.seed if args.seed is None else args.seed
    console = Console()
    console.print(f"experiment {scenario.name}: {scenario.edges} edges, {network}, seed {seed}")

    async def main() -> dict[str, Any]:
        from edgekv.testnet.live import cancel_on_signals

        hit: list[int] = []
        report: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            await tg.start(cancel_on_signals, tg.cancel_scope, hit)
            report = await run_experiment(scenario, network=network, seed=seed)
            tg.cancel_scope.cancel()
        return {"interrupted": hit[0]} if hit else report

    if network == "sim":
        from edgekv.testnet.harness import sim_clock

        report = trio.run(main, clock=sim_clock())
    else:
        report = trio.run(main)
    if "interrupted" in report:
        console.print("interrupted: no report written")
        return 128 + int(report["interrupted"])
    paths = write_report(report, args.out)
    console.print(summary_table(report))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if not plots_available():
        console.print("no plots: matplotlib is not installed (pip install 'edgekv[plot]')")
    print(f"report: {paths[1]}")
    return 0 if report["passed"] else 1


def _soak(args: argparse.Namespace) -> int:
    import shlex
    import sys

    import trio

    from edgekv.errors import InvalidInput
    from edgekv.testnet.soak import SoakConfig, parse_duration, run_soak, summary_markdown

    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    config = SoakConfig(
        duration=duration,
        edges=args.edges,
        rate=args.rate,
        keys=args.keys,
        fault_every=args.fault_every,
        sample_every=args.sample_every,
        warmup=duration * 0.2 if args.warmup is None else args.warmup,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    print(f"soak: seed {config.seed}, {duration:g} s, {config.edges} edges", flush=True)
    result = trio.run(run_soak, config)
    command = "edgekv " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["soak"] else "edgekv soak"
    text = summary_markdown(result, command)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if result.ok else 1
