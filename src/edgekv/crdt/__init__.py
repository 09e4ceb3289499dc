"""Pure CRDT values and the replica: no I/O, no clocks (callers pass `now_ms`)."""

from .bloom import Bloom, BloomDelta, bloom_params
from .bulk import bulk_load, bulk_load_stores
from .ops import (
    BfAdd,
    Delete,
    Limits,
    Op,
    Put,
    ZAdd,
    ZRem,
    plan,
    validate_key,
    validate_op,
    validate_store_name,
)
from .register import Register
from .replica import META, Change, Replica, StoreReplica
from .seqranges import SeqRanges
from .state import Delta, State, as_state, join, merge
from .version import Entry, Version
from .zset import ZSet

__all__ = [
    "META",
    "BfAdd",
    "Bloom",
    "BloomDelta",
    "Change",
    "Delete",
    "Delta",
    "Entry",
    "Limits",
    "Op",
    "Put",
    "Register",
    "Replica",
    "SeqRanges",
    "State",
    "StoreReplica",
    "Version",
    "ZAdd",
    "ZRem",
    "ZSet",
    "as_state",
    "bloom_params",
    "bulk_load",
    "bulk_load_stores",
    "join",
    "merge",
    "plan",
    "validate_key",
    "validate_op",
    "validate_store_name",
]
