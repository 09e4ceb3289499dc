"""Link fault policy shared by the simulated and the TCP transport.

Pure and seeded: `LinkFaults.route(src, dst, now)` says when the copies of one message arrive
(or that it is lost), so one fault scenario runs identically over the simulator and real sockets.
Modelled on TigerBeetle's packet simulator: latency = minimum + jitter (uniform or exponential),
loss, duplication, reordering (extra random delay), partitions (split, isolate, asymmetric block)
and clogged links that hold messages until a given time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

__all__ = ["LinkFaults", "LinkSettings"]

Distribution = Literal["uniform", "exponential"]


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Fault settings of one directed link (times in seconds, probabilities in [0, 1])."""

    latency: float = 0.0  # minimum one-way delay
    jitter: float = 0.0  # uniform: extra delay in [0, jitter]; exponential: mean extra delay
    distribution: Distribution = "uniform"
    loss: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message arrives twice
    reorder: float = 0.0  # probability a copy is held back by an extra delay...
    reorder_delay: float = 0.0  # ...uniform in [0, reorder_delay]

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        for name in ("latency", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.distribution not in ("uniform", "exponential"):
            raise ValueError(f"unknown latency distribution {self.distribution!r}")


def _addr(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"an address must be a string, got {value!r}")
    return value


def _addrs(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of addresses, got {value!r}")
    return [_addr(v) for v in value]


def _list(spec: dict[str, Any], name: str) -> list[Any]:
    value = spec.get(name, [])
    if not isinstance(value, list):
        raise TypeError(f"{name} must be a list")
    return value


class LinkChanges(TypedDict, total=False):
    """Keyword arguments that change some of a `LinkSettings`' fields."""

    latency: float
    jitter: float
    distribution: Distribution
    loss: float
    duplicate: float
    reorder: float
    reorder_delay: float


class LinkFaults:
    """Seeded fault policy over directed links between string addresses.

    Deterministic for a given seed and sequence of calls.  `heal()` removes partitions, blocks,
    isolations and clogs; per-link settings and the defaults stay.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        distribution: Distribution = "uniform",
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_delay: float = 0.0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.default = LinkSettings(
            latency, jitter, distribution, loss, duplicate, reorder, reorder_delay
        )
        self._links: dict[tuple[str, str], LinkSettings] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self._isolated: set[str] = set()
        self._blocked: set[tuple[str, str]] = set()
        self._clogged: dict[tuple[str, str], float] = {}

    # --- configuration ----------------------------------------------------------------------

    def set_default(self, **changes: Unpack[LinkChanges]) -> None:
        """Change the default settings (e.g. `set_default(loss=0.1)`)."""
        self.default = dataclasses.replace(self.default, **changes)

    def set_link(self, src: str, dst: str, **changes: Unpack[LinkChanges]) -> None:
        """Override settings of the directed link src -> dst (starting from the defaults)."""
        base = self._links.get((src, dst), self.default)
        self._links[(src, dst)] = dataclasses.replace(base, **changes)

    def settings(self, src: str, dst: str) -> LinkSettings:
        return self._links.get((src, dst), self.default)

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """No message crosses between the two groups, in either direction."""
        self._partitions.append((frozenset(group_a), frozenset(group_b)))

    def isolate(self, node: str) -> None:
        """`node` can neither send to nor receive from anyone else."""
        self._isolated.add(node)

    def block(self, src: str, dst: str) -> None:
        """Asymmetric fault: messages src -> dst are lost; dst -> src still flow."""
        self._blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.discard((src, dst))

    def clog(self, src: str, dst: str, until: float) -> None:
        """Hold messages src -> dst so none arrives before time `until`."""
        self._clogged[(src, dst)] = until

    def heal(self) -> None:
        """Remove every partition, isolation, block and clog."""
        self._partitions.clear()
        self._isolated.clear()
        self._blocked.clear()
        self._clogged.clear()

    # --- as data (shared with other processes: `faultfile.py`) --------------------------------

    def to_spec(self) -> dict[str, Any]:
        """The policy as plain JSON data (clogs, which hold absolute times, are left out)."""
        return {
            "seed": self.seed,
            "default": dataclasses.asdict(self.default),
            "links": [[s, d, dataclasses.asdict(v)] for (s, d), v in self._links.items()],
            "partitions": [[sorted(a), sorted(b)] for a, b in self._partitions],
            "isolated": sorted(self._isolated),
            "blocked": [list(link) for link in sorted(self._blocked)],
        }

    def load_spec(self, spec: object) -> None:
        """Replace the policy by `spec` (as made by `to_spec`), all or nothing: ValueError if
        it is malformed, and then nothing changes.  A new seed restarts the random stream."""
        try:
            if not isinstance(spec, dict):
                raise TypeError("a fault spec must be a JSON object")
            seed = spec.get("seed", self.seed)
            if type(seed) is not int:
                raise TypeError("seed must be an integer")
            default = LinkSettings(**spec.get("default", {}))
            links = {(_addr(s), _addr(d)): LinkSettings(**v) for s, d, v in _list(spec, "links")}
            partitions = [
                (frozenset(_addrs(a)), frozenset(_addrs(b))) for a, b in _list(spec, "partitions")
            ]
            isolated = set(_addrs(spec.get("isolated", [])))
            blocked = {(_addr(s), _addr(d)) for s, d in _list(spec, "blocked")}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fault spec: {exc}") from None
        if seed != self.seed:
            self.seed, self.rng = seed, random.Random(seed)
        self.default, self._links = default, links
        self._partitions, self._isolated, self._blocked = partitions, isolated, blocked
        self._clogged.clear()

    # --- policy -----------------------------------------------------------------------------

    def reachable(self, src: str, dst: str) -> bool:
        """Whether src -> dst is currently open (ignoring random loss)."""
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated or (src, dst) in self._blocked:
            return False
        for a, b in self._partitions:
            if (src in a and dst in b) or (src in b and dst in a):
                return False
        return True

    def route(self, src: str, dst: str, now: float) -> list[float]:
        """Delays (seconds from `now`) at which copies of one message arrive; [] = lost."""
        if not self.reachable(src, dst):
            return []
        s = self._links.get((src, dst), self.default)
        rng = self.rng
        if s.loss and rng.random() < s.loss:
            return []
        copies = 2 if s.duplicate and rng.random() < s.duplicate else 1
        until = self._clogged.get((src, dst))
        delays = []
        for _ in range(copies):
            delay = s.latency
            if s.jitter:
                if s.distribution == "uniform":
                    delay += rng.uniform(0.0, s.jitter)
                else:
                    delay += rng.expovariate(1.0 / s.jitter)
            if s.reorder and rng.random() < s.reorder:
                delay += rng.uniform(0.0, s.reorder_delay)
            if until is not None and now + delay < until:
                delay = until - now
            delays.append(delay)
        return delays
