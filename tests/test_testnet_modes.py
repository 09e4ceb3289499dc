"""The same harness over real sockets: tcp mode (tasks in one process) and processes mode
(every node an OS process), each with a crash and a restart; and the `edgekv testnet` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from edgekv.testnet.report import run_experiment
from edgekv.testnet.scenario import parse_scenario


def _crash_restart_scenario(edges: int) -> Any:
    return parse_scenario(
        {
            "name": "crash-restart",
            "network": {"edges": edges, "latency_ms": 5},
            "steps": [
                {"at": 0, "action": "write", "rate": 20, "duration": 2, "keys": 20},
                {"at": 0.4, "action": "crash", "node": "edge-1"},
                {"at": 1.2, "action": "restart", "node": "edge-1"},
            ],
            "assert": {"converged_within": 10.0, "nothing_lost": True},
        }
    )


async def test_tcp_mode_crash_and_restart() -> None:
    with trio.fail_after(60):
        report = await run_experiment(_crash_restart_scenario(3), network="tcp", seed=3)
    assert report["passed"], report["assertions"]
    actions = [a for _, a, _ in report["events"]]
    assert actions == ["crash", "restart"]
    assert report["checker"]["writes_acked"] >= 30
    assert report["messages"]["total"] > 0


async def test_processes_mode_crash_and_restart(tmp_path: Path) -> None:
    with trio.fail_after(90):
        report = await run_experiment(
            _crash_restart_scenario(2), network="processes", seed=3, data_dir=tmp_path
        )
    assert report["passed"], report["assertions"]
    assert [a for _, a, _ in report["events"]] == ["crash", "restart"]
    assert _procs_mentioning(str(tmp_path)) == []


def _procs_mentioning(needle: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd and int(pid) != os.getpid():
            out.append(cmd)
    return out


@pytest.mark.parametrize("network", ["tcp", "processes"])
def test_cli_testnet_runs_and_leaves_nothing_behind(network: str, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekv",
            "testnet",
            "--edges",
            "3",
            "--duration",
            "3",
            "--network",
            network,
            "--no-live",
            *(["--report", str(tmp_path / "report")] if network == "tcp" else []),
        ],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "propagation" in out and "unreached writes / violations" in out
    assert _procs_mentioning(str(tmp_path)) == []
    if network == "tcp":  # --report: the live run's page, its isolated edge in the fault table
        assert f"report: {tmp_path / 'report' / 'report.html'}" in out
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        (fault,) = report["faults"]
        assert fault["kind"] == "isolate" and fault["nodes"] == ["edge-2"]
        assert fault["all_caught_up"] and report["passed"]


def test_cli_testnet_stops_cleanly_on_sigint_and_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    for sig in (signal.SIGINT, signal.SIGTERM):
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekv",
                "testnet",
                "--edges",
                "2",
                "--network",
                "processes",
                "--no-live",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while len(_procs_mentioning(str(tmp_path))) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)  # real processes starting: there is no virtual clock here
            assert len(_procs_mentioning(str(tmp_path))) >= 3
            proc.send_signal(sig)
            rc = proc.wait(timeout=30)
            output = proc.stdout.read().decode() if proc.stdout else ""
        finally:
            proc.kill()
            if proc.stdout:
                proc.stdout.close()
        assert rc == 128 + sig, output
        assert _procs_mentioning(str(tmp_path)) == []


async def test_processes_mode_partition_and_heal(tmp_path: Path) -> None:
    """Partitions reach real processes through the shared fault file: the cut-off edge drops
    its sends (its transport counts them), misses a write the others get, and catches up once
    healed.  Real processes and a real clock: every wait is a bounded poll."""
    from edgekv.testnet.harness import Testnet

    with trio.fail_after(60):
        async with Testnet(edges=3, processes=True, latency=0.0, data_dir=tmp_path) as net:
            await net.client.create_store("s")
            net.partition(["edge-0"])
            assert net._procs is not None  # processes mode
            await net._procs.faults_applied(net.faults)  # every node, the origin included
            await _until(lambda: _dropped(net, "edge-0") > 0)  # and edge-0 drops its sends
            await net.client.put("s", "k", b"v")
            readers = net.readers()
            await _until(lambda: readers["edge-1"]("s", "k") == b"v")
            await _until(lambda: readers["edge-2"]("s", "k") == b"v")
            assert readers["edge-0"]("s", "k") is None  # the partition holds
            net.heal()
            await _until(lambda: readers["edge-0"]("s", "k") == b"v")


def _dropped(net: Any, name: str) -> int:
    status = net._procs._fetch_status()  # each edge's /status
    return int(status.get(name, {}).get("counters", {}).get("transport", {}).get("dropped", 0))


async def _until(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 (real processes: poll until true, bounded by the caller)
        await trio.sleep(0.05)
