"""Scenarios: a TOML timeline of workload and faults plus assertions, parsed strictly.

A scenario file (see `scenarios/*.toml`) looks like::

    name = "glomers-3e"
    description = "..."
    [network]               # the Testnet: edges, latency_ms, jitter_ms, loss, seed, mode
    edges = 25
    latency_ms = 100
    [short]                 # what `--short` changes: fewer edges, times multiplied by `scale`
    edges = 10
    scale = 0.25
    [[steps]]               # each step starts `at` seconds after the store exists
    at = 0
    action = "write"        # write | partition | heal | isolate | block | crash | restart |
    rate = 100              # rolling_restart | set_latency | set_loss | wait
    duration = 20
    [assert]
    converged_within = 5.0
    nothing_lost = true

Running one is `edgekv.testnet.report.run_experiment` (kept apart: this module only describes).
Every malformed file raises `InvalidInput` naming the file, the step and the field.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgekv.errors import InvalidInput

__all__ = [
    "ACTIONS",
    "Assertions",
    "Scenario",
    "Step",
    "bundled_scenarios",
    "load_scenario",
    "parse_scenario",
]

# action -> {field: (type, required)}; `at` is common to all.
_NUM = (int, float)
ACTIONS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "write": {
        "rate": (_NUM, True),  # writes per second (open loop)
        "duration": (_NUM, True),  # seconds
        "keys": ((int,), False),  # key space size (default 1000)
        "distribution": ((str,), False),  # "uniform" (default) | "zipf"
        "zipf_s": (_NUM, False),  # zipf exponent (default 1.1)
        "value_size": ((int,), False),  # bytes per value (default 32)
    },
    "partition": {
        "a": ((list,), False),  # node names of one side...
        "b": ((list,), False),  # ...and the other (default: everyone not in a)
        "split": (_NUM, False),  # or: fraction of edges on the origin's side
    },
    "heal": {},
    "isolate": {"node": ((str,), True)},
    "block": {"src": ((str,), True), "dst": ((str,), True)},
    "crash": {"node": ((str,), True)},
    "restart": {"node": ((str,), True)},
    "rolling_restart": {
        "nodes": ((str, list), False),  # "edges" (default) or a list of names
        "downtime": (_NUM, True),  # seconds each node stays down
        "interval": (_NUM, True),  # seconds between one node's crash and the next's
    },
    "set_latency": {"latency_ms": (_NUM, True), "jitter_ms": (_NUM, False)},
    "set_loss": {"loss": (_NUM, True)},
    "wait": {"duration": (_NUM, True)},
}
_TIME_FIELDS = ("duration", "downtime", "interval")
_ASSERTIONS: dict[str, tuple[type, ...]] = {
    "converged_within": _NUM,  # seconds after the timeline ends
    "nothing_lost": (bool,),
    "propagation_p50_max": _NUM,  # seconds, ack -> each edge
    "propagation_p99_max": _NUM,
    "propagation_max_max": _NUM,
    "messages_per_write_max": _NUM,
}


@dataclass(frozen=True, slots=True)
class Step:
    """One timeline step: `action` at `at` seconds, with its validated parameters."""

    at: float
    action: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def end(self) -> float:
        """When this step's effect ends (a write load or wait lasts `duration`)."""
        p = self.params
        if self.action in ("write", "wait"):
            return self.at + float(p["duration"])
        if self.action == "rolling_restart":
            return self.at + float(p["downtime"])  # a lower bound; the runner knows the count
        return self.at


