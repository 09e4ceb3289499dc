"""The write executor: turns validated commands into deltas with fresh seqs.  Pure, no I/O.

Theory of operation
1. The group committer hands every command of one commit group, in arrival order, to
   `Planner.execute`, with the group's `written_at`.  Commands see the effects of the commands
   planned before them in the same group (through an overlay on top of the origin's replica),
   although nothing is committed yet.  Earlier groups may be written but not yet durable, so
   not yet in the replica: `pending(store, key)` returns their newest state of a key, and the
   planner looks there after its own overlay and before the replica.
2. A command is all or nothing: it plans each op against a private copy of the overlay and
   takes seqs from a private counter; only when every op succeeded does it publish its states
   into the group overlay and advance the group's seq counter.  A failing command (unknown
   store, wrong kind, `if_version` mismatch) takes no seq and changes nothing.
3. An op whose plan is None (delete of a missing key, zrem of absent members) takes no seq, so
   the seqs of a group are contiguous and every seq handed out is in the log.
4. `if_version` is a compare-and-set on the key's current version: 0 means "the key must be
   absent (or dead)", n > 0 means "the key's state must be at seq n".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..crdt import META, BloomDelta, Delta, Op, Register, Replica, State, join, plan
from ..crdt.bloom import Bloom
from ..crdt.proofs import Atom, atoms_of, bloom_atom
from ..crdt.state import as_state, is_dead
from ..errors import StoreExists, StoreNotFound, VersionMismatch


@dataclass(frozen=True, slots=True)
class StoreCommand:
    """Create or drop a store (a write to the META store)."""

    action: str  # "create" | "drop"
    store: str
    rid: bytes | None = None  # the client's request id: applied at most once (sequencer rule 7)


@dataclass(frozen=True, slots=True)
class BatchCommand:
    """One or more ops on one store, atomic; each op may carry an `if_version` condition."""

    store: str
    ops: tuple[tuple[Op, int | None], ...]
    rid: bytes | None = None  # the client's request id: applied at most once (sequencer rule 7)


Command = StoreCommand | BatchCommand
Item = tuple[str, str, Delta]
Pending = Callable[[str, str], State | None]


def _no_pending(_store: str, _key: str) -> State | None:
    return None


@dataclass(slots=True)
class Planned:
    """The outcome of one command: its deltas and the seq of each op (None: no-op)."""

    items: list[Item] = field(default_factory=list)
    seqs: list[int | None] = field(default_factory=list)

    @property
    def first(self) -> int:
        return min((s for s in self.seqs if s is not None), default=0)

    @property
    def last(self) -> int:
        return max((s for s in self.seqs if s is not None), default=0)


class Planner:
    """Plans the commands of one commit group on top of `replica` (see theory of operation)."""

    def __init__(
        self, replica: Replica, next_seq: int, written_at: int, pending: Pending = _no_pending
    ) -> None:
        self.replica = replica
        self.next_seq = next_seq
        self.written_at = written_at
        self.pending = pending
        self.states: dict[tuple[str, str], State] = {}  # this group's newest state per key
        self.items: list[Item] = []
        self.bloom_atoms: dict[int, Atom] = {}  # seq -> atom of the filter a bf_add made

    # -- current state, seen through the overlay ---------------------------------------------

    def _current(self, overlay: dict[tuple[str, str], State], store: str, key: str) -> State | None:
        st = self._unapplied(overlay, store, key)
        if st is None:
            st = self.replica.state(store, key)
        if st is not None and store != META:
            meta = self._unapplied(overlay, META, store)
            if meta is not None and st.reset < meta.seq:
                return None  # the store was dropped or recreated since: the key is dead
        return st

    def _unapplied(
        self, overlay: dict[tuple[str, str], State], store: str, key: str
    ) -> State | None:
        """The newest state of `key` not yet in the replica: this command's, this group's, or
        an earlier group's still being written (rule 1); None when there is none."""
        k = (store, key)
        st = overlay.get(k)
        if st is None:
            st = self.states.get(k)
            if st is None:
                st = self.pending(store, key)
        return st

    def _store_live(self, overlay: dict[tuple[str, str], State], store: str) -> bool:
        meta = self._current(overlay, META, store)
        return isinstance(meta, Register) and meta.value is not None

    # -- commands ------------------------------------------------------------------------------

    def execute(self, cmd: Command) -> Planned:
        """Plan `cmd`; raise an EdgeKVError (and change nothing) if it cannot be applied."""
        overlay: dict[tuple[str, str], State] = {}
        blooms: dict[int, Atom] = {}
        out = Planned()
        seq = self.next_seq
        if isinstance(cmd, StoreCommand):
            live = self._store_live(overlay, cmd.store)
            if cmd.action == "create":
                if live:
                    raise StoreExists(f"store {cmd.store!r} already exists")
                delta = Register(seq, self.written_at, b"", None)
            else:
                if not live:
                    raise StoreNotFound(f"no such store: {cmd.store!r}")
                delta = Register(seq, self.written_at, None, None)
            overlay[(META, cmd.store)] = delta
            out.items.append((META, cmd.store, delta))
            out.seqs.append(seq)
            seq += 1
        else:
            store = cmd.store
            if not self._store_live(overlay, store):
                raise StoreNotFound(f"no such store: {store!r}")
            for op, if_version in cmd.ops:
                current = self._current(overlay, store, op.key)
                if if_version is not None:
                    _check_version(op.key, current, if_version, self.written_at)
                d = plan(op, current, seq, self.written_at)
                if d is None:
                    out.seqs.append(None)
                    continue
                new = overlay[(store, op.key)] = (
                    as_state(d) if current is None or d.reset > current.reset else _join(current, d)
                )
                if isinstance(new, Bloom):  # certified whole (crdt/proofs.py rule 1)
                    blooms[seq] = bloom_atom(store, op.key, new)
                out.items.append((store, op.key, d))
                out.seqs.append(seq)
                seq += 1
        # success: publish into the group
        self.states.update(overlay)
        self.bloom_atoms.update(blooms)
        self.items.extend(out.items)
        self.next_seq = seq
        return out


def group_atoms(planner: Planner) -> list[Atom]:
    """The atoms of everything `planner` planned (what the group's certificates sign)."""
    out: list[Atom] = []
    blooms = planner.bloom_atoms
    for store, key, d in planner.items:
        if isinstance(d, BloomDelta | Bloom):
            out.append(blooms[d.seq])
        else:
            out.extend(atoms_of(store, key, d))
    return out


def _join(current: State, delta: Delta) -> State:
    """The state after `delta` (same reset) on top of `current`; `current` is left intact."""
    new = join(current, delta)
    return new.to_state() if isinstance(new, BloomDelta) else new


def _check_version(key: str, current: State | None, if_version: int, now_ms: int) -> None:
    have = 0 if current is None or is_dead(current, now_ms) else current.seq
    if have != if_version:
        raise VersionMismatch(f"key {key!r} is at version {have}, not {if_version}")
