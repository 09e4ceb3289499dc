"""Origin-signed writes (crdt/proofs.py): atoms, certificates, and every receive path.

Property tests: any change to a signed atom, a certificate or a seq claim fails verification.
Path tests: a forged state sent by a peer on PUSH, SYNC_DATA or AE_STATES is rejected before
anything is applied, counted against that peer, never served, and the peer is cut off; the
honest writes keep flowing (Testnet in sim mode, trio virtual time).
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekv import testnet
from edgekv.crdt import Delta, Register, Replica, State
from edgekv.crdt.bloom import BloomDelta
from edgekv.crdt.proofs import (
    MAX_CERT_ATOMS,
    Certificate,
    ForgedState,
    ProofStore,
    Signer,
    atoms_of,
    bloom_atom,
    state_seqs,
    states_seqs,
)
from edgekv.crdt.zset import ZSet
from edgekv.gossip import GossipNode
from edgekv.gossip import messages as msgs
from edgekv.node.keys import generate_keypair, load_private_key, load_public_key

KEY = Ed25519PrivateKey.generate()
SIGNER = Signer(KEY)


def _signed(items: list[tuple[str, str, Any]]) -> list[Certificate]:
    atoms = [a for s, k, d in items for a in atoms_of(s, k, d)]
    return SIGNER.certify(atoms)


def _store() -> ProofStore:
    return ProofStore([KEY.public_key()])


def _none(_s: str, _k: str) -> None:
    return None


REG = ("flags", "greeting", Register(7, 1_000, b"hello", 5_000))


def test_genuine_states_verify_and_certs_are_kept() -> None:
    z = ZSet(8, {b"a": (8, 1.0), b"b": (9, None)}, 9, 1_001)
    items: list[tuple[str, str, Delta]] = [REG, ("flags", "rank", z)]
    certs = _signed(items)
    store = _store()
    assert store.verify(items, certs, _none) == items
    assert len(store) == 1 and store.material_for(items)[0].signature == certs[0].signature
    # a second receiver proves the same states with the material the first one sends
    other = _store()
    assert other.verify(items, store.material_for(items), _none) == items


mutations = st.sampled_from(
    [
        ("flags", "greeting", Register(7, 1_000, b"hellO", 5_000)),  # altered value
        ("flags", "greeting", Register(8, 1_000, b"hello", 5_000)),  # replay, higher seq
        ("flags", "greeting", Register(7, 1_001, b"hello", 5_000)),  # written_at
        ("flags", "greeting", Register(7, 1_000, b"hello", None)),  # expiry dropped
        ("flags", "greeting", Register(7, 1_000, None)),  # forged tombstone
        ("flags", "other", Register(7, 1_000, b"hello", 5_000)),  # another key
        ("flag", "greeting", Register(7, 1_000, b"hello", 5_000)),  # another store
        ("", "flags", Register(7, 1_000, None)),  # a store drop
    ]
)


@given(mutations)
def test_any_altered_atom_fails(item: tuple[str, str, Any]) -> None:
    certs = _signed([REG])
    with pytest.raises(ForgedState):
        _store().verify([item], certs, _none)


@settings(max_examples=60)
@given(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(1, 255))
def test_any_altered_certificate_fails(field: int, pos: int, xor: int) -> None:
    cert = _signed([REG, ("s", "k", Register(9, 1, b"x"))])[0]
    wire = cert.to_wire()
    if field in (1, 2):  # lo/hi: widen or move the seq claim
        wire[field] = max(0, wire[field] + (xor if pos % 2 else -xor))
        if wire[1] > wire[2]:
            wire[1], wire[2] = wire[2], wire[1]
        if wire[field] == cert.to_wire()[field]:
            wire[field] += 1
    else:
        raw = bytearray(wire[field])
        raw[pos % len(raw)] ^= xor
        wire[field] = bytes(raw)
    try:
        bad = Certificate.from_wire(wire)
    except Exception:
        return  # malformed: rejected before any check
    with pytest.raises(ForgedState):
        _store().check_signature(bad)


def test_unknown_key_and_signature_reuse_fail() -> None:
    stranger = Signer(Ed25519PrivateKey.generate())
    forged = stranger.certify(atoms_of(*REG))
    with pytest.raises(ForgedState, match="unknown key"):
        _store().verify([REG], forged, _none)
    good = _signed([REG])[0]
    store = _store()
    store.add([good])
    twin = Certificate(good.key_id, good.lo, good.hi + 1, good.entries, good.signature)
    with pytest.raises(ForgedState):
        store.check_signature(twin)


def test_zset_member_outside_reset_or_altered_fails() -> None:
    z = ZSet(8, {b"a": (8, 1.0)}, 8, 1_001)
    certs = _signed([("s", "z", z)])
    for bad in (
        ZSet(8, {b"a": (8, 2.0)}, 8, 1_001),  # score
        ZSet(8, {b"a": (8, None)}, 8, 1_001),  # removed
        ZSet(9, {b"a": (8, 1.0)}, 9, 1_001),  # member below the reset
    ):
        with pytest.raises(ForgedState):
            _store().verify([("s", "z", bad)], certs, _none)


def test_bloom_delta_verifies_on_its_predecessor_only() -> None:
    d1 = BloomDelta.for_items(1, 64, 3, [b"a"], 1, 10)
    s1 = d1.to_state()
    d2 = BloomDelta.for_items(1, 64, 3, [b"b"], 2, 11)
    s2 = s1.copy()
    s2.merge_same_reset(d2)
    certs = SIGNER.certify([bloom_atom("s", "b", s1), bloom_atom("s", "b", s2)])
    store = _store()
    assert store.verify([("s", "b", d1)], certs, _none) == [("s", "b", d1)]
    # d2 lands on s1: verified; without s1 it cannot be checked here: skipped, not an offence
    assert store.verify([("s", "b", d2)], certs, lambda s, k: s1) == [("s", "b", d2)]
    assert store.verify([("s", "b", d2)], certs, _none) == []
    assert store.verify([("s", "b", s2)], certs, _none) == [("s", "b", s2)]
    forged = BloomDelta.for_items(1, 64, 3, [b"zzz"], 2, 11)
    assert store.verify([("s", "b", forged)], certs, lambda s, k: s1) == []


def test_certify_splits_large_groups_and_sweep_drops_dead_certs() -> None:
    atoms = [(s, bytes(16)) for s in range(1, 2 * MAX_CERT_ATOMS + 2)]
    certs = SIGNER.certify(atoms)
    assert len(certs) == 3 and sum(len(c) for c in certs) == len(atoms)
    store = _store()
    store.add(certs)
    assert store.sweep([1]) == 2 and len(store) == 1
    assert store.sweep([1]) == 0 and store.atoms == MAX_CERT_ATOMS


def test_states_seqs_column_wise_equals_each_states_seqs() -> None:
    regs = [Register(s, 1, b"v") for s in (5, 3, 9)]
    assert list(states_seqs(regs)) == [5, 3, 9]
    assert list(states_seqs([])) == []
    mixed: list[State] = [regs[0], ZSet(8, {b"a": (8, 1.0), b"b": (9, None)}, 10, 1_001), regs[1]]
    assert list(states_seqs(mixed)) == [s for st in mixed for s in state_seqs(st)]
    assert sorted(states_seqs(mixed)) == [3, 5, 8, 9, 10]


def test_sweep_keeps_the_newest_certificate_per_live_seq_and_compacts_sparse_ones() -> None:
    """The column-wise sweep: per live seq the newest certificate holding it, sparse ones
    (at most half their entries live, a repeated seq counted per entry) signed again."""
    store = _store()
    store.signer = SIGNER
    old = SIGNER.certify([(s, bytes(16)) for s in range(1, 11)])[0]
    newer = SIGNER.certify([(s, bytes([1]) * 16) for s in (2, 3)])[0]
    # seq 12 twice (a sorted set's two members written by one write), 11, 13 and 14 dead
    dup = SIGNER.certify([(s, bytes([2]) * 16) for s in (11, 12, 12, 13, 14)])[0]
    store.add([old, newer, dup])
    live = [1, 2, 3, 4, 5, 6, 7, 8, 12]
    assert store.sweep(live) == 1  # `dup`, sparse: its live entries signed again
    kept = {(c.lo, c.hi, len(c)) for c in store}
    assert (old.lo, old.hi, 10) in kept and (newer.lo, newer.hi, 2) in kept
    compact = [c for c in store if c.signature not in (old.signature, newer.signature)]
    assert len(compact) == 1 and list(compact[0].seqs()) == [12, 12]
    assert store.sweep(live) == 0


def test_settle_spares_the_first_add_a_sweep() -> None:
    """What the origin's recovery just certified proves exactly the live states: the next
    add must not walk every live state (it did, on the event loop, at the first edge)."""
    for settle in (False, True):
        store = _store()
        walks: list[int] = []

        def live_seqs() -> Iterable[int]:
            walks.append(1)  # noqa: B023
            return range(1, 2 * MAX_CERT_ATOMS + 2)

        store.live_seqs = live_seqs
        store.add(SIGNER.certify([(s, bytes(16)) for s in range(1, 2 * MAX_CERT_ATOMS + 2)]))
        if settle:
            store.settle()
        store.add(SIGNER.certify([(2 * MAX_CERT_ATOMS + 2, bytes(16))]))
        assert walks == ([] if settle else [1])


def test_origin_defers_and_seals_many_groups_in_one_certificate() -> None:
    store = _store()
    store.signer = SIGNER
    groups = [[("s", f"k{i}", Register(i, 1, b"v"))] for i in range(1, 6)]
    for i, items in enumerate(groups, 1):
        store.defer([a for s, k, d in items for a in atoms_of(s, k, d)], i, i)
    assert len(store) == 0  # nothing signed until proofs are needed
    everything = [it for g in groups for it in g]
    certs = store.material_for(everything)
    assert len(certs) == 1 and (certs[0].lo, certs[0].hi) == (1, 5) and len(store) == 1
    assert _store().verify(everything, certs, _none) == everything


def test_keys_files_round_trip(tmp_path: Any) -> None:
    private, public = generate_keypair(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_private_key(private)
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(Exception, match="already exists"):
        generate_keypair(tmp_path)


# -- every receive path of the gossip core ------------------------------------------------------


def _edge() -> GossipNode:
    r = Replica()
    r.use_proofs(_store())
    return GossipNode("edge", r, rng=random.Random(1))


def _meta() -> list[tuple[str, str, Any]]:
    return [("", "flags", Register(1, 1, b""))]


@pytest.mark.parametrize("path", ["push", "sync", "ae"])
def test_forged_state_rejected_on_each_path(path: str) -> None:
    genuine = [*_meta(), ("flags", "k", Register(2, 1, b"v"))]
    certs = _signed(genuine)
    forged = [*_meta(), ("flags", "k", Register(10**12, 1, b"evil"))]

    def message(items: list[tuple[str, str, Any]]) -> dict[str, Any]:
        if path == "push":
            return msgs.Push(items, [], 1, proofs=certs).to_wire()
        if path == "sync":
            return msgs.SyncData(1, items, [], 0, True, False, certs).to_wire()
        return msgs.AeStates(
            1, "flags", [(k, d) for s, k, d in items if s], [], [], False, False, certs
        ).to_wire()

    node = _edge()
    if path == "ae":  # the store must exist for AE states to matter
        node.receive("o", msgs.Push(_meta(), [], 1, proofs=certs).to_wire(), 0.0)
    with pytest.raises(ForgedState):
        node.receive("mallory", message(forged), 1.0)
    assert node.replica.state("flags", "k") is None
    assert node.counters["rejected_forged"] == 1
    node.receive("o", message(genuine), 2.0)  # verifies (AE states outside a session are moot)
    if path != "ae":
        assert node.replica.state("flags", "k") == Register(2, 1, b"v")


# -- a whole testnet: rejected, counted, cut off, never served ----------------------------------


async def test_testnet_rejects_forged_push_and_cuts_the_peer_off(autojump_clock: Any) -> None:
    async with testnet.Testnet(edges=2, network="sim", latency=0.01, seed=3) as net:
        await net.client.create_store("flags")
        await net.client.put("flags", "k", b"genuine")
        assert await net.converged(timeout=10)
        victim = net.edges[0]
        assert net._sim is not None  # network="sim"
        mallory = net._sim.transport("mallory")
        forged = Register(10**12, 1, b"forged")
        await mallory.send(victim.address, msgs.Push([("flags", "k", forged)], [], 1).to_wire())
        await trio.sleep(1)
        assert victim.runtime.metrics.rejected["mallory"] == 1
        assert "rejected_unsigned" in victim.runtime.metrics.events
        assert victim.open("flags").get("k") == b"genuine"
        # cut off: even a well-formed message from it is dropped for the backoff
        await mallory.send(victim.address, msgs.Push([("flags", "k", forged)], [], 1).to_wire())
        await trio.sleep(1)
        assert victim.runtime.metrics.events["dropped_from_rejected_peer"] == 1
        status = victim.status()
        assert status["rejected_unsigned"] == {"mallory": 1}
        assert 'edgekv_rejected_unsigned_total{node="' in victim.metrics_text()
        # honest writes keep flowing, verified
        await net.client.put("flags", "k", b"later")
        assert await net.converged(timeout=10)
        assert all(e.open("flags").get("k") == b"later" for e in net.edges)
        assert victim.replica.proofs is not None and len(victim.replica.proofs) > 0
        assert net.origin is not None
        origin = net.origin.status()
        assert origin["signing"]["certificates"] > 0 and origin["rejected_unsigned"] == {}


def _certificates_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Certificate))


def test_stores_without_persistence_keep_no_certificate_they_dropped() -> None:
    """The origin's store and an edge's without persistence keep no journal (rule 5): under
    8,000 rewrites of 200 keys, signed in groups of 4 (one certificate each, as an origin
    at 50 writes/s seals one per push), the certificates alive are those the stores hold,
    not every one ever made.  A store with `journal=True` records them until drained."""
    rng = random.Random(3)
    before = _certificates_alive()
    origin, edge = Replica(), Replica()
    origin.use_proofs(ProofStore([KEY.public_key()], journal=False)).signer = SIGNER
    edge.use_proofs(ProofStore([KEY.public_key()], journal=False))
    made = seq = 0
    for _ in range(8_000 // 4):
        items = []
        for _ in range(4):
            seq += 1
            items.append(("s", f"k{rng.randrange(200)}", Register(seq, 1, b"v" * 20)))
        origin.apply_batch(items, [(seq - 3, seq)])
        assert origin.proofs is not None and edge.proofs is not None
        origin.proofs.defer([a for s, k, d in items for a in atoms_of(s, k, d)], seq - 3, seq)
        certs = origin.proofs.material_for(items)
        made += len(certs)
        ok = edge.proofs.verify(items, certs, edge.state)
        edge.apply_batch(ok, [(seq - 3, seq)])
    assert origin.proofs is not None and edge.proofs is not None
    assert made >= 2_000
    held = len(origin.proofs) + len(edge.proofs)
    alive = _certificates_alive() - before
    assert alive <= held + 64, (alive, held, made)
    assert origin.proofs.added == origin.proofs.dropped == edge.proofs.added == []
    journaled = _store()  # persistence's: journaled until drained
    certs = list(origin.proofs)
    journaled.add(certs)
    assert journaled.drain_journal() == (certs, [])
    assert journaled.added == journaled.dropped == []


def test_proof_store_stays_bounded_by_live_data_under_rewrites() -> None:
    """60,000 puts over 2,000 keys, pushed in signed groups of 64 from an origin to an edge
    (which passes proofs on to a second edge): every store holds at most a few entries per live
    atom (rule 4), the sparse certificates having been compacted by the origin, and every
    live state still verifies from what each store keeps."""
    rng = random.Random(7)
    origin, edge, edge2 = Replica(), Replica(), Replica()
    origin.use_proofs(_store()).signer = SIGNER
    edge.use_proofs(_store())
    edge2.use_proofs(_store())
    seq = 0
    for _ in range(60_000 // 64):
        items = []
        for _ in range(64):
            seq += 1
            items.append(("s", f"k{rng.randrange(2_000)}", Register(seq, 1, b"v" * 20)))
        origin.apply_batch(items, [(seq - 63, seq)])
        assert origin.proofs is not None and edge.proofs is not None and edge2.proofs is not None
        origin.proofs.defer([a for s, k, d in items for a in atoms_of(s, k, d)], seq - 63, seq)
        ok = edge.proofs.verify(items, origin.proofs.material_for(items), edge.state)
        edge.apply_batch(ok, [(seq - 63, seq)])
        ok = edge2.proofs.verify(items, edge.proofs.material_for(items), edge2.state)
        edge2.apply_batch(ok, [(seq - 63, seq)])
    live = len(origin.stores["s"].states)
    for r in (origin, edge, edge2):
        proofs = r.proofs
        assert proofs is not None
        assert proofs.atoms <= 4 * live + 2 * MAX_CERT_ATOMS, (proofs.atoms, live)
        assert proofs.nbytes <= 24 * (4 * live + 2 * MAX_CERT_ATOMS) + 100 * len(proofs)
        states = [("s", k, d) for k, d in r.stores["s"].states.items()]
        assert len(states) == live
        assert _store().verify(states, proofs.material_for(states), _none) == states
    # and the bound holds at every size, not only at the end: a sweep keeps live ones only
    assert origin.proofs is not None and origin.proofs.sweep(origin.proof_seqs()) >= 0
    assert origin.proofs.atoms <= 2 * live, (origin.proofs.atoms, live)


def test_an_origin_keeps_no_certificate_journal(tmp_path: Path) -> None:
    """Nothing persists the origin's certificates (it signs its live states again at start),
    so its store keeps no journal: 300 signed writes, each sealed by a read of its proofs,
    leave `added` and `dropped` empty (they held every certificate ever made before)."""
    from edgekv import Origin

    async def main() -> None:
        async with Origin(data_dir=tmp_path, listen=None, synchronous="OFF") as origin:
            await origin.create_store("s")
            for i in range(300):
                await origin.put("s", f"k{i % 20}", b"v")
                proofs = origin.replica.proofs
                assert proofs is not None
                proofs.seal()
            assert proofs is not None
            assert proofs.added == proofs.dropped == []
            assert 0 < len(proofs) <= 300

    trio.run(main)


def test_a_forwarded_write_is_answered_with_a_one_off_certificate() -> None:
    """The answer to a forwarded write proves it at once, yet the deferred atoms stay deferred:
    the next push signs its whole batch as one certificate, so every other node verifies one
    signature per batch, not one per forwarded write."""
    store = _store()
    store.signer = SIGNER
    w1 = [("s", "k1", Register(1, 1, b"v"))]
    w2 = [("s", "k2", Register(2, 1, b"v"))]
    store.defer([a for s, k, d in w1 for a in atoms_of(s, k, d)], 1, 1)
    answer1 = store.answer_material(w1)
    assert _store().verify(w1, answer1, _none) == w1  # the writer's edge can verify it
    store.defer([a for s, k, d in w2 for a in atoms_of(s, k, d)], 2, 2)
    answer2 = store.answer_material(w2)
    assert _store().verify(w2, answer2, _none) == w2
    assert len(store) == 0  # neither answer was kept nor sealed the deferred atoms
    batch = store.material_for(w1 + w2)
    assert len(batch) == 1 and (batch[0].lo, batch[0].hi) == (1, 2)
    assert answer1[0].signature != batch[0].signature
    # once sealed, an answer for an older write uses the stored certificate
    assert store.answer_material(w1) == batch


def test_material_prefers_a_certificate_the_message_carries_already() -> None:
    """An edge holding both its own write's one-off certificate and the batch certificate
    sends the batch one only: its peers then verify one signature, not two."""
    w1 = ("s", "k1", Register(1, 1, b"v"))
    w2 = ("s", "k2", Register(2, 1, b"v"))
    batch = _signed([w1, w2])
    oneoff = _signed([w2])
    store = _store()
    store.add(batch)
    store.add(oneoff)  # newer, and its range starts at seq 2: the first choice for seq 2
    out: dict[bytes, Certificate] = {}
    for _s, _k, d in (w1, w2):
        assert store.add_material(out, d) >= 0
    assert list(out) == [batch[0].signature]


def test_a_one_off_certificate_signs_only_the_answered_groups() -> None:
    """Many writes deferred in one window: each answer signs its own group's atoms, not every
    deferred atom (which would cost the origin quadratic signing work per window)."""
    store = _store()
    store.signer = SIGNER
    groups = [[("s", f"k{i}", Register(i, 1, b"v"))] for i in range(1, 9)]
    for i, items in enumerate(groups, 1):
        store.defer([a for s, k, d in items for a in atoms_of(s, k, d)], i, i)
    answer = store.answer_material(groups[4])
    assert len(answer) == 1 and len(answer[0]) == 1 and (answer[0].lo, answer[0].hi) == (5, 5)
    assert _store().verify(groups[4], answer, _none) == groups[4]
    batch = store.material_for([it for g in groups for it in g])
    assert len(batch) == 1 and len(batch[0]) == 8
