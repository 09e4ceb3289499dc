"""Wire fields of gossip messages: one codec per field kind (its checks and its encoding), and
the generic encoder/decoder every message type shares.

Theory of operation
1. A message type is a dataclass deriving from `WireMessage`, registered with `@message(tag)`.
   Each field's annotation names its codec: `wm: Annotated[int, SEQ]`.  The dataclass field
   order is the wire order (CBOR maps keep insertion order, so it fixes the bytes).
2. `OPTIONAL` marks a field that may be absent on the wire: absent means the field's default,
   and the encoder leaves it out when it equals the default.  `When("f")` marks a field that
   exists on the wire only when field `f` is truthy (otherwise it is neither sent nor read).
3. `from_wire` checks every field's type, size and range, raising `RemoteProtocolError` (and
   nothing else); a message type's `check()` adds the rules that tie fields together.
   `to_wire` is the inverse: `parse(x.to_wire()) == x` for every valid message.
4. A limit on a received message is checked before what it bounds is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import partial
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Self,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

from ..crdt.codec import decode_delta, encode_delta
from ..crdt.merkle import DEPTH, FANOUT
from ..crdt.proofs import Certificate
from ..crdt.replica import META
from ..crdt.state import Delta
from ..errors import CodecError, RemoteProtocolError
from .wire import Message, MsgType, type_name

MAX_SEQ = (1 << 63) - 1
MAX_ITEMS = 100_000  # items, ranges, keys or indices in one received message (hard limit)
MAX_PROOFS = 10_000  # certificates in one message
# What applying one message's deltas may make a replica allocate beyond the message itself:
# a Bloom delta names its filter's size m and a new filter takes m/8 bytes, so a few bytes on
# the wire could cost many MiB.  A received message naming more than MAX_MESSAGE_ALLOC is
# rejected whole; senders cut PUSH chunks at SEND_ALLOC (half, so any one filter still fits).
MAX_MESSAGE_ALLOC = 32 << 20
SEND_ALLOC = MAX_MESSAGE_ALLOC // 2
# Distinct stores one message's items may name (a replica builds per-store state for each).
MAX_MESSAGE_STORES = 1024
MAX_MEMBER_ROWS = 10_000  # rows of one MEMBERS list
MAX_ASK = 256  # addresses one MEMBERS message asks about (membership rule 8)
MAX_ADDRESS = 256
MAX_KEY_BYTES = 512
ROLES = ("edge", "origin")
STATES = ("alive", "suspect", "dead")
DIGEST_BYTES = 16

Item = tuple[str, str, Delta]
Range = tuple[int, int]
MemberRow = tuple[str, str, int, str]
LeafEntry = tuple[str, int, int, int]  # key, key digest, reset, seq


def digest_bytes(d: int) -> bytes:
    return d.to_bytes(DIGEST_BYTES, "big")


def bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg)


# --- checks of one value ---------------------------------------------------------------------


def check_int(v: object, what: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise bad(f"{what} must be an integer in [{lo}, {hi}]")
    return v


def check_list(v: object, what: str, limit: int = MAX_ITEMS) -> list[Any]:
    if type(v) is not list:
        raise bad(f"{what} must be an array")
    if len(v) > limit:
        raise bad(f"{what} has {len(v)} entries, more than {limit}")
    return v


def check_str(v: object, what: str, lo: int = 0, hi: int = MAX_ADDRESS) -> str:
    if type(v) is not str or not lo <= len(v) <= hi:
        raise bad(f"{what} must be a string of {lo}..{hi} characters")
    return v


def check_store(v: object) -> str:
    s = check_str(v, "store", 0, 64)
    if s != META:
        for ch in s:
            if not (ch.isascii() and (ch.isalnum() or ch in "_.-")):
                raise bad(f"bad store name {s!r}")
    return s


def check_key(v: object) -> str:
    if type(v) is not str or not v:
        raise bad("a key must be a non-empty string")
    try:
        n = len(v.encode())
    except UnicodeEncodeError:
        raise bad("a key must be valid UTF-8") from None
    if n > MAX_KEY_BYTES:
        raise bad(f"key of {n} bytes exceeds {MAX_KEY_BYTES}")
    return v


def check_digest(v: object, what: str = "digest") -> int:
    if type(v) is not bytes or len(v) != DIGEST_BYTES:
        raise bad(f"{what} must be {DIGEST_BYTES} bytes")
    return int.from_bytes(v, "big")


def check_delta(v: object) -> Delta:
    try:
        return decode_delta(v)
    except CodecError as exc:
        raise bad(f"bad delta: {exc}") from None


def alloc_size(d: Delta) -> int:
    """Bytes a replica may allocate to apply `d` beyond its encoded size (a Bloom filter)."""
    m = getattr(d, "m", 0)
    return (m + 7) // 8 if isinstance(m, int) else 0


def check_alloc(deltas: Sequence[Delta], what: str) -> None:
    total = sum(alloc_size(d) for d in deltas)
    if total > MAX_MESSAGE_ALLOC:
        raise bad(f"{what}: Bloom filters of {total} bytes exceed {MAX_MESSAGE_ALLOC} a message")


def field_int(m: Message, name: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    """Field `name` of `m`, an integer in [lo, hi] (for messages outside the table)."""
    if name not in m:
        raise bad(f"{type_name(m.get('t'))}: missing field {name!r}")
    return check_int(m[name], f"{type_name(m.get('t'))}: {name}", lo, hi)


# --- codecs: one per field kind --------------------------------------------------------------


class Codec:
    """How one kind of field is checked on the way in and written on the way out.  `plain`:
    the wire value is the value itself (`encode` is the identity and is skipped)."""

    plain: ClassVar[bool] = False

    def decode(self, v: object, what: str) -> Any:
        raise NotImplementedError

    def encode(self, v: Any) -> object:
        return v


@dataclass(frozen=True, slots=True)
class Int(Codec):
    plain = True
    lo: int = 0
    hi: int = MAX_SEQ

    def decode(self, v: object, what: str) -> int:
        return check_int(v, what, self.lo, self.hi)


class Bool(Codec):
    plain = True

    def decode(self, v: object, what: str) -> bool:
        if type(v) is not bool:
            raise bad(f"{what} must be a boolean")
        return v


class Address(Codec):
    """A peer's address; with `none`, None too."""

    plain = True

    def __init__(self, none: bool = False) -> None:
        self.none = none

    def decode(self, v: object, what: str) -> str | None:
        if v is None and self.none:
            return None
        return check_str(v, what, 1)


