"""Security options shared by the daemons and the data commands, protected mode, `edgekv certs`.

Secrets never come from the command line, which every local user can read (`ps`, /proc):
- the cluster key: `--cluster-key-file FILE` or the environment variable EDGEKV_CLUSTER_KEY;
- a client's or an edge's token: `--token-file FILE` or EDGEKV_TOKEN;
- the origin's accepted tokens: `--tokens-file FILE`, one `TOKEN=SCOPES` per line (`#` comments);
- TLS: `--tls-cert FILE --tls-key FILE --tls-ca FILE` (paths; the key stays in its file).
The old forms `--cluster-key VALUE` and `--token VALUE` are refused with a pointer to these.

Protected mode (as Redis has): a daemon bound to a non-loopback address with neither TLS nor a
cluster key refuses to start unless given `--insecure`, and says why in one line (exit 1).  An
HTTP port on a non-loopback address also needs tokens (the origin's `--tokens-file`, an edge's
`--http-tokens-file`): TLS and the cluster key do not authenticate HTTP clients.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgekv.errors import InvalidInput
from edgekv.node.auth import load_tokens
from edgekv.node.tcp import parse_address
from edgekv.node.tlsconfig import TlsConfig

__all__ = [
    "add_client_security_arguments",
    "add_daemon_security_arguments",
    "check_protected_mode",
    "cluster_key",
    "is_loopback",
    "tls",
    "token",
    "tokens",
]

CLUSTER_KEY_ENV = "EDGEKV_CLUSTER_KEY"
TOKEN_ENV = "EDGEKV_TOKEN"
_KEY_HINT = f"--cluster-key-file FILE or the {CLUSTER_KEY_ENV} environment variable"
_TOKEN_HINT = f"--token-file FILE or the {TOKEN_ENV} environment variable"
_TOKENS_HINT = "--tokens-file FILE (one TOKEN=SCOPES per line)"


class _Refused(argparse.Action):
    """An option that would put a secret on the command line: refused, with the way to go."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.hint = kwargs.pop("hint")
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} would show a secret to every local user (process list); "
            f"use {self.hint}"
        )


def _add_key_and_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster-key-file", default=None, metavar="FILE", help=f"the cluster key ({_KEY_HINT})"
    )
    p.add_argument("--cluster-key", action=_Refused, hint=_KEY_HINT)
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="this node's certificate (PEM)")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="its private key (PEM)")
    p.add_argument(
        "--tls-ca", default=None, metavar="FILE", help="the cluster CA certificate (PEM): TLS on"
    )


def add_client_security_arguments(p: argparse.ArgumentParser) -> None:
    """The data commands: cluster key, token, TLS (a client certificate is optional)."""
    _add_key_and_tls(p)
    p.add_argument(
        "--tls-verify-hostname",
        action="store_true",
        help="also check that the origin's certificate names the host in --origin",
    )
    p.add_argument(
        "--token-file", default=None, metavar="FILE", help=f"bearer token ({_TOKEN_HINT})"
    )
    p.add_argument("--token", action=_Refused, hint=_TOKEN_HINT)


def add_daemon_security_arguments(p: argparse.ArgumentParser, *, origin: bool) -> None:
    """A daemon: cluster key, TLS, `--insecure`; the origin's tokens or an edge's own token."""
    _add_key_and_tls(p)
    if origin:
        p.add_argument(
            "--tokens-file",
            default=None,
            metavar="FILE",
            help="accepted bearer tokens, one TOKEN=SCOPES per line (e.g. s3cret=write:*,read:x)",
        )
        p.add_argument("--token", action=_Refused, hint=_TOKENS_HINT)
    else:
        p.add_argument(
            "--token-file",
            default=None,
            metavar="FILE",
            help=f"this edge's token, presented with the writes it forwards ({_TOKEN_HINT})",
        )
        p.add_argument("--token", action=_Refused, hint=_TOKEN_HINT)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address with neither TLS nor a cluster key (protected mode)",
    )


