"""A throwaway PostgreSQL server for tests, benchmarks and failover experiments.

`with throwaway_postgres() as pg: pg.dsn` runs `initdb` and `pg_ctl` (Debian's postgresql
package: /usr/lib/postgresql/*/bin) in a temporary directory, listening on 127.0.0.1 (plus
`listen` addresses) on a free port, with trust authentication for local use only; it is
stopped and deleted on exit.  Never a shared or system instance.  initdb refuses to run as
root, so as root the server runs as the `postgres` user (Debian's package creates it) through
`runuser`.  `postgres_unavailable()` says why none can be started here (for a test skip).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThrowawayPostgres", "postgres_unavailable", "throwaway_postgres"]

_RUN_AS = "postgres"


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def postgres_unavailable() -> str | None:
    """None if a throwaway server can be started here, else the reason why not."""
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql: initdb, pg_ctl)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser (initdb refuses root)"
        try:
            import pwd

            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return f"running as root and there is no {_RUN_AS!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ThrowawayPostgres:
    """A running throwaway server."""

    dir: Path
    port: int
    user: str = "edgekv"
    host: str = "127.0.0.1"

    @property
    def dsn(self) -> str:
        return self.dsn_at(self.host)

    def create_database(self, name: str) -> str:
        """A new empty database `name` (letters, digits, _); returns its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn.rsplit("/", 1)[0] + "/" + name

    def dsn_at(self, host: str) -> str:
        """The URL of the `postgres` database through `host` (one of the listen addresses)."""
        h = f"[{host}]" if ":" in host else host
        return f"postgresql://{self.user}@{h}:{self.port}/postgres"


def _run(cmd: list[str], *, as_user: bool) -> None:
    if as_user:
        cmd = ["runuser", "-u", _RUN_AS, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@contextmanager
def throwaway_postgres(listen: Sequence[str] = ()) -> Iterator[ThrowawayPostgres]:
    """Start a throwaway server (see the module docstring); stopped and removed on exit."""
    reason = postgres_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = _bindir()
    assert bindir is not None
    as_user = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="edgekv-pg-"))
    data = top / "data"
    if as_user:
        import pwd

        pw = pwd.getpwnam(_RUN_AS)
        os.chown(top, pw.pw_uid, pw.pw_gid)
    pg = ThrowawayPostgres(top, _free_port())
    started = False
    try:
        _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", pg.user, "-A", "trust", "-E", "UTF8"],
            as_user=as_user,
        )
        addresses = ",".join(["127.0.0.1", *listen])
        opts = (
            f"-c listen_addresses='{addresses}' -c port={pg.port} -c unix_socket_directories='{top}'"
            " -c max_connections=200 -c shared_buffers=64MB -c fsync=on -c synchronous_commit=on"
        )
        if listen:  # trust from the other addresses too (experiments in network namespaces)
            with open(data / "pg_hba.conf", "a", encoding="utf-8") as f:
                f.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
        _run(
            [*pg_ctl, "-o", opts, "-l", str(top / "log"), "-w", "-t", "60", "start"],
            as_user=as_user,
        )
        started = True
        yield pg
    finally:
        if started:
            try:
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                    as_user=as_user,
                )
            except (subprocess.SubprocessError, OSError):
                pass
        shutil.rmtree(top, ignore_errors=True)
