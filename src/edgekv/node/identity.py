"""A node's identity and the address it advertises to peers.

Theory of operation
1. The node id is the member's identity, not its address: generated once (`prefix-` plus 16
   random hex digits), kept in `<data_dir>/node-id`, read back on every start.  An explicit id
   (`node_id=` / `--node-id`) wins and is written there when the file is missing; a node
   without a data dir gets a fresh id per run.
2. The advertised address is what peers dial.  Given explicitly it must name a host (never an
   unspecified address such as 0.0.0.0 or ::).  By default it is the listen address, except for
   an unspecified bind: then it is the address of the local interface that routes to the first
   seed (the origin, for an edge), found by connect()ing a UDP socket to it, which only asks the
   kernel's routing table and sends no packet.  With no seed, or a seed that routes nowhere,
   the interface of the default route is used (a documentation address is "dialled" the same
   way); with no route at all the node refuses to start and asks for `--advertise`.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

__all__ = [
    "add_identity_arguments",
    "advertised_address",
    "is_unspecified",
    "load_node_id",
    "route_source",
]

NODE_ID_FILE = "node-id"
_MAX_ID = 128
_DEFAULT_ROUTE_PROBES = ("192.0.2.1", "2001:db8::1")  # RFC 5737 / RFC 3849: never answered


def add_identity_arguments(parser: Any) -> None:
    """`--advertise` and `--node-id` on a daemon's argparse parser."""
    parser.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="the address peers dial (default: the listen address, or for 0.0.0.0/:: the"
        " interface that routes to the origin/first seed)",
    )
    parser.add_argument(
        "--node-id",
        default=None,
        help="this node's identity (default: generated once and kept in the data dir)",
    )


def load_node_id(data_dir: str | Path | None, explicit: str | None, prefix: str) -> str:
    """This node's id (see rule 1); raises InvalidInput for an unusable id file."""
    if explicit is not None and (not explicit or len(explicit) > _MAX_ID):
        raise InvalidInput(f"a node id is 1..{_MAX_ID} characters")
    if data_dir is None:
        return explicit or f"{prefix}-{secrets.token_hex(8)}"
    path = Path(data_dir) / NODE_ID_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the node id file {path}: {exc}") from None
    if stored and explicit is None:
        if len(stored) > _MAX_ID:
            raise InvalidInput(f"the node id in {path} is longer than {_MAX_ID} characters")
        return stored
    node_id = explicit or f"{prefix}-{secrets.token_hex(8)}"
    if not stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(node_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return node_id


def is_unspecified(host: str) -> bool:
    """True for a wildcard bind address ("", 0.0.0.0, ::)."""
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False  # a host name


def route_source(target_host: str, family: int | None = None) -> str | None:
    """The local address the kernel would use to reach `target_host` (no packet is sent);
    None if it routes nowhere or cannot be resolved."""
    try:
        infos = socket.getaddrinfo(target_host, 9, family or 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for fam, _type, _proto, _name, sockaddr in infos:
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                host = str(s.getsockname()[0])
        except OSError:
            continue
        if not is_unspecified(host):
            return host.split("%", 1)[0]
    return None


def advertised_address(
    listen_host: str, port: int, advertise: str | None, seeds: Sequence[str] = ()
) -> str:
    """The "host:port" peers should dial (see rule 2)."""
    from .tcp import format_address, parse_address

    if advertise:
        try:
            host, _ = parse_address(advertise)
        except ValueError:
            raise InvalidInput(
                f"bad advertised address {advertise!r}, expected host:port"
            ) from None
        if is_unspecified(host):
            raise InvalidInput(
                f"cannot advertise {advertise!r}: peers cannot dial an unspecified address"
            )
        return advertise
    if not is_unspecified(listen_host):
        return format_address(listen_host, port)
    # a v4 wildcard is reachable over v4 only; a v6 wildcard is dual-stack on Linux
    family = 0 if ":" in listen_host else socket.AF_INET
    targets = []
    for seed in seeds:
        try:
            targets.append(parse_address(seed)[0])
        except ValueError:
            continue
    for target in [*targets[:1], *_DEFAULT_ROUTE_PROBES]:
        source = route_source(target, family)
        if source is not None:
            return format_address(source, port)
    raise InvalidInput(
        f"listening on {format_address(listen_host, port)} and no route to find an address"
        " to advertise: pass --advertise HOST:PORT"
    )
