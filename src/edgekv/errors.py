"""The errors edgekv raises.  Every public failure is one of these types.

`EdgeKVError` is the root.  Errors that cross the wire carry a stable `code` so the origin can
send them to a client (TCP or HTTP) and the client can raise the same type again.
"""

from __future__ import annotations


class EdgeKVError(Exception):
    """Root of every edgekv error."""

    code = "error"
    http_status = 500


class InvalidInput(EdgeKVError, ValueError):
    """A request broke a limit or a rule: bad store name, oversize key or value, NaN score, ..."""

    code = "invalid_input"
    http_status = 400


class StoreNotFound(EdgeKVError, KeyError):
    """The store does not exist (or has been dropped)."""

    code = "store_not_found"
    http_status = 404

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "store not found"


class StoreExists(EdgeKVError):
    """create_store on a store that already exists."""

    code = "store_exists"
    http_status = 409


class WrongKind(EdgeKVError, TypeError):
    """A key holds another kind of value (Redis's WRONGTYPE)."""

    code = "wrong_kind"
    http_status = 409


class VersionMismatch(EdgeKVError):
    """A conditional write (`if_version=`) found another version at the origin (HTTP 409: the
    condition is a parameter, not a precondition header, so not 412)."""

    code = "version_mismatch"
    http_status = 409


class Unauthorized(EdgeKVError, PermissionError):
    """Missing or bad token, or a token without the needed scope."""

    code = "unauthorized"
    http_status = 401


class OriginUnavailable(EdgeKVError, ConnectionError):
    """The origin could not be reached within the timeout."""

    code = "origin_unavailable"
    http_status = 503


class NotLeader(OriginUnavailable):
    """This origin follows the log and does not take writes: try another origin address."""

    code = "not_leader"


class ConflictingVersion(EdgeKVError):
    """Two states share a seq but differ: only corruption or a forged write can cause this."""

    code = "conflicting_version"
    http_status = 500


class CodecError(EdgeKVError, ValueError):
    """Bytes that do not decode to a valid edgekv value (malformed, hostile or oversize)."""

    code = "codec_error"
    http_status = 400


class ProtocolError(EdgeKVError):
    """Base of wire protocol errors."""

    code = "protocol_error"
    http_status = 400


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
