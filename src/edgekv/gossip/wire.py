"""Wire format: message types, length-prefixed CBOR frames, and the connection handshake.

Sans-IO (the h11 pattern): nothing here touches a socket or a clock.  Drivers in `edgekv.node`
feed bytes in and write the bytes this module returns.

Theory of operation
-------------------
1. A message is a plain dict whose key ``"t"`` is an int `MsgType` (an `IntEnum` member is fine
   on the way out; receivers always get plain ints, strs, lists and dicts).  Every other key is the
   sender's business.  Values are CBOR-native plain data: None, bool, int (64-bit), float, str,
   bytes, lists, and maps whose keys are str or bytes (the top-level map's keys are str).
   Hash-randomised key types only, so a hostile map cannot force quadratic dict inserts.
2. A frame is a 4-byte big-endian body length followed by exactly one CBOR item.  The length is
   checked against the frame limit *before* any of the body is buffered.
3. `encode_frame` rejects what the receiver would reject, raising `LocalProtocolError`: a bug on
   our side is never sent to a peer.  `FrameDecoder` raises `RemoteProtocolError` and nothing else,
   whatever bytes arrive: CBOR tags, simple values, undefined, non-str keys, trailing bytes in a
   frame, unknown message types, nesting deeper than `MAX_DEPTH` are all rejected.  After an error
   the decoder stays failed; the driver closes that one connection.
4. `MsgType` is append-only: a value is never reused or renumbered.  `PROTOCOL_VERSIONS` is the
   range this build speaks; the handshake picks the highest version both sides speak.
5. The handshake (`Handshake`) runs before any other frame: HELLO -> HELLO_ACK -> AUTH.  Each side
   proves knowledge of the cluster key with an HMAC over both nonces, so neither a replayed
   transcript nor a reflected MAC authenticates.  A keyed node never accepts a keyless peer.
6. A shared cluster key proves membership, not identity: any member could claim the origin's
   address.  So a claim can be confirmed by dialling the claimed address: HELLO may carry
   `confirm` (the transcript, both nonces, of another connection), and the responder answers
   `confirmed` in HELLO_ACK: whether it initiated that connection (`Handshake.transcript`).
   Only the process at the address the confirmer dialled can say yes.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn

import cbor2

from edgekv.crdt.codec import NO_TAGS, refuse_tag
from edgekv.errors import LocalProtocolError, RemoteProtocolError, Unauthorized

__all__ = [
    "HEADER_SIZE",
    "MAX_DEPTH",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSIONS",
    "FrameDecoder",
    "Handshake",
    "Message",
    "MsgType",
    "PeerIdentity",
    "decode_body",
    "encode_frame",
    "type_name",
]

Message = dict[str, Any]

MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_DEPTH = 64
HEADER_SIZE = 4
PROTOCOL_VERSIONS = (1, 1)

_HEADER = struct.Struct(">I")
_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1


class MsgType(IntEnum):
    """Every message type on the wire.  Append-only: never renumber or reuse a value."""

    HELLO = 1
    HELLO_ACK = 2
    AUTH = 3
    BYE = 4
    PUSH = 10
    IHAVE = 11
    GRAFT = 12
    PRUNE = 13
    SYNC_REQ = 20
    SYNC_DATA = 21
    SNAP_OFFER = 22
    SNAP_REQ = 23
    SNAP_DATA = 24
    AE_ROOT = 30
    AE_STORES = 31
    AE_NODES_REQ = 32
    AE_NODES = 33
    AE_LEAF_REQ = 34
    AE_LEAF = 35
    AE_STATES = 36
    AE_EQUAL = 37
    PING = 40
    ACK = 41
    PING_REQ = 42
    MEMBERS = 43
    REQUEST = 50
    RESPONSE = 51
    ERROR = 52


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)
_NAMES = {int(t): t.name for t in MsgType}  # a dict lookup, not an Enum call, per message


def type_name(t: object) -> str:
    """The MsgType name of `t` (for stats and logs), or its repr if unknown."""
    if type(t) is int:
        name = _NAMES.get(t)
        if name is not None:
            return name
    return repr(t)


# --- validation ------------------------------------------------------------------------------


_LEAVES = frozenset({str, bytes, float, bool, type(None)})  # exact types that need no check
_SCALARS = _LEAVES | {int}  # the same when integers need no range check
_KEYS = frozenset({str, bytes})
_TEXT_OR_BYTES = (str, bytes)


def _check_tree(msg: object, error: type[Exception], *, check_ints: bool = True) -> Message:
    """`msg` itself; raise `error` unless it is a message made only of plain wire values.

    `check_ints=False` skips the 64-bit range check: a CBOR decoder cannot produce an integer
    outside it (bignums are tags, which `decode_body` refuses).
    """
    if type(msg) is not dict:
        raise error(f"message must be a map, not {type(msg).__name__}")
    t = msg.get("t")
    if not isinstance(t, int) or type(t) is bool or t not in _KNOWN_TYPES:
        raise error(f"message has no valid type 't': {t!r}")
    for k in msg:
        if not isinstance(k, str):
            raise error(f"message keys must be str, got {type(k).__name__}")
    _check_container(msg, 0, error, check_ints)
    return msg


def _check_container(value: Any, depth: int, error: type[Exception], check_ints: bool) -> None:
    """Check one list, tuple or dict at `depth` and (recursively) what it holds.

    Recursion is bounded: a container deeper than `MAX_DEPTH` raises before its items are seen
    (which also stops on any cycle).  Exact leaf types are tested first: the common case costs a
    set lookup per value.
    """
    if depth >= MAX_DEPTH:
        raise error("message nested too deeply")
    leaves = _LEAVES
    if not check_ints:  # fast path, all in C: a container of plain scalars only
        if type(value) is dict:
            if _KEYS.issuperset(map(type, value)) and _SCALARS.issuperset(
                map(type, value.values())
            ):
                return
        elif _SCALARS.issuperset(map(type, value)):
            return
    elif type(value) is list and all(issubclass(k, _TEXT_OR_BYTES) for k in set(map(type, value))):
        return  # a column of strings or bytes (subclasses too: a snapshot's registers), in C
    if type(value) is dict:
        for k, v in value.items():
            kind = type(k)
            if kind is not str and kind is not bytes and not isinstance(k, (str, bytes)):
                raise error(f"map keys must be str or bytes, got {kind.__name__}")
            if type(v) not in leaves:
                _check_value(v, depth + 1, error, check_ints)
    else:
        for v in value:
            kind = type(v)
            if kind is list:
                _check_container(v, depth + 1, error, check_ints)
            elif kind not in leaves:
                _check_value(v, depth + 1, error, check_ints)


def _check_value(value: Any, depth: int, error: type[Exception], check_ints: bool) -> None:
    """Check one value that is not of an exact leaf type (see `_check_container`)."""
    kind = type(value)
    if kind is int:
        if check_ints and not _INT_MIN <= value <= _INT_MAX:
            raise error("integer out of the 64-bit CBOR range")
    elif kind is list or kind is dict or kind is tuple:
        _check_container(value, depth, error, check_ints)
    elif isinstance(value, int):  # IntEnum and friends: sent as a plain int
        _check_value(int(value), depth, error, check_ints)
    elif not isinstance(value, (str, bytes, float)):  # StrEnum and friends pass
        raise error(f"type {kind.__name__} cannot be sent on the wire")


class Checked(dict[str, Any]):
    """A message its builder made only of plain wire values (this node's own states, checked
    when they entered it): `encode_frame` skips the walk over it.  For a snapshot chunk (two
    columns of thousands of keys and registers) that walk was 8% of the origin's CPU while it
    served one; every other message is walked."""

    __slots__ = ()


def encode_frame(msg: Message, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Encode one message as a frame (length prefix + CBOR body).

    Raises `LocalProtocolError` for anything the receiving `FrameDecoder` would reject (a
    `Checked` message is not walked: its builder vouches for its values).
    """
    if msg.__class__ is not Checked:
        _check_tree(msg, LocalProtocolError)
    try:
        body = cbor2.dumps(msg)
    except Exception as exc:  # pragma: no cover - _check_tree admits only encodable values
        raise LocalProtocolError(f"cannot encode message: {exc}") from exc
    if len(body) > max_frame_size:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the {max_frame_size} limit")
    return _HEADER.pack(len(body)) + body