class Role(Codec):
    plain = True

    def decode(self, v: object, what: str) -> str:
        if v not in ROLES:
            raise bad(f"unknown role {v!r}")
        return str(v)


class Store(Codec):
    plain = True

    def decode(self, v: object, what: str) -> str:
        return check_store(v)


class Digest(Codec):
    def decode(self, v: object, what: str) -> int:
        return check_digest(v, what)

    def encode(self, v: int) -> object:
        return digest_bytes(v)


class Ranges(Codec):
    """[[lo, hi]...] sorted, disjoint, 1 <= lo <= hi."""

    def decode(self, v: object, what: str) -> list[Range]:
        out: list[Range] = []
        prev = 0
        for r in check_list(v, what):
            if type(r) is not list or len(r) != 2:
                raise bad(f"{what}: a range must be [lo, hi]")
            lo, hi = r
            if type(lo) is not int or type(hi) is not int or not 1 <= lo <= hi <= MAX_SEQ:
                raise bad(f"{what}: a range must be integers 1 <= lo <= hi")
            if lo <= prev:
                raise bad(f"{what}: ranges must be sorted and disjoint")
            prev = hi
            out.append((lo, hi))
        return out

    def encode(self, v: list[Range]) -> object:
        return [[lo, hi] for lo, hi in v]


class Items(Codec):
    """[[store, key, delta]...], bounded in allocation and in distinct stores."""

    def decode(self, v: object, what: str) -> list[Item]:
        out: list[Item] = []
        for it in check_list(v, what):
            if type(it) is not list or len(it) != 3:
                raise bad(f"{what}: an item must be [store, key, delta]")
            out.append((check_store(it[0]), check_key(it[1]), check_delta(it[2])))
        check_alloc([d for _, _, d in out], what)
        stores = len({s for s, _, _ in out})
        if stores > MAX_MESSAGE_STORES:
            raise bad(f"{what}: {stores} stores in one message, more than {MAX_MESSAGE_STORES}")
        return out

    def encode(self, v: Sequence[Item]) -> object:
        return [[s, k, encode_delta(d)] for s, k, d in v]


