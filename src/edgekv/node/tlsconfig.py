"""TLS for edgekv's ports: a node's certificate and key, and the cluster CA that signs them.

Theory of operation
1. One cluster CA signs every node's certificate.  A node's certificate is its membership card:
   a gossip port (every node's) refuses, at the TLS handshake, any peer without a certificate
   signed by the CA (mutual authentication), and every outbound connection verifies the peer's
   certificate against the CA.
2. The origin's one port also serves clients, which may present a certificate but need not
   (`require_client_cert=False`): TLS still verifies any certificate offered, and the framed
   handshake (`tcp.FramedStream.accept`) refuses a connection that declares a node role
   ("edge", "origin") without one.  Clients are authorised per operation by tokens.
3. Host names are not checked by default: peers address each other by whatever address they
   advertise, and the CA is the cluster's own, so "signed by the cluster CA" is the check.
   `verify_hostname=True` also checks the name or IP in the peer's certificate (clients that
   reach the origin by a stable name should turn it on).
4. TLS runs under the pre-shared-key handshake, not instead of it: both may be on.
Contexts are built once, when the config is made, so a missing or mismatched file is a clear
`InvalidInput` at start-up, not a failed connection later.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgekv.errors import InvalidInput

__all__ = ["TlsConfig"]

_MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfig:
    """Paths to this node's certificate and key (PEM) and to the cluster CA certificate(s).

    `TlsConfig(ca="ca.pem", cert="edge-1.pem", key="edge-1-key.pem")`; a client may leave
    out `cert` and `key` (it then verifies the origin but presents nothing).
    """

    def __init__(
        self,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        *,
        verify_hostname: bool = False,
    ) -> None:
        if (cert is None) != (key is None):
            raise InvalidInput("TLS needs both a certificate and its key (or neither, a client)")
        self.ca = Path(ca)
        self.cert = None if cert is None else Path(cert)
        self.key = None if key is None else Path(key)
        self.verify_hostname = verify_hostname
        self._client = self._context(ssl.PROTOCOL_TLS_CLIENT)
        self._client.check_hostname = verify_hostname
        self._servers: dict[bool, ssl.SSLContext] = {}
        if self.cert is not None:
            for required in (True, False):
                ctx = self._context(ssl.PROTOCOL_TLS_SERVER)
                ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
                self._servers[required] = ctx

    @classmethod
    def from_options(
        cls, cert: str | None, key: str | None, ca: str | None, *, verify_hostname: bool = False
    ) -> TlsConfig | None:
        """From `--tls-cert/--tls-key/--tls-ca`: None when none is given; a CA is required."""
        if cert is None and key is None and ca is None:
            return None
        if ca is None:
            raise InvalidInput("TLS needs --tls-ca (the cluster CA certificate)")
        return cls(ca, cert, key, verify_hostname=verify_hostname)

    @property
    def has_cert(self) -> bool:
        return self.cert is not None

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = _MIN_VERSION
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=str(self.ca))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"cannot load the TLS CA {str(self.ca)!r}: {_why(exc)}") from None
        if self.cert is not None and self.key is not None:
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInput(
                    f"cannot load the TLS certificate {str(self.cert)!r} with key "
                    f"{str(self.key)!r}: {_why(exc)}"
                ) from None
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For outbound connections: verifies the peer against the CA, presents our cert."""
        return self._client

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """For a listening port; InvalidInput if this config has no certificate."""
        ctx = self._servers.get(require_client_cert)
        if ctx is None:
            raise InvalidInput("serving TLS needs a certificate and key (--tls-cert, --tls-key)")
        return ctx

    def __repr__(self) -> str:
        return f"TlsConfig(ca={str(self.ca)!r}, cert={None if self.cert is None else str(self.cert)!r})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
