"""The errors edgekv raises.  Every public failure is one of these types.

`EdgeKVError` is the root.  Errors that cross the wire carry a stable `code` so the origin can
send them to a client (TCP or HTTP) and the client can raise the same type again.  A subclass
names its code and HTTP status in its header: `class X(EdgeKVError, code="x", http_status=400)`.
"""

from __future__ import annotations


class EdgeKVError(Exception):
    """Root of every edgekv error."""

    code = "error"
    http_status = 500

    def __init_subclass__(cls, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init_subclass__()
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status


class InvalidInput(EdgeKVError, ValueError, code="invalid_input", http_status=400):
    """A request broke a limit or a rule: bad store name, oversize key or value, NaN score, ..."""


class StoreNotFound(EdgeKVError, KeyError, code="store_not_found", http_status=404):
    """The store does not exist (or has been dropped)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "store not found"


class StoreExists(EdgeKVError, code="store_exists", http_status=409):
    """create_store on a store that already exists."""


class WrongKind(EdgeKVError, TypeError, code="wrong_kind", http_status=409):
    """A key holds another kind of value (Redis's WRONGTYPE)."""


class VersionMismatch(EdgeKVError, code="version_mismatch", http_status=409):
    """A conditional write (`if_version=`) found another version at the origin (HTTP 409: the
    condition is a parameter, not a precondition header, so not 412)."""


class Unauthorized(EdgeKVError, PermissionError, code="unauthorized", http_status=401):
    """Missing or bad token, or a token without the needed scope."""


class OriginUnavailable(EdgeKVError, ConnectionError, code="origin_unavailable", http_status=503):
    """The origin could not be reached within the timeout."""


class NotLeader(OriginUnavailable, code="not_leader"):
    """This origin follows the log and does not take writes: try another origin address."""


class ConflictingVersion(EdgeKVError, code="conflicting_version", http_status=500):
    """Two states share a seq but differ: only corruption or a forged write can cause this."""


class CodecError(EdgeKVError, ValueError, code="codec_error", http_status=400):
    """Bytes that do not decode to a valid edgekv value (malformed, hostile or oversize)."""


class ProtocolError(EdgeKVError, code="protocol_error", http_status=400):
    """Base of wire protocol errors."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: the connection is closed."""


ERRORS_BY_CODE: dict[str, type[EdgeKVError]] = {
    cls.code: cls
    for cls in (
        EdgeKVError,
        InvalidInput,
        StoreNotFound,
        StoreExists,
        WrongKind,
        VersionMismatch,
        Unauthorized,
        OriginUnavailable,
        NotLeader,
        ConflictingVersion,
        CodecError,
        ProtocolError,
    )
}


def error_from_code(code: str, message: str) -> EdgeKVError:
    """Rebuild the typed error a peer reported."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    exc = EdgeKVError(message)
    exc.code = code  # a code this side has no class for (e.g. the origin's log_error)
    return exc