def read_secret_file(path: str, what: str) -> bytes:
    """The stripped contents of `path`; InvalidInput (never the contents) if unusable."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} file {path!r}: {exc.strerror}") from None
    if not data:
        raise InvalidInput(f"the {what} file {path!r} is empty")
    return data


def cluster_key(args: argparse.Namespace) -> bytes | None:
    """From `--cluster-key-file`, else EDGEKV_CLUSTER_KEY, else None."""
    if args.cluster_key_file is not None:
        return read_secret_file(args.cluster_key_file, "cluster key")
    value = os.environ.get(CLUSTER_KEY_ENV, "").strip()
    return value.encode() if value else None


def token(args: argparse.Namespace) -> str | None:
    """From `--token-file`, else EDGEKV_TOKEN, else None."""
    if args.token_file is not None:
        raw = read_secret_file(args.token_file, "token")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"the token file {args.token_file!r} is not UTF-8") from None
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


def tokens(args: argparse.Namespace) -> dict[str, str] | None:
    """The origin's `--tokens-file` as {token: scopes} (`node.auth.load_tokens`); None without
    one (tokens off)."""
    path = args.tokens_file
    if path is None:
        return None
    out = load_tokens(path)
    if not out:
        raise InvalidInput(f"the tokens file {path!r} holds no TOKEN=SCOPES line")
    return out


def tls(args: argparse.Namespace) -> TlsConfig | None:
    """From `--tls-cert/--tls-key/--tls-ca` [`--tls-verify-hostname`] (None when none given)."""
    verify = bool(getattr(args, "tls_verify_hostname", False))
    return TlsConfig.from_options(args.tls_cert, args.tls_key, args.tls_ca, verify_hostname=verify)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; any other name or address is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_protected_mode(
    listen: Iterable[str | None],
    *,
    tls: TlsConfig | None,
    key: bytes | None,
    insecure: bool,
    http: str | None = None,
    tokens: object = None,
) -> None:
    """InvalidInput, one line, if a non-loopback bind has no protection (module docstring)."""
    if insecure:
        return
    exposed = [a for a in listen if a is not None and not is_loopback(parse_address(a)[0])]
    if exposed and tls is None and key is None:
        raise InvalidInput(
            f"refusing to listen on {exposed[0]} (not loopback) with neither TLS (--tls-cert, "
            f"--tls-key, --tls-ca) nor a cluster key ({_KEY_HINT}); add --insecure to run "
            "unprotected anyway"
        )
    if http is not None and not is_loopback(parse_address(http)[0]) and tokens is None:
        raise InvalidInput(
            f"refusing to serve HTTP on {http} (not loopback) without tokens "
            "(--tokens-file, an edge's --http-tokens-file): "
            "anyone who reaches it could write; add --insecure to run unprotected anyway"
        )


def add_security_commands(sub: Any) -> None:
    """Register `edgekv certs` (a development CA and node certificates)."""
    p = sub.add_parser(
        "certs",
        help="make a dev cluster CA and node/client certificates (PEM) for TLS",
        description="Write DIR/ca.pem (+ ca-key.pem, reused if present) and, for each NAME, "
        "NAME.pem and NAME-key.pem signed by it.  Then run each node with --tls-ca DIR/ca.pem "
        "--tls-cert DIR/NAME.pem --tls-key DIR/NAME-key.pem.",
    )
    p.add_argument("dir", help="output directory (created if missing)")
    p.add_argument("names", nargs="*", metavar="NAME", help="node certificates to issue")
    p.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="a client certificate"
    )
    p.add_argument(
        "--host",
        action="append",
        default=None,
        metavar="HOST",
        help="DNS name or IP the certificates name (repeatable; default 127.0.0.1, ::1, localhost)",
    )
    p.set_defaults(func=_cmd_certs)


def _cmd_certs(args: argparse.Namespace) -> int:
    from edgekv.node.certs import DEFAULT_HOSTS, write_dev_certs

    if not args.names and not args.client:
        raise InvalidInput("name at least one node (NAME) or client (--client NAME)")
    hosts = args.host or list(DEFAULT_HOSTS)
    write_dev_certs(args.dir, args.names, hosts, clients=args.client)
    for name in [*args.names, *args.client]:
        print(f"{args.dir}/{name}.pem {args.dir}/{name}-key.pem")
    print(f"CA: {args.dir}/ca.pem (keep {args.dir}/ca-key.pem off the nodes)")
    return 0
