"""edgekv: a globally replicated key/value store for edge applications.

One origin stamps every write with a version and logs it durably; edge nodes hold full
replicas, answer reads locally, and spread writes by gossip with Merkle anti-entropy.
The public names below are imported lazily so `import edgekv` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .crdt.version import Entry, Version
from .errors import (
    CodecError,
    ConflictingVersion,
    EdgeKVError,
    InvalidInput,
    LocalProtocolError,
    OriginUnavailable,
    RemoteProtocolError,
    StoreExists,
    StoreNotFound,
    Unauthorized,
    VersionMismatch,
    WrongKind,
)

__version__ = "0.1.0"

_LAZY = {
    "EdgeNode": "edgekv.node.edge",
    "KvStore": "edgekv.node.kvstore",
    "Origin": "edgekv.origin.server",
    "OriginClient": "edgekv.origin.client",
    "GossipConfig": "edgekv.gossip.config",
    "TlsConfig": "edgekv.node.tlsconfig",
}

__all__ = [
    "CodecError",
    "ConflictingVersion",
    "EdgeKVError",
    "EdgeNode",
    "Entry",
    "GossipConfig",
    "InvalidInput",
    "KvStore",
    "LocalProtocolError",
    "Origin",
    "OriginClient",
    "OriginUnavailable",
    "RemoteProtocolError",
    "StoreExists",
    "StoreNotFound",
    "TlsConfig",
    "Unauthorized",
    "Version",
    "VersionMismatch",
    "WrongKind",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .gossip.config import GossipConfig
    from .node.edge import EdgeNode
    from .node.kvstore import KvStore
    from .node.tlsconfig import TlsConfig
    from .origin.client import OriginClient
    from .origin.server import Origin