class KeyStates(Codec):
    """[[key, delta]...] of one store."""

    def decode(self, v: object, what: str) -> list[tuple[str, Delta]]:
        out: list[tuple[str, Delta]] = []
        for row in check_list(v, what):
            if type(row) is not list or len(row) != 2:
                raise bad(f"{what}: a state must be [key, delta]")
            out.append((check_key(row[0]), check_delta(row[1])))
        check_alloc([d for _, d in out], what)
        return out

    def encode(self, v: Sequence[tuple[str, Delta]]) -> object:
        return [[k, encode_delta(d)] for k, d in v]


class Keys(Codec):
    plain = True

    def decode(self, v: object, what: str) -> list[str]:
        return [check_key(k) for k in check_list(v, what)]


class Addresses(Codec):
    """[address...], at most MAX_ASK."""

    plain = True

    def decode(self, v: object, what: str) -> list[str]:
        return [check_str(a, what, 1) for a in check_list(v, what, MAX_ASK)]


class Proofs(Codec):
    """Certificates in wire form (signatures are checked later, crdt/proofs.py)."""

    def decode(self, v: object, what: str) -> list[Certificate]:
        if v is None:
            return []
        return [Certificate.from_wire(c) for c in check_list(v, what, MAX_PROOFS)]

    def encode(self, v: Sequence[Certificate]) -> object:
        return [c.to_wire() for c in v]


class Members(Codec):
    """[[address, role, incarnation, state]...]."""

    def decode(self, v: object, what: str) -> list[MemberRow]:
        out: list[MemberRow] = []
        for row in check_list(v, "members", MAX_MEMBER_ROWS):
            if type(row) is not list or len(row) != 4:
                raise bad("members: a row must be [address, role, incarnation, state]")
            addr, role, inc, state = row
            check_str(addr, "member address", 1)
            if role not in ROLES:
                raise bad(f"members: unknown role {role!r}")
            if type(inc) is not int or not 0 <= inc <= MAX_SEQ:
                raise bad("members: incarnation must be a non-negative integer")
            if state not in STATES:
                raise bad(f"members: unknown state {state!r}")
            out.append((addr, role, inc, state))
        return out

    def encode(self, v: list[MemberRow]) -> object:
        return [[a, r, i, s] for a, r, i, s in v]


@dataclass(frozen=True, slots=True)
class Indices(Codec):
    """Integers in [0, hi): Merkle node or leaf indices."""

    plain = True

    hi: int

    def decode(self, v: object, what: str) -> list[int]:
        out = []
        for i in check_list(v, what):
            if type(i) is not int or not 0 <= i < self.hi:
                raise bad(f"{what}: an index must be an integer in [0, {self.hi})")
            out.append(i)
        return out


class Roots(Codec):
    """{store: digest}."""

    def decode(self, v: object, what: str) -> dict[str, int]:
        if type(v) is not dict or len(v) > MAX_ITEMS:
            raise bad(f"{what} must be a map of store -> digest")
        return {check_store(k): check_digest(d) for k, d in v.items()}

    def encode(self, v: dict[str, int]) -> object:
        return {s: digest_bytes(d) for s, d in v.items()}


class Nodes(Codec):
    """[[index, 16 child digests as one 256-byte string]...]."""

    def decode(self, v: object, what: str) -> list[tuple[int, list[int]]]:
        nodes: list[tuple[int, list[int]]] = []
        top = FANOUT ** (DEPTH - 1)
        for row in check_list(v, what):
            if type(row) is not list or len(row) != 2:
                raise bad(f"{what}: a node must be [index, children]")
            idx, kids = row
            if type(idx) is not int or not 0 <= idx < top:
                raise bad(f"{what}: bad node index")
            if type(kids) is not bytes or len(kids) != FANOUT * DIGEST_BYTES:
                raise bad(f"{what}: children must be 16 digests of 16 bytes")
            step = DIGEST_BYTES
            nodes.append(
                (
                    idx,
                    [int.from_bytes(kids[i : i + step], "big") for i in range(0, len(kids), step)],
                )
            )
        return nodes

    def encode(self, v: list[tuple[int, list[int]]]) -> object:
        return [[i, b"".join(digest_bytes(c) for c in kids)] for i, kids in v]