@dataclass(frozen=True, slots=True)
class Assertions:
    converged_within: float | None = None
    nothing_lost: bool = False
    propagation_p50_max: float | None = None
    propagation_p99_max: float | None = None
    propagation_max_max: float | None = None
    messages_per_write_max: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario.  Times are seconds; latency and jitter are seconds here too."""

    name: str
    description: str
    edges: int
    mode: str  # default network: "sim" | "tcp" | "processes"
    latency: float
    jitter: float
    loss: float
    seed: int
    steps: tuple[Step, ...]
    assertions: Assertions
    store: str = "testnet"
    probe_interval: float = 0.01
    short_edges: int | None = None
    short_scale: float = 1.0

    def shortened(self, scale: float | None = None, edges: int | None = None) -> Scenario:
        """The short version: times multiplied by `scale` (default the file's `[short]`)."""
        s = self.short_scale if scale is None else scale
        if not 0 < s <= 1:
            raise InvalidInput(f"scale must be in (0, 1], got {s}")
        n = edges if edges is not None else (self.short_edges or self.edges)
        steps = []
        for st in self.steps:
            params = dict(st.params)
            for name in _TIME_FIELDS:
                if name in params:
                    params[name] = float(params[name]) * s
            steps.append(Step(st.at * s, st.action, params))
        return dataclasses.replace(self, edges=n, steps=tuple(steps))

    def node_names(self) -> list[str]:
        return ["origin", *(f"edge-{i}" for i in range(self.edges))]

    def config(self) -> dict[str, Any]:
        """JSON-ready description (for report.json)."""
        return {
            "name": self.name,
            "description": self.description,
            "edges": self.edges,
            "mode": self.mode,
            "latency": self.latency,
            "jitter": self.jitter,
            "loss": self.loss,
            "seed": self.seed,
            "store": self.store,
            "steps": [{"at": s.at, "action": s.action, **s.params} for s in self.steps],
            "assertions": dataclasses.asdict(self.assertions),
        }


def _bad(where: str, msg: str) -> InvalidInput:
    return InvalidInput(f"{where}: {msg}")


def _num(where: str, table: Mapping[str, Any], name: str, default: float, lo: float = 0.0) -> float:
    v = table.get(name, default)
    if isinstance(v, bool) or not isinstance(v, _NUM):
        raise _bad(where, f"{name} must be a number, got {v!r}")
    if v < lo:
        raise _bad(where, f"{name} must be >= {lo}, got {v}")
    return float(v)


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _bad(
            where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _parse_step(where: str, raw: Any, edges: int) -> Step:
    if not isinstance(raw, dict):
        raise _bad(where, "a step must be a table")
    action = raw.get("action")
    if action not in ACTIONS:
        raise _bad(where, f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    spec = ACTIONS[action]
    _check_keys(where, raw, {"at", "action", *spec})
    at = _num(where, raw, "at", 0.0)
    params: dict[str, Any] = {}
    for name, (types, required) in spec.items():
        if name not in raw:
            if required:
                raise _bad(where, f"{action} needs {name}")
            continue
        v = raw[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise _bad(where, f"{name} has the wrong type: {v!r}")
        if isinstance(v, (int, float)) and v < 0:
            raise _bad(where, f"{name} must be >= 0, got {v}")
        params[name] = v
    names = {"origin", *(f"edge-{i}" for i in range(edges))}
    for name in ("node", "src", "dst"):
        if name in params and params[name] not in names:
            raise _bad(where, f"{name} {params[name]!r} is not a node of this testnet")
    for name in ("a", "b"):
        for n in params.get(name, []):
            if n not in names:
                raise _bad(where, f"{name} names {n!r}, not a node of this testnet")
    if action == "partition" and "a" not in params and "split" not in params:
        raise _bad(where, "partition needs `a` (node names) or `split` (a fraction)")
    if "split" in params and not 0 <= params["split"] <= 1:
        raise _bad(where, "split must be a fraction in [0, 1]")
    if action == "write":
        if params.get("distribution", "uniform") not in ("uniform", "zipf"):
            raise _bad(where, "distribution must be 'uniform' or 'zipf'")
        if params.get("keys", 1000) < 1 or params["rate"] <= 0:
            raise _bad(where, "keys and rate must be positive")
    if action == "set_loss" and not 0 <= params["loss"] <= 1:
        raise _bad(where, "loss must be a probability in [0, 1]")
    if isinstance(params.get("nodes"), str) and params["nodes"] != "edges":
        raise _bad(where, "nodes must be 'edges' or a list of node names")
    return Step(at, action, params)


def parse_scenario(data: Mapping[str, Any], *, source: str = "<scenario>") -> Scenario:
    """Validate a decoded TOML document into a `Scenario` (InvalidInput on any problem)."""
    _check_keys(
        source,
        data,
        {"name", "description", "network", "short", "steps", "assert", "store", "probe_interval"},
    )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(source, "name (a non-empty string) is required")
    net = data.get("network", {})
    if not isinstance(net, dict):
        raise _bad(source, "[network] must be a table")
    where = f"{source} [network]"
    _check_keys(where, net, {"edges", "latency_ms", "jitter_ms", "loss", "seed", "mode"})
    edges = net.get("edges", 25)
    if not isinstance(edges, int) or isinstance(edges, bool) or not 1 <= edges <= 100_000:
        raise _bad(where, f"edges must be an integer in [1, 100000], got {edges!r}")
    mode = net.get("mode", "sim")
    if mode not in ("sim", "tcp", "processes"):
        raise _bad(where, f"mode must be sim, tcp or processes, got {mode!r}")
    loss = _num(where, net, "loss", 0.0)
    if loss > 1:
        raise _bad(where, "loss must be a probability in [0, 1]")
    seed = net.get("seed", 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _bad(where, "seed must be an integer")
    short = data.get("short", {})
    if not isinstance(short, dict):
        raise _bad(source, "[short] must be a table")
    _check_keys(f"{source} [short]", short, {"edges", "scale"})
    short_edges = short.get("edges")
    if short_edges is not None and (
        not isinstance(short_edges, int) or not 1 <= short_edges <= edges
    ):
        raise _bad(f"{source} [short]", "edges must be an integer between 1 and [network] edges")
    short_scale = _num(f"{source} [short]", short, "scale", 1.0)
    if not 0 < short_scale <= 1:
        raise _bad(f"{source} [short]", "scale must be in (0, 1]")
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise _bad(source, "at least one [[steps]] entry is required")
    steps = tuple(
        sorted(
            (_parse_step(f"{source} step {i + 1}", s, edges) for i, s in enumerate(raw_steps)),
            key=lambda s: s.at,
        )
    )
    if short_edges is not None:  # every named node must exist in the short version too
        for i, s in enumerate(raw_steps):
            _parse_step(f"{source} step {i + 1} (short, {short_edges} edges)", s, short_edges)
    raw_assert = data.get("assert", {})
    if not isinstance(raw_assert, dict):
        raise _bad(source, "[assert] must be a table")
    _check_keys(f"{source} [assert]", raw_assert, set(_ASSERTIONS))
    for key, types in _ASSERTIONS.items():
        v = raw_assert.get(key)
        if v is not None and (not isinstance(v, types) or (types is _NUM and isinstance(v, bool))):
            raise _bad(f"{source} [assert]", f"{key} has the wrong type: {v!r}")
    store = data.get("store", "testnet")
    if not isinstance(store, str):
        raise _bad(source, "store must be a string")
    return Scenario(
        name=name,
        description=str(data.get("description", "")),
        edges=edges,
        mode=mode,
        latency=_num(where, net, "latency_ms", 100.0) / 1000.0,
        jitter=_num(where, net, "jitter_ms", 0.0) / 1000.0,
        loss=loss,
        seed=seed,
        steps=steps,
        assertions=Assertions(**raw_assert),
        store=store,
        probe_interval=_num(source, data, "probe_interval", 0.01),
        short_edges=short_edges,
        short_scale=short_scale,
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; a bare name finds a bundled scenario."""
    p = Path(path)
    if not p.exists() and p.suffix != ".toml" and str(path) in bundled_scenarios():
        p = bundled_scenarios()[str(path)]
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(
            f"no scenario file {str(path)!r} (bundled: {', '.join(bundled_scenarios())})"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{p}: not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(p))


def bundled_scenarios() -> dict[str, Path]:
    """Scenarios shipped with the package, by name (file stem)."""
    root = resources.files("edgekv.testnet") / "scenarios"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[: -len(".toml")]] = Path(str(entry))
    return dict(sorted(out.items()))
