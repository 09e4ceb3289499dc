"""The `edgekv` command: origin and edge daemons, data commands, testnet and experiments.

Each area registers its own subcommands (origin_cli, edge_cli, testnet_cli); this module only
assembles the parser, sets up logging and turns edgekv errors into one clear line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import EdgeKVError

_AREAS = (
    "edgekv.origin_cli:add_origin_commands",
    "edgekv.edge_cli:add_edge_commands",
    "edgekv.testnet_cli:add_testnet_commands",
    "edgekv.keys_cli:add_keys_commands",
    "edgekv.security_cli:add_security_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekv",
        description="Globally replicated key/value store for edge applications.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in _AREAS:
        module, func = spec.split(":")
        getattr(importlib.import_module(module), func)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("edgekv.snapshot").setLevel(min(level, logging.INFO))  # bootstrap progress
    try:
        result = args.func(args)
    except EdgeKVError as exc:
        print(f"edgekv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