def _cbor_decoder(fp: io.BytesIO) -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(
        fp,
        tag_hook=refuse_tag,
        semantic_decoders=NO_TAGS,
        max_depth=MAX_DEPTH + 2,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


def decode_body(body: bytes, decoder: cbor2.CBORDecoder | None = None) -> Message:
    """Decode one frame body; raises `RemoteProtocolError` (and only that) if it is not valid.

    `decoder`, if given, is one made by `_cbor_decoder` and reused (a connection's decoder
    decodes each of its frames: half the cost of a new one per frame).  Reuse is safe because
    every tag is refused, so a decoder keeps no state from one message to the next (shared
    values and string references are tags); after an error its owner discards it.
    """
    fp = io.BytesIO(body)
    try:
        if decoder is None:
            decoder = _cbor_decoder(fp)
        else:
            decoder.fp = fp
        msg = decoder.decode()
        end = fp.tell()
    except RecursionError as exc:
        raise RemoteProtocolError("CBOR nested too deeply") from exc
    except Exception as exc:  # cbor2 raises many types on hostile input; all mean "bad frame"
        raise RemoteProtocolError(f"undecodable CBOR: {exc}") from exc
    if end != len(body):
        raise RemoteProtocolError(f"{len(body) - end} trailing bytes in frame")
    return _check_tree(msg, RemoteProtocolError, check_ints=False)


class FrameDecoder:
    """Incremental frame decoder.  Bytes in (any chunking), messages out; O(n) over the stream.

    `feed(data)` returns every complete message.  Drivers that must change the frame limit
    between messages (a small limit until the handshake is done) use `receive_data` and
    `next_frame` instead, which decode one frame at a time.  `decode` replaces `decode_body`
    for a reader that checks its messages itself (OriginClient's answers); it must raise
    `RemoteProtocolError` for a bad body.
    """

    def __init__(
        self,
        max_frame_size: int = MAX_FRAME_SIZE,
        decode: Callable[[bytes], Message] | None = None,
    ) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._failed: str | None = None
        self._cbor = _cbor_decoder(io.BytesIO(b""))  # reused for every frame (decode_body)
        self._decode = decode

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages (non-zero at EOF = truncated frame)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        """Buffer `data` and return every message now complete."""
        self.receive_data(data)
        out: list[Message] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame[0])
        return out

    def receive_data(self, data: bytes) -> None:
        """Buffer `data` without decoding it."""
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        self._buf += data

    def next_frame(self) -> tuple[Message, int] | None:
        """Decode the next complete frame: (message, frame size in bytes), or None if incomplete."""
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if length > self.max_frame_size:
            self._fail(f"frame length {length} exceeds the {self.max_frame_size} limit")
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        body = bytes(memoryview(buf)[pos + HEADER_SIZE : end])  # one copy, not two
        self._pos = end
        if end > 65536 and end * 2 > len(buf):  # amortised compaction keeps the total O(n)
            del buf[:end]
            self._pos = 0
        elif end == len(buf):
            buf.clear()
            self._pos = 0
        try:
            decode = self._decode
            msg = decode_body(body, self._cbor) if decode is None else decode(body)
            return msg, HEADER_SIZE + length
        except RemoteProtocolError as exc:
            self._fail(str(exc))

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        self._buf = bytearray()
        self._pos = 0
        raise RemoteProtocolError(reason)


