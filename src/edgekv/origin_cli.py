"""`edgekv origin` (the daemon) and the data commands that talk to an origin.

`add_origin_commands(subparsers)` registers: origin, put, get, delete, scan, zadd, zrem,
bf-add, zrange, stores.  Each command's `func(args)` returns the exit status; edgekv errors
propagate to `cli.main`, which prints one clear line and exits 1.  `python -m
edgekv.origin_cli ...` runs these commands alone (used by the crash tests).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from . import security_cli as security
from .errors import EdgeKVError, InvalidInput
from .node.faultfile import add_fault_file_argument, fault_policy
from .node.identity import add_identity_arguments
from .node.limits import NetLimits

DEFAULT_ORIGIN = "127.0.0.1:7300"


async def _serve_origin(args: argparse.Namespace, secrets: dict[str, Any]) -> None:
    from .origin.server import Origin

    async with (
        fault_policy(args.fault_file) as faults,
        Origin(
            data_dir=args.data_dir,
            listen=args.listen,
            http=args.http,
            tokens=secrets["tokens"],
            cluster_key=secrets["key"],
            tls=secrets["tls"],
            cluster_id=args.cluster_id,
            synchronous=args.synchronous,
            flush_threads=args.flush_threads,
            faults=faults,
            advertise=args.advertise,
            node_id=args.node_id,
            net_limits=NetLimits.from_args(args),
            signing_key=args.signing_key or os.environ.get("EDGEKV_SIGNING_KEY_FILE") or None,
            sign=not args.unsigned,
            log=args.log or os.environ.get("EDGEKV_LOG") or None,
        ) as origin,
    ):
        http = f" http {origin.http_address}" if origin.http_address else ""
        print(
            f"edgekv origin listening on {origin.address}{http} "
            f"(recovered {origin.recovered_rows} log rows, watermark {origin.watermark})",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break


def _flush_threads(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 64:
        raise argparse.ArgumentTypeError("must be between 0 and 64")
    return n


def _cmd_origin(args: argparse.Namespace) -> int:
    secrets: dict[str, Any] = {
        "key": security.cluster_key(args),
        "tokens": security.tokens(args),
        "tls": security.tls(args),
    }
    security.check_protected_mode(
        [args.listen, args.http],
        tls=secrets["tls"],
        key=secrets["key"],
        insecure=args.insecure,
        http=args.http,
        tokens=secrets["tokens"],
    )
    trio.run(_serve_origin, args, secrets)
    return 0


def _client_command(
    body: Callable[[Any, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .origin.client import OriginClient

        token, key, tls = security.token(args), security.cluster_key(args), security.tls(args)

        async def main() -> int:
            async with OriginClient(
                args.origin,
                token=token,
                cluster_id=args.cluster_id,
                cluster_key=key,
                tls=tls,
                timeout=args.timeout,
            ) as client:
                return await body(client, args)

        return trio.run(main)

    return run


def _value(args: argparse.Namespace) -> bytes:
    if args.file is not None:
        if args.value is not None:
            raise InvalidInput("give a VALUE or --file, not both")
        if args.file == "-":
            return sys.stdin.buffer.read()
        with open(args.file, "rb") as f:
            return f.read()
    if args.value is None:
        raise InvalidInput("give a VALUE or --file")
    return str(args.value).encode()


async def _put(c: Any, a: argparse.Namespace) -> int:
    v = await c.put(a.store, a.key, _value(a), ttl=a.ttl, if_version=a.if_version, force=a.force)
    print(f"seq {v.seq}")
    return 0


async def _get(c: Any, a: argparse.Namespace) -> int:
    entry = await c.get_entry(a.store, a.key)
    if entry is None:
        print(f"edgekv: {a.store}/{a.key}: not found", file=sys.stderr)
        return 1
    if a.version:
        print(f"seq {entry.version.seq} written_at {entry.version.written_at}", file=sys.stderr)
    sys.stdout.buffer.write(entry.value + (b"" if a.raw else b"\n"))
    sys.stdout.flush()
    return 0


async def _delete(c: Any, a: argparse.Namespace) -> int:
    v = await c.delete(a.store, a.key, if_version=a.if_version)
    print(f"seq {v.seq}" if v is not None else "not found (nothing deleted)")
    return 0


async def _scan(c: Any, a: argparse.Namespace) -> int:
    for key in await c.scan(a.store, a.pattern, limit=a.limit):
        print(key)
    return 0


def _member_score(spec: str) -> tuple[bytes, float]:
    member, sep, score = spec.rpartition("=")
    if not sep or not member:
        raise InvalidInput(f"bad member {spec!r}: use MEMBER=SCORE")
    try:
        value = float(score)
    except ValueError:
        raise InvalidInput(f"bad score in {spec!r}") from None
    return member.encode(), value


async def _zadd(c: Any, a: argparse.Namespace) -> int:
    members = dict(_member_score(s) for s in a.members)
    v = await c.zadd(a.store, a.key, members, force=a.force)
    print(f"seq {v.seq}")
    return 0


async def _zrem(c: Any, a: argparse.Namespace) -> int:
    v = await c.zrem(a.store, a.key, [m.encode() for m in a.members])
    print(f"seq {v.seq}" if v is not None else "no member removed")
    return 0


async def _zrange(c: Any, a: argparse.Namespace) -> int:
    for member, score in await c.zrange_by_score(a.store, a.key, a.min, a.max):
        print(f"{member.decode(errors='backslashreplace')}\t{score:g}")
    return 0


async def _bf_add(c: Any, a: argparse.Namespace) -> int:
    v = await c.bf_add(
        a.store,
        a.key,
        [i.encode() for i in a.items],
        capacity=a.capacity,
        error_rate=a.error_rate,
        force=a.force,
    )
    print(f"seq {v.seq}")
    return 0


async def _stores(c: Any, a: argparse.Namespace) -> int:
    if a.create:
        print(f"created {a.create} at seq {(await c.create_store(a.create)).seq}")
    elif a.drop:
        print(f"dropped {a.drop} at seq {(await c.drop_store(a.drop)).seq}")
    else:
        for name in await c.stores():
            print(name)
    return 0


def add_origin_commands(sub: Any) -> None:
    """Register the origin daemon and the data commands on an argparse subparsers object."""
    p = sub.add_parser("origin", help="run the origin (durable, versioned writes)")
    p.add_argument("--data-dir", default="origin-data", help="where the write-ahead log lives")
    p.add_argument(
        "--log",
        default=None,
        metavar="URL",
        help="the log: 'sqlite' (default, in --data-dir) or postgresql://USER@HOST/DB"
        " (or EDGEKV_LOG; passwords via PGPASSWORD or ~/.pgpass, not argv)",
    )
    p.add_argument("--listen", default=DEFAULT_ORIGIN, help="HOST:PORT for edges and clients")
    add_identity_arguments(p)
    p.add_argument("--http", default=None, help="HOST:PORT for the HTTP API (off by default)")
    security.add_daemon_security_arguments(p, origin=True)
    p.add_argument("--cluster-id", default="edgekv")
    p.add_argument(
        "--signing-key",
        default=None,
        metavar="FILE",
        help="PEM file of the Ed25519 key the origin signs writes with (or"
        " EDGEKV_SIGNING_KEY_FILE; default: DATA_DIR/signing.key, made on first start)",
    )
    p.add_argument(
        "--unsigned",
        action="store_true",
        help="do not sign writes (benchmarks only: edges that verify refuse every write)",
    )
    p.add_argument("--synchronous", default="FULL", choices=["FULL", "EXTRA", "NORMAL"])
    add_fault_file_argument(p)
    NetLimits.add_arguments(p)
    p.add_argument(
        "--flush-threads",
        type=_flush_threads,
        default=0,
        metavar="N",
        help="flush the log in N background threads instead of on the event loop "
        "(for a disk whose flushes take milliseconds; default 0)",
    )
    p.set_defaults(func=_cmd_origin)

    def client_parser(
        name: str, help: str, body: Callable[[Any, argparse.Namespace], Awaitable[int]]
    ) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        q.add_argument("--origin", default=os.environ.get("EDGEKV_ORIGIN", DEFAULT_ORIGIN))
        security.add_client_security_arguments(q)
        q.add_argument("--cluster-id", default="edgekv")
        q.add_argument("--timeout", type=float, default=10.0)
        q.set_defaults(func=_client_command(body))
        parser: argparse.ArgumentParser = q
        return parser

    q = client_parser("put", "write a value", _put)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("value", nargs="?")
    q.add_argument("--file", help="read the value from a file ('-' for stdin)")
    q.add_argument("--ttl", type=float, default=None, help="seconds until the value expires")
    q.add_argument("--if-version", type=int, default=None, help="compare-and-set (0: absent)")
    q.add_argument("--force", action="store_true", help="overwrite a key of another kind")

    q = client_parser("get", "read a value (strong read at the origin)", _get)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("--raw", action="store_true", help="no trailing newline")
    q.add_argument("--version", action="store_true", help="print the version on stderr")

    q = client_parser("delete", "delete a key", _delete)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("--if-version", type=int, default=None)

    q = client_parser("scan", "list keys matching a glob pattern", _scan)
    q.add_argument("store")
    q.add_argument("pattern", nargs="?", default="*")
    q.add_argument("--limit", type=int, default=None)

    q = client_parser("zadd", "add members to a sorted set", _zadd)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("members", nargs="+", metavar="MEMBER=SCORE")
    q.add_argument("--force", action="store_true")

    q = client_parser("zrem", "remove members from a sorted set", _zrem)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("members", nargs="+", metavar="MEMBER")

    q = client_parser("zrange", "sorted-set members by score (inclusive bounds)", _zrange)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("min", type=float, nargs="?", default=-math.inf)
    q.add_argument("max", type=float, nargs="?", default=math.inf)

    q = client_parser("bf-add", "add items to a Bloom filter", _bf_add)
    q.add_argument("store")
    q.add_argument("key")
    q.add_argument("items", nargs="+", metavar="ITEM")
    q.add_argument("--capacity", type=int, default=None)
    q.add_argument("--error-rate", type=float, default=None)
    q.add_argument("--force", action="store_true")

    q = client_parser("stores", "list, create or drop stores", _stores)
    group = q.add_mutually_exclusive_group()
    group.add_argument("--create", metavar="STORE")
    group.add_argument("--drop", metavar="STORE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run only the origin commands (the full `edgekv` command is `edgekv.cli`)."""
    parser = argparse.ArgumentParser(prog="edgekv")
    add_origin_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeKVError as exc:
        print(f"edgekv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
