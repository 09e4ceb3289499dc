"""Seeded convergence simulations with an outside checker (the VOPR habit).

25 edges + origin, 100 ms links (+ up to 10 ms jitter, so messages reorder), 1% loss and 1%
duplication, 100 writes/s (puts, deletes, zadds, bf_adds over a few hundred keys), random
partitions and heals, crashes and restarts.  The checker outside the nodes asserts:
  * no key's version ever goes backwards at any node (checked on every applied change);
  * every acknowledged write reaches every live node (watermarks pass every acked seq);
  * after the last heal/restart (writes stop there), at some moment within 3 anti-entropy
    intervals every live node's digest equals the origin's (purge marks travel, so a check at
    one fixed instant could catch a purge half-way down the tree).
A failure prints its seed; `pytest -m slow` runs many more seeds.
"""

from __future__ import annotations

import random

import pytest

from edgekv.crdt import BfAdd, Delete, Put, ZAdd
from edgekv.crdt.ops import Op
from edgekv.gossip import GossipConfig
from gossip_sim import Sim


def random_op(rng: random.Random, i: int) -> Op:
    r = rng.random()
    key = f"k{rng.randrange(300)}"
    if r < 0.6:
        ttl = 3600.0 if rng.random() < 0.05 else None
        return Put(key, b"v%d" % i, ttl=ttl, force=True)
    if r < 0.8:
        return Delete(key)
    if r < 0.9:
        return ZAdd(f"z{rng.randrange(20)}", {b"m%d" % rng.randrange(50): float(i)}, force=True)
    return BfAdd(f"b{rng.randrange(10)}", [b"i%d" % i], capacity=100, error_rate=0.01, force=True)


def chaos(seed: int, edges: int = 25, duration: float = 12.0) -> Sim:
    rng = random.Random(seed)
    cfg = GossipConfig()
    sim = Sim(edges, seed, latency=0.1, jitter=0.01, loss=0.01, duplicate=0.01, config=cfg)
    sim.start(stagger=0.01)
    sim.run_until(3.0)
    sim.create_store("s")
    sim.run_until(4.0)
    crashed: set[str] = set()
    t, end = 4.0, 4.0 + duration
    next_fault = t + rng.uniform(0.5, 2.0)
    i = 0
    while t < end:
        sim.run_until(t)
        if t >= next_fault:
            kind = rng.random()
            if kind < 0.35:
                cut = rng.sample(sim.edges, rng.randrange(1, edges // 2))
                rest = [a for a in sim.nodes if a not in cut]
                sim.partition(cut, rest)
            elif kind < 0.6:
                sim.heal()
            elif kind < 0.8 and len(crashed) < 4:
                victim = rng.choice([e for e in sim.edges if e not in crashed])
                sim.crash(victim)
                crashed.add(victim)
            elif crashed:
                back = rng.choice(sorted(crashed))
                sim.restart(back)
                crashed.discard(back)
            next_fault = t + rng.uniform(0.5, 3.0)
        try:
            sim.write("s", random_op(rng, i))
        except Exception as exc:  # WrongKind cannot happen (force=True); anything else is a bug
            raise AssertionError(f"seed {seed}: write failed: {exc!r}") from exc
        i += 1
        t += 0.01
    sim.heal()
    for back in sorted(crashed):
        sim.restart(back)
    sim.converged_at = None
    t = end
    while t < end + 3 * cfg.ae_interval:
        t += 0.05
        sim.run_until(t)
        if sim.converged() and not sim.missing():
            sim.converged_at = t - end
            break
    return sim


def check(sim: Sim) -> None:
    seed = sim.seed
    assert not sim.check.violations, (
        f"seed {seed}: versions went backwards: {sim.check.violations[:3]}"
    )
    missing = sim.missing()
    assert not missing, f"seed {seed}: acked writes not delivered: {missing[:5]}"
    root = sim.origin.replica.root
    behind = [e for e in sim.live_edges() if sim.nodes[e].replica.root != root]
    assert sim.converged_at is not None, (
        f"seed {seed}: digests differ from the origin's at {behind}"
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_converges(seed: int) -> None:
    check(chaos(seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 40))
def test_chaos_converges_many_seeds(seed: int) -> None:
    check(chaos(seed, duration=30.0))