# --- handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a connection, as it advertised itself in the handshake."""

    node_id: str
    role: str
    address: str
    version: int


_MIN_NONCE, _MAX_NONCE = 8, 64


def _mac(key: bytes | None, label: bytes, a: bytes, b: bytes, cluster: str) -> bytes:
    if key is None:
        return b""
    return hmac.new(key, label + a + b + cluster.encode(), hashlib.sha256).digest()


def _field(msg: Message, name: str, kind: type[Any]) -> Any:
    value = msg.get(name)
    if type(value) is not kind:
        raise RemoteProtocolError(f"handshake field {name!r} missing or not {kind.__name__}")
    return value


def _nonce(msg: Message) -> bytes:
    nonce: bytes = _field(msg, "nonce", bytes)
    if not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
        raise RemoteProtocolError("handshake nonce has a bad length")
    return nonce


class Handshake:
    """Sans-IO handshake state machine for one connection (see rule 5 of the module docstring).

    Initiator: `start()` -> send HELLO; `receive(HELLO_ACK)` -> send AUTH; done.
    Responder: `receive(HELLO)` -> send HELLO_ACK; `receive(AUTH)` -> []; done.
    Violations raise `Unauthorized` (bad MAC, key mismatch) or `RemoteProtocolError` (anything
    else); misuse by the caller raises `LocalProtocolError`.  After an error the object is dead.
    """

    def __init__(
        self,
        cluster_id: str,
        node_id: str,
        role: str,
        address: str,
        key: bytes | None,
        initiator: bool,
        nonce: bytes,
        *,
        confirm: bytes | None = None,
        confirmer: Callable[[bytes], bool] | None = None,
    ) -> None:
        """`confirm` (initiator): ask the responder whether it initiated the connection with
        this transcript; the answer is `confirmed`.  `confirmer` (responder): answers that."""
        if not isinstance(nonce, bytes) or not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
            raise LocalProtocolError(f"nonce must be {_MIN_NONCE}..{_MAX_NONCE} bytes")
        if key is not None and not key:
            raise LocalProtocolError("an empty key is not a key; use None for no authentication")
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.role = role
        self.address = address
        self.initiator = initiator
        self._key = key
        self._nonce = nonce
        self._peer_nonce = b""
        self._state = "start" if initiator else "wait_hello"
        self._peer: PeerIdentity | None = None
        self._confirm = confirm
        self._confirmer = confirmer
        self.confirmed: bool | None = None  # initiator: the answer to `confirm`
        self.asked_to_confirm = False  # responder: the peer only came to ask (rule 6)

    @property
    def transcript(self) -> bytes:
        """Both nonces, the initiator's first: what `confirm` names this connection by."""
        if not self.done:
            raise LocalProtocolError("handshake not finished")
        if self.initiator:
            return self._nonce + self._peer_nonce
        return self._peer_nonce + self._nonce

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def peer(self) -> PeerIdentity:
        if self._peer is None or not self.done:
            raise LocalProtocolError("handshake not finished")
        return self._peer

    def start(self) -> list[Message]:
        """The initiator's first message (HELLO)."""
        if self._state != "start":
            raise LocalProtocolError("start() is for an initiator that has not started")
        self._state = "wait_ack"
        vmin, vmax = PROTOCOL_VERSIONS
        hello: Message = {
            "t": int(MsgType.HELLO),
            "cluster": self.cluster_id,
            "node": self.node_id,
            "role": self.role,
            "addr": self.address,
            "vmin": vmin,
            "vmax": vmax,
            "nonce": self._nonce,
        }
        if self._confirm is not None:
            hello["confirm"] = self._confirm
        return [hello]

    def receive(self, msg: Message) -> list[Message]:
        """Process one message from the peer; return the replies to send."""
        state = self._state
        if state in ("done", "start", "failed"):
            raise LocalProtocolError(f"handshake cannot receive in state {state!r}")
        try:
            expected = {"wait_hello": MsgType.HELLO, "wait_ack": MsgType.HELLO_ACK}
            want = expected.get(state, MsgType.AUTH)
            if msg.get("t") != want:
                raise RemoteProtocolError(f"expected {want.name}, got {type_name(msg.get('t'))}")
            if state == "wait_hello":
                return self._on_hello(msg)
            if state == "wait_ack":
                return self._on_ack(msg)
            return self._on_auth(msg)
        except BaseException:
            self._state = "failed"
            raise

    def _check_mac(self, got: bytes, want: bytes) -> None:
        if self._key is None:
            if got:
                raise Unauthorized("peer authenticates with a key but this node has none")
            return
        if not got:
            raise Unauthorized("peer did not authenticate")
        if not hmac.compare_digest(got, want):
            raise Unauthorized("bad handshake MAC (wrong cluster key)")

    def _on_hello(self, msg: Message) -> list[Message]:
        cluster = _field(msg, "cluster", str)
        if cluster != self.cluster_id:
            raise Unauthorized(f"peer is in cluster {cluster!r}, not {self.cluster_id!r}")
        vmin, vmax = _field(msg, "vmin", int), _field(msg, "vmax", int)
        low, high = max(vmin, PROTOCOL_VERSIONS[0]), min(vmax, PROTOCOL_VERSIONS[1])
        if low > high:
            raise RemoteProtocolError(
                f"no common protocol version: peer {vmin}..{vmax}, us {PROTOCOL_VERSIONS}"
            )
        self._peer_nonce = _nonce(msg)
        self._peer = PeerIdentity(
            _field(msg, "node", str), _field(msg, "role", str), _field(msg, "addr", str), high
        )
        self._state = "wait_auth"
        mac = _mac(self._key, b"ack", self._peer_nonce, self._nonce, self.cluster_id)
        ack: Message = {
            "t": int(MsgType.HELLO_ACK),
            "cluster": self.cluster_id,
            "node": self.node_id,
            "role": self.role,
            "addr": self.address,
            "version": high,
            "nonce": self._nonce,
            "mac": mac,
        }
        if "confirm" in msg:
            asked = msg["confirm"]
            if type(asked) is not bytes or len(asked) > 2 * _MAX_NONCE:
                raise RemoteProtocolError("handshake field 'confirm' is not a transcript")
            self.asked_to_confirm = True
            ack["confirmed"] = self._confirmer is not None and self._confirmer(asked)
        return [ack]

    def _on_ack(self, msg: Message) -> list[Message]:
        cluster = _field(msg, "cluster", str)
        if cluster != self.cluster_id:
            raise Unauthorized(f"peer is in cluster {cluster!r}, not {self.cluster_id!r}")
        version = _field(msg, "version", int)
        if not PROTOCOL_VERSIONS[0] <= version <= PROTOCOL_VERSIONS[1]:
            raise RemoteProtocolError(f"peer chose protocol version {version} we do not speak")
        peer_nonce = _nonce(msg)
        info = PeerIdentity(
            _field(msg, "node", str), _field(msg, "role", str), _field(msg, "addr", str), version
        )
        want = _mac(self._key, b"ack", self._nonce, peer_nonce, self.cluster_id)
        self._check_mac(_field(msg, "mac", bytes), want)
        if self._confirm is not None:
            self.confirmed = msg.get("confirmed") is True
        self._peer, self._peer_nonce = info, peer_nonce
        self._state = "done"
        mac = _mac(self._key, b"auth", peer_nonce, self._nonce, self.cluster_id)
        return [{"t": int(MsgType.AUTH), "mac": mac}]

    def _on_auth(self, msg: Message) -> list[Message]:
        want = _mac(self._key, b"auth", self._nonce, self._peer_nonce, self.cluster_id)
        self._check_mac(_field(msg, "mac", bytes), want)
        self._state = "done"
        return []
