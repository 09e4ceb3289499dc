"""The origin's Ed25519 signing keys on disk (see crdt/proofs.py for what they sign).

`edgekv keys generate --out DIR` writes `origin-signing.key` (PKCS#8 PEM, mode 0600) and
`origin-signing.pub` (SubjectPublicKeyInfo PEM).  The origin signs with one private key
(`--signing-key FILE`, or `EDGEKV_SIGNING_KEY_FILE`); an edge accepts a small set of public
keys (`--origin-public-key FILE`, repeatable, or `EDGEKV_ORIGIN_PUBLIC_KEYS`, paths separated
by commas), which is how a key rotates without downtime: give the edges the new public key
next to the old one, then restart the origin with the new private key (it signs its live states
again at start).  Keep the old public key on an edge while it holds states only the old key
signed: without it a restarted edge drops those certificates, and serves those states but
cannot relay them (re-sync it from scratch to be rid of the old key).  Keys are files, never
command-line values.  An origin with no key configured keeps one in its data dir
(`signing.key`, generated on first start) or, without a data dir, makes a throwaway one.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from ..errors import InvalidInput

__all__ = [
    "PRIVATE_NAME",
    "PUBLIC_NAME",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "origin_signing_key",
    "private_pem",
    "public_pem",
]

PRIVATE_NAME = "origin-signing.key"
PUBLIC_NAME = "origin-signing.pub"
DATA_DIR_KEY = "signing.key"


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))


def generate_keypair(out: str | Path) -> tuple[Path, Path]:
    """Write a new key pair into directory `out`; refuses to overwrite an existing key."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / PRIVATE_NAME, d / PUBLIC_NAME
    if priv.exists() or pub.exists():
        raise InvalidInput(f"{priv} or {pub} already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    _write_private(priv, key)
    pub.write_bytes(public_pem(key.public_key()))
    return priv, pub


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot read the origin public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path} is not an Ed25519 public key")
    return key


def origin_signing_key(
    configured: Ed25519PrivateKey | str | Path | None, data_dir: Path | None
) -> Ed25519PrivateKey:
    """The origin's key: the configured one, else the data dir's (made once), else throwaway."""
    if isinstance(configured, Ed25519PrivateKey):
        return configured
    if configured is not None:
        return load_private_key(configured)
    if data_dir is None:
        return Ed25519PrivateKey.generate()
    path = data_dir / DATA_DIR_KEY
    if path.exists():
        return load_private_key(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    _write_private(path, key)
    (data_dir / "signing.pub").write_bytes(public_pem(key.public_key()))
    return key
