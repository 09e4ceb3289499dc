"""The edge daemon as a real process: kill -9 and restart, clean SIGTERM, corrupt database.

Real sockets on 127.0.0.1 (port 0) and a real clock, every wait bounded by `trio.fail_after`.
The origin runs in the test process so the test can cut it off (a `LinkFaults` isolation of its
sends) to prove the restarted edge serves its persisted data *before* it catches up.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from edgekv.node.faults import LinkFaults
from test_edge_harness import OriginNode, tcp_origin

_STARTED: list[trio.Process] = []


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Any:
    """Kill every edge process a test started, even when an assertion failed."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.returncode is None:
            proc.kill()


class EdgeProcess:
    def __init__(self, proc: trio.Process, ready: dict[str, str], stderr: Path) -> None:
        self.proc = proc
        self.ready = ready
        self.stderr = stderr
        self.http = httpx.AsyncClient(base_url=f"http://{ready['http']}", timeout=5)

    async def status(self) -> dict[str, Any]:
        r = await self.http.get("/status")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    async def get(self, key: str) -> bytes | None:
        r = await self.http.get(f"/v1/stores/s/keys/{key}")
        return None if r.status_code == 404 else r.content

    async def wait_watermark(self, seq: int, persisted: bool = False) -> None:
        while True:
            st = await self.status()
            if st["watermark"] >= seq and (
                not persisted or st["persistence"]["persisted_watermark"] >= seq
            ):
                return
            await trio.sleep(0.05)

    async def close(self) -> None:
        await self.http.aclose()


async def start_edge(data_dir: Path, origin: str, log: Path) -> EdgeProcess:
    stderr = await trio.Path(log).open("ab")
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "edgekv.edge_cli",
            "-v",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--origin",
            origin,
            "--http",
            "127.0.0.1:0",
            "--flush-interval",
            "0.05",
        ],
        stdout=-1,  # subprocess.PIPE
        stderr=stderr.wrapped,
    )
    _STARTED.append(proc)
    await stderr.aclose()
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, "edge exited before it was ready: " + log.read_text()  # noqa: ASYNC240
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("event=ready"), line
    ready = dict(part.split("=", 1) for part in line.split())
    return EdgeProcess(proc, ready, log)


async def _writes(origin: OriginNode, lo: int, hi: int, value: bytes) -> None:
    for i in range(lo, hi):
        await origin.write({"op": "put", "store": "s", "key": f"k{i:03d}", "value": value})


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 61):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


async def test_kill9_restart_then_corrupt_database(tmp_path: Path) -> None:
    faults = LinkFaults(seed=1)
    log = tmp_path / "edge.log"
    data = tmp_path / "edge"
    with trio.fail_after(60):
        async with tcp_origin(faults=faults) as origin:
            await origin.write({"op": "create_store", "store": "s"})
            await _writes(origin, 0, 50, b"old")  # seqs 2..51

            edge = await start_edge(data, origin.address, log)
            await edge.wait_watermark(51, persisted=True)
            edge.proc.kill()  # SIGKILL: no final flush, no clean close
            assert await edge.proc.wait() == -signal.SIGKILL
            await edge.close()

            await _writes(origin, 50, 100, b"new")  # seqs 52..101, while the edge is down
            await _writes(origin, 0, 1, b"newer")  # seq 102 overwrites k000
            faults.isolate(origin.address)  # the origin can hear but not answer

            edge = await start_edge(data, origin.address, log)
            # serves what it had persisted, at once, with the origin unreachable
            assert edge.ready["keys"] == "50" and edge.ready["watermark"] == "51"
            st = await edge.status()
            assert st["watermark"] == 51 and st["persistence"]["loaded_keys"] == 50
            assert await edge.get("k010") == b"old"
            assert await edge.get("k000") == b"old"
            assert await edge.get("k060") is None

            faults.heal()  # then it catches up and converges with the origin
            await edge.wait_watermark(102)
            assert await edge.get("k060") == b"new"
            assert await edge.get("k000") == b"newer"
            st = await edge.status()
            assert st["root"] == f"{origin.replica.root:032x}"
            await edge.wait_watermark(102, persisted=True)

            edge.proc.send_signal(signal.SIGTERM)  # clean shutdown
            assert await edge.proc.wait() == 0
            await edge.close()
            assert "event=shutdown" in log.read_text() and "signal=SIGTERM" in log.read_text()

            db = data / "edge.db"
            _corrupt(db)
            edge = await start_edge(data, origin.address, log)
            # refused: moved aside, started empty, said so, then re-synced from the network
            # (an empty node waits for its initial sync before it reports ready)
            assert (await edge.status())["persistence"]["loaded_keys"] == 0
            assert "event=corrupt_database" in log.read_text()
            assert len(list(data.glob("edge.db.corrupt-*"))) == 1
            await edge.wait_watermark(102)
            assert await edge.get("k060") == b"new"
            assert (await edge.status())["root"] == f"{origin.replica.root:032x}"
            edge.proc.send_signal(signal.SIGINT)
            assert await edge.proc.wait() == 0
            await edge.close()


def test_cli_bad_arguments_exit_1_with_one_clear_line(tmp_path: Path) -> None:
    import subprocess

    for extra, message in (
        (["--origin", "nohost"], "bad address 'nohost'"),
        (["--origin", "127.0.0.1:9", "--cluster-key-file", str(tmp_path / "nope")], "cluster key"),
        (["--origin", "127.0.0.1:9", "--flush-interval", "0"], "--flush-interval"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "edgekv.edge_cli", "--data-dir", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.startswith("edgekv: error: ") and message in result.stderr
        assert "Traceback" not in result.stderr
