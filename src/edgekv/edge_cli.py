"""`edgekv edge`: run an edge node as a daemon (trio), stopping cleanly on SIGINT/SIGTERM.

    edgekv edge --data-dir D --listen HOST:PORT --origin HOST:PORT [--peer HOST:PORT ...]
                [--http HOST:PORT] [--http-tokens-file F] [--cluster-key-file F] [--token-file F]
                [--node-id ID] [--tls-ca CA --tls-cert CERT --tls-key KEY] [--insecure]

Secrets come from files or the environment (EDGEKV_CLUSTER_KEY, EDGEKV_TOKEN), never argv; a
non-loopback `--listen`/`--http` needs TLS or a cluster key, or `--insecure` (security_cli).

Logs are structured (`key=value` fields); snapshot progress lines (`event=snapshot`, a fresh
or long-away node's bootstrap) show without -v.  Once serving (for a fresh node: once it holds
everything up to the origin's watermark as of joining, or after its ready timeout), one line `event=ready ...` with the
bound addresses goes to stdout (so scripts and tests can find port-0 addresses).
`python -m edgekv.edge_cli ...` runs the same command without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from edgekv import security_cli as security
from edgekv.errors import EdgeKVError, InvalidInput
from edgekv.node.faultfile import add_fault_file_argument
from edgekv.node.identity import add_identity_arguments
from edgekv.node.limits import NetLimits
from edgekv.node.tlsconfig import TlsConfig

__all__ = ["add_edge_commands", "main", "run_edge"]

logger = logging.getLogger("edgekv.edge")

LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def add_edge_commands(subparsers: Any) -> None:
    """Add `edge` to the `edgekv` command's subparsers."""
    p = subparsers.add_parser(
        "edge",
        help="run an edge node (full replica, local reads, gossip)",
        description="Run an edge node: a full replica that serves reads locally and gossips.",
    )
    p.add_argument("--data-dir", required=True, help="directory of the edge's SQLite replica")
    p.add_argument("--listen", default="127.0.0.1:7301", help="gossip address (HOST:PORT)")
    p.add_argument(
        "--origin", required=True, help="the origin address(es): HOST:PORT[,HOST:PORT...]"
    )
    p.add_argument(
        "--peer", action="append", default=[], metavar="HOST:PORT", help="seed peer (repeatable)"
    )
    p.add_argument("--http", default=None, help="admin HTTP address (HOST:PORT), off if omitted")
    p.add_argument("--cluster-id", default="edgekv")
    add_identity_arguments(p)
    security.add_daemon_security_arguments(p, origin=False)
    p.add_argument(
        "--origin-public-key",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM file of a public key the origin signs writes with (repeatable, for rotation;"
        " or EDGEKV_ORIGIN_PUBLIC_KEYS=FILE,FILE).  Required on a non-loopback --listen",
    )
    p.add_argument(
        "--http-tokens-file",
        default=None,
        help="file of TOKEN=SCOPES lines the admin HTTP API accepts (read:STORE; open if omitted)",
    )
    p.add_argument(
        "--flush-interval", type=float, default=0.5, help="seconds between database flushes"
    )
    add_fault_file_argument(p)
    NetLimits.add_arguments(p)
    p.set_defaults(func=run_edge)


def origin_key_files(files: Sequence[str], listen: str) -> list[str]:
    """The origin public key files (flags, else EDGEKV_ORIGIN_PUBLIC_KEYS).  An edge that
    cannot verify the origin's signatures refuses a non-loopback address: any peer could then
    rewrite its data (on loopback it only warns, see node/edge.py)."""
    out = list(files)
    if not out:
        env = os.environ.get("EDGEKV_ORIGIN_PUBLIC_KEYS", "")
        out = [f for f in env.split(",") if f.strip()]
    if not out and not security.is_loopback(listen.rpartition(":")[0].strip("[]")):
        raise InvalidInput(
            f"refusing to listen on {listen} without --origin-public-key: this edge could"
            " not tell the origin's writes from a peer's forgeries"
            " (see `edgekv keys generate`)"
        )
    return out


def run_edge(args: argparse.Namespace) -> int:
    """Run the edge daemon until SIGINT/SIGTERM; returns the exit status."""
    key, token, tls = security.cluster_key(args), security.token(args), security.tls(args)
    security.check_protected_mode(
        [args.listen, args.http],
        tls=tls,
        key=key,
        insecure=args.insecure,
        http=args.http,
        tokens=args.http_tokens_file,
    )
    if args.flush_interval <= 0:
        raise InvalidInput("--flush-interval must be positive")
    args.origin_public_key = origin_key_files(args.origin_public_key, args.listen)
    anyio.run(_serve, args, key, token, tls, backend="trio")
    return 0


async def _serve(
    args: argparse.Namespace, key: bytes | None, token: str | None, tls: TlsConfig | None
) -> None:
    from edgekv.node.auth import load_tokens
    from edgekv.node.edge import EdgeNode
    from edgekv.node.faultfile import fault_policy

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            fault_policy(args.fault_file) as faults,
            EdgeNode(
                args.listen,
                args.origin,
                args.peer,
                args.data_dir,
                cluster_id=args.cluster_id,
                cluster_key=key,
                http=args.http,
                node_id=args.node_id,
                advertise=args.advertise,
                token=token,
                tokens=None
                if args.http_tokens_file is None
                else load_tokens(args.http_tokens_file),
                tls=tls,
                flush_interval=args.flush_interval,
                faults=faults,
                net_limits=NetLimits.from_args(args),
                origin_public_keys=args.origin_public_key,
            ) as node,
        ):
            report = node.load_report
            print(
                f"event=ready node={node.node_id} ready={node.is_ready()}"
                f" address={node.address} http={node.http_address}"
                f" keys={len(node.replica)} watermark={node.watermark}"
                f" load_seconds={report.seconds if report else 0:.3f}",
                flush=True,
            )
            async for signum in signals:
                logger.info(
                    "event=shutdown node=%s signal=%s", node.node_id, signal.Signals(signum).name
                )
                break


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgekv.edge_cli edge ...` (or without the leading `edge`)."""
    parser = argparse.ArgumentParser(prog="edgekv")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    add_edge_commands(sub)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "edge" not in args_list and not {"-h", "--help"} & set(args_list):
        verbosity = [a for a in args_list if a in ("-v", "-vv", "--verbose")]
        args_list = [*verbosity, "edge", *(a for a in args_list if a not in verbosity)]
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("edgekv.snapshot").setLevel(logging.INFO)  # bootstrap progress lines
    try:
        return int(args.func(args))
    except EdgeKVError as exc:
        print(f"edgekv: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # cannot bind, cannot create the data directory, ...
        print(f"edgekv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
