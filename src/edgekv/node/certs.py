"""A development certificate authority: a cluster CA and node certificates (`edgekv certs`).

For testnets, tests and first deployments.  Keys are ECDSA P-256; node certificates carry
both TLS server and client usage (a node accepts and opens connections), client certificates
only client usage.  Each certificate names the given hosts (DNS names or IPs) as subject
alternative names, for clients that check host names.  Private keys are written mode 0600.
A production cluster may use any CA (openssl, cfssl, Vault...): edgekv only needs PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertAuthority", "write_dev_certs"]

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class CertAuthority:
    """A CA key and certificate that issues node and client certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str = "", days: int = 3650) -> CertAuthority:
        name = name or f"edgekv cluster CA {os.urandom(4).hex()}"  # distinct: clearer errors
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, directory: str | Path) -> CertAuthority:
        d = Path(directory)
        key = serialization.load_pem_private_key((d / CA_KEY_FILE).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{d / CA_KEY_FILE} is not an EC private key")
        return cls(key, x509.load_pem_x509_certificate((d / CA_FILE).read_bytes()))

    def save(self, directory: str | Path) -> Path:
        """Write ca.pem and ca-key.pem (0600) into `directory`; returns the ca.pem path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _write(d / CA_KEY_FILE, _key_pem(self.key), private=True)
        _write(d / CA_FILE, self.cert.public_bytes(serialization.Encoding.PEM))
        return d / CA_FILE

    def issue(
        self,
        name: str,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        client_only: bool = False,
        days: int = 825,
    ) -> tuple[bytes, bytes]:
        """A certificate for `name` signed by this CA: (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if not client_only:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_files(
        self,
        directory: str | Path,
        name: str,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        client_only: bool = False,
    ) -> tuple[Path, Path]:
        """Issue `name` and write NAME.pem and NAME-key.pem (0600); returns both paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cert, key = self.issue(name, hosts, client_only=client_only)
        cert_path, key_path = d / f"{name}.pem", d / f"{name}-key.pem"
        _write(key_path, key, private=True)
        _write(cert_path, cert)
        return cert_path, key_path


def write_dev_certs(
    directory: str | Path,
    names: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    clients: Sequence[str] = (),
) -> CertAuthority:
    """Into `directory`: the CA (reused if ca.pem and ca-key.pem exist, else created), then a
    node certificate for each of `names` and a client certificate for each of `clients`."""
    d = Path(directory)
    if (d / CA_FILE).exists() and (d / CA_KEY_FILE).exists():
        ca = CertAuthority.load(d)
    else:
        ca = CertAuthority.create()
        ca.save(d)
    for name in names:
        ca.issue_files(d, name, hosts)
    for name in clients:
        ca.issue_files(d, name, hosts, client_only=True)
    return ca