class LeafEntries(Codec):
    """[[key, digest, reset, seq]...] with 1 <= reset <= seq."""

    def decode(self, v: object, what: str) -> list[LeafEntry]:
        entries: list[LeafEntry] = []
        for row in check_list(v, what, 4 * MAX_ITEMS):
            if type(row) is not list or len(row) != 4:
                raise bad(f"{what}: an entry must be [key, digest, reset, seq]")
            reset, seq = row[2], row[3]
            if type(reset) is not int or type(seq) is not int or not 1 <= reset <= seq <= MAX_SEQ:
                raise bad(f"{what}: reset and seq must be integers 1 <= reset <= seq")
            entries.append((check_key(row[0]), check_digest(row[1]), reset, seq))
        return entries

    def encode(self, v: list[LeafEntry]) -> object:
        return [[k, digest_bytes(d), r, q] for k, d, r, q in v]


SEQ = Int()
BOOL = Bool()
ROLE = Role()
STORE = Store()
DIGEST = Digest()
RANGES = Ranges()
ITEMS = Items()
KEY_STATES = KeyStates()
KEYS = Keys()
PROOFS = Proofs()
MEMBERS = Members()
ADDRESSES = Addresses()
ROOTS = Roots()
NODES = Nodes()
LEAF_ENTRIES = LeafEntries()


class _Optional:
    """Marker: the field may be absent on the wire (see the module docstring, rule 2)."""


OPTIONAL = _Optional()


@dataclass(frozen=True, slots=True)
class When:
    """Marker: the field is on the wire only when field `other` is truthy (rule 2)."""

    other: str


# --- the generic encoder and decoder ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One field of a message type, as `message()` read it from the dataclass."""

    name: str
    what: str  # "PUSH: covers", for errors
    codec: Codec
    optional: bool
    when: int  # index of the field this one depends on (When), -1: none
    absent: Callable[[], Any]  # the value of a field absent on the wire


class WireMessage:
    """A gossip message type: subclasses are dataclasses registered with `@message(tag)`."""

    __slots__ = ()
    TAG: ClassVar[MsgType]
    FIELDS: ClassVar[tuple[_Field, ...]] = ()

    if TYPE_CHECKING:  # the dataclass's own __init__, field by field in FIELDS order

        def __init__(self, *fields: Any) -> None: ...

    def check(self) -> None:
        """Rules between fields, run once every field is decoded (override where needed)."""

    def to_wire(self) -> Message:
        m: Message = {"t": int(self.TAG)}
        fs = self.FIELDS
        for f in fs:
            v = getattr(self, f.name)
            if f.when >= 0:
                if not getattr(self, fs[f.when].name):
                    continue
            elif f.optional and v == f.absent():
                continue
            codec = f.codec
            m[f.name] = v if codec.plain else codec.encode(v)
        return m

    @classmethod
    def from_wire(cls, m: Message) -> Self:
        vals: list[Any] = []
        for f in cls.FIELDS:
            if f.when >= 0 and not vals[f.when]:
                v = f.absent()
            elif f.name in m:
                v = f.codec.decode(m[f.name], f.what)
            elif f.optional:
                v = f.absent()
            else:
                raise bad(f"{cls.TAG.name}: missing field {f.name!r}")
            vals.append(v)
        msg = cls(*vals)
        msg.check()
        return msg


W = TypeVar("W", bound=WireMessage)


def _same(v: object) -> object:
    return v


def message(tag: MsgType) -> Callable[[type[W]], type[W]]:
    """Make a dataclass the message type `tag`, reading its fields' codecs and markers."""

    def register(cls: type[W]) -> type[W]:
        if not is_dataclass(cls):
            raise AssertionError(f"{cls.__name__} must be a dataclass")
        hints = get_type_hints(cls, include_extras=True)
        names = [f.name for f in fields(cls)]
        out = []
        for f in fields(cls):
            hint = hints[f.name]
            if get_origin(hint) is not Annotated:
                raise AssertionError(f"{cls.__name__}.{f.name} names no codec")
            meta = get_args(hint)[1:]
            codec = next(x for x in meta if isinstance(x, Codec))
            when = next((names.index(x.other) for x in meta if isinstance(x, When)), -1)
            absent = f.default_factory
            if absent is MISSING:
                absent = partial(_same, f.default)
            what = f"{tag.name}: {f.name}"
            out.append(_Field(f.name, what, codec, OPTIONAL in meta, when, absent))
        cls.TAG = tag
        cls.FIELDS = tuple(out)
        return cls

    return register
