"""`edgekv keys generate --out DIR`: a new origin signing key pair (see node/keys.py)."""

from __future__ import annotations

import argparse
from typing import Any

from .node.keys import generate_keypair


def _generate(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.out)
    print(f"private key (origin --signing-key, mode 0600): {private}")
    print(f"public key (edge --origin-public-key): {public}")
    return 0


def add_keys_commands(sub: Any) -> None:
    p = sub.add_parser("keys", help="origin signing keys")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = ks.add_parser("generate", help="write a new Ed25519 key pair into a directory")
    g.add_argument("--out", required=True, metavar="DIR", help="directory for the two PEM files")
    g.set_defaults(func=_generate)
