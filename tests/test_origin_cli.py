"""The origin CLI: the daemon prints its address; data commands work and fail clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from test_origin_crash import start_origin


async def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "edgekv.origin_cli", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_cli_round_trip_and_errors(tmp_path: Path) -> None:
    with trio.fail_after(60):
        proc, address = await start_origin(tmp_path / "data")
        try:
            o = ("--origin", address)
            assert (await cli("stores", *o, "--create", "flags")).returncode == 0
            r = await cli("put", *o, "flags", "greeting", "hello")
            assert r.returncode == 0 and r.stdout == b"seq 2\n"
            r = await cli("put", *o, "flags", "blob", "--file", "-", stdin=b"\x00\x01")
            assert r.returncode == 0
            r = await cli("get", *o, "--raw", "flags", "blob")
            assert r.stdout == b"\x00\x01"
            assert (await cli("get", *o, "flags", "greeting")).stdout == b"hello\n"
            assert (await cli("zadd", *o, "flags", "rank", "alice=10", "bob=2")).returncode == 0
            r = await cli("zrange", *o, "flags", "rank", "0", "5")
            assert r.stdout == b"bob\t2\n"
            assert (await cli("bf-add", *o, "flags", "blocked", "1.2.3.4")).returncode == 0
            r = await cli("scan", *o, "flags", "b*")
            assert r.stdout.split() == [b"blob", b"blocked"]
            assert (await cli("zrem", *o, "flags", "rank", "bob")).returncode == 0
            assert (await cli("delete", *o, "flags", "greeting")).returncode == 0
            r = await cli("get", *o, "flags", "greeting")
            assert r.returncode == 1 and b"not found" in r.stderr
            assert (await cli("stores", *o)).stdout == b"flags\n"
            # errors: one clear line, exit status 1, no traceback
            for args, words in [
                (("put", *o, "flags", "rank", "x"), b"zset"),
                (("get", *o, "nope", "k"), b"no such store"),
                (("put", *o, "bad name", "k", "v"), b"bad store name"),
                (("zadd", *o, "flags", "z", "m=nan"), b"NaN"),
                (("zadd", *o, "flags", "z", "oops"), b"MEMBER=SCORE"),
            ]:
                r = await cli(*args)
                assert r.returncode == 1, args
                assert r.stderr.startswith(b"edgekv: error:") and words in r.stderr, r.stderr
                assert b"Traceback" not in r.stderr
        finally:
            proc.kill()
            await proc.wait()
        r = await cli("stores", "--origin", address, "--timeout", "0.3")
        assert r.returncode == 1 and b"cannot reach the origin" in r.stderr
