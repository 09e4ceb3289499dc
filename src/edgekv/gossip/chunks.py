"""Cutting states into message-sized chunks, each with the certificates that prove it.

Every sender of states (PUSH in dissemination.py, SYNC_DATA in catchup.py, AE_STATES in
antientropy.py) bounds what one message carries the same way: at most `max_message_bytes` as
`delta_size` estimates it, at most `MAX_MESSAGE_STORES` stores, and where asked, at most so many
bytes a receiver may allocate for Bloom filters.  With origin-signed writes, each chunk carries
the certificates of its states (`ProofStore.add_material`); a state that cannot be proven here
is never sent (crdt/proofs.py rule 3).
"""

from __future__ import annotations

from ..crdt.proofs import Certificate, ProofStore
from ..crdt.register import Register
from ..crdt.state import Delta
from ..crdt.zset import ZSet
from .fields import MAX_MESSAGE_STORES, Item, alloc_size


def delta_size(d: Delta) -> int:
    """A cheap upper estimate of a delta's encoded size, for chunking."""
    if isinstance(d, Register):
        return 32 + (len(d.value) if d.value is not None else 0)
    if isinstance(d, ZSet):
        return 32 + d.wire_size()
    bits = getattr(d, "bits", None)
    if bits is not None:
        return 48 + len(bits)
    return 48 + 9 * len(getattr(d, "positions", ()))


class Chunker:
    """Collects (store, key, delta) items; `add` hands back each chunk it closes, `take` the
    last one.  `one_store`: the items are of one store (its name is not counted, nor capped);
    `max_alloc`: bound the Bloom allocation a chunk may cause at its receiver."""

    __slots__ = (
        "_alloc",
        "_certs",
        "_items",
        "_limit",
        "_max_alloc",
        "_one_store",
        "_proofs",
        "_size",
        "_stores",
    )

    def __init__(
        self,
        proofs: ProofStore | None,
        limit: int,
        *,
        one_store: bool = False,
        max_alloc: int | None = None,
    ) -> None:
        self._proofs = proofs
        self._limit = limit
        self._one_store = one_store
        self._max_alloc = max_alloc
        self._items: list[Item] = []
        self._certs: dict[bytes, Certificate] = {}
        self._size = 0
        self._alloc = 0
        self._stores: set[str] = set()

    def seed(self, items: list[Item], certs: dict[bytes, Certificate], size: int) -> None:
        """Start the first chunk with `items` (already sized and proven, with `certs`)."""
        self._items, self._certs, self._size = items, certs, size
        self._alloc = sum(alloc_size(d) for _, _, d in items)
        self._stores = {s for s, _, _ in items}

    def add(
        self, store: str, key: str, delta: Delta
    ) -> tuple[list[Item], list[Certificate]] | None:
        """Add one item; returns the chunk (items, certificates) it closed, if any."""
        n = delta_size(delta) + len(key)
        if not self._one_store:
            n += len(store)
        a = alloc_size(delta) if self._max_alloc is not None else 0
        closed = None
        if self._items and (
            self._size + n > self._limit
            or (self._max_alloc is not None and self._alloc + a > self._max_alloc)
            or (
                not self._one_store
                and store not in self._stores
                and len(self._stores) >= MAX_MESSAGE_STORES
            )
        ):
            closed = self.take()
        if self._proofs is not None:
            extra = self._proofs.add_material(self._certs, delta)
            if extra < 0:
                return closed  # unprovable here: never sent
            n += extra
        if not self._one_store:
            self._stores.add(store)
        self._items.append((store, key, delta))
        self._size += n
        self._alloc += a
        return closed

    def take(self) -> tuple[list[Item], list[Certificate]]:
        """The chunk collected so far (possibly empty); the next one starts empty."""
        out = self._items, list(self._certs.values())
        self._items, self._certs = [], {}
        self._size = self._alloc = 0
        self._stores = set()
        return out

    @property
    def empty(self) -> bool:
        return not self._items
