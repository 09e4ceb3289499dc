"""The origin's and the edge's OpenAPI documents match their behaviour: schemathesis, run against
real servers over 127.0.0.1, with tokens off and on, finds no failure (every check).

The default suite draws a few examples per operation (plus schemathesis's example and coverage
phases); `-m slow` draws 100 per operation.  The servers run in a thread of their own (an anyio
blocking portal under trio) while schemathesis's synchronous client calls them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from edgekv.node.edge import EdgeNode
from edgekv.origin.server import Origin

TOKEN = "admin-token"
TOKENS = {TOKEN: "write:*"}
FAST_EXAMPLES = 3
SLOW_EXAMPLES = 100


async def _fill(origin: Origin) -> None:
    await origin.create_store("flags")
    await origin.put("flags", "greeting", b"hello")
    await origin.handle(
        {
            "op": "batch",
            "store": "flags",
            "ops": [
                {"op": "zadd", "key": "ranking", "members": {b"alice": 10.0}},
                {"op": "bf_add", "key": "blocked", "items": [b"10.0.0.1"]},
            ],
        },
        trusted=True,
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An origin and an edge with tokens off, and another pair with tokens on: base URLs."""
    urls: dict[str, str] = {}
    with anyio.from_thread.start_blocking_portal("trio") as portal, ExitStack() as stack:
        for mode, tokens in (("open", None), ("tokens", TOKENS)):
            data: Path = tmp_path_factory.mktemp(f"origin-{mode}")
            origin = stack.enter_context(
                portal.wrap_async_context_manager(
                    Origin(data_dir=data, listen="127.0.0.1:0", http="127.0.0.1:0", tokens=tokens)
                )
            )
            portal.call(_fill, origin)
            edge = stack.enter_context(
                portal.wrap_async_context_manager(
                    EdgeNode(
                        origin=origin.address,
                        http="127.0.0.1:0",
                        tokens=tokens,
                        token=TOKEN if tokens else None,
                    )
                )
            )
            urls[f"origin-{mode}"] = f"http://{origin.http_address}"
            urls[f"edge-{mode}"] = f"http://{edge.http_address}"
        yield urls


def _config(tokens: bool, examples: int) -> SchemathesisConfig:
    doc: dict[str, Any] = {
        "seed": int(os.environ.get("EDGEKV_SCHEMATHESIS_SEED", "1")),
        "generation": {"max-examples": examples, "mode": "all"},
        "checks": {"enabled": True},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "cache": {"enabled": False},  # no state left in the work tree
    }
    if tokens:
        doc["auth"] = {"openapi": {"bearer": {"bearer": TOKEN}}}
    return SchemathesisConfig.from_dict(doc)


def _describe(exc: BaseException) -> str:
    parts = [str(exc)]
    if isinstance(exc, BaseExceptionGroup):
        parts += [f"{type(e).__name__}: {e}" for e in exc.exceptions]
    parts += getattr(exc, "__notes__", [])
    return "\n".join(parts)[:4000]


def _run(url: str, tokens: bool, examples: int) -> list[str]:
    """Every operation of the document at `url` through schemathesis (positive and negative
    cases, every check); the failures found."""
    config = _config(tokens, examples)
    schema = schemathesis.openapi.from_url(url + "/v1/openapi.json", config=config)
    validate(schema.raw_schema)  # valid OpenAPI 3.1 (openapi-spec-validator)
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an Err: an operation it could not load
        operations.append(result.ok())
    assert len(operations) >= 7
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(operation.as_strategy(mode))
            def check(case: Any) -> None:
                case.call_and_validate(timeout=10)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
            except (Exception, FailureGroup) as exc:  # schemathesis's failures, shrunk
                failures.append(f"{mode.name} {operation.label}: {_describe(exc)}")
    return failures


@pytest.mark.parametrize("target", ["origin", "edge"])
@pytest.mark.parametrize("mode", ["open", "tokens"])
def test_schemathesis(servers: dict[str, str], target: str, mode: str) -> None:
    failures = _run(servers[f"{target}-{mode}"], mode == "tokens", FAST_EXAMPLES)
    assert not failures, "\n\n".join(f[:3000] for f in failures[:10])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["origin", "edge"])
@pytest.mark.parametrize("mode", ["open", "tokens"])
def test_schemathesis_many_examples(servers: dict[str, str], target: str, mode: str) -> None:
    failures = _run(servers[f"{target}-{mode}"], mode == "tokens", SLOW_EXAMPLES)
    assert not failures, "\n\n".join(f[:3000] for f in failures[:10])


@pytest.mark.parametrize("name", ["origin-open", "edge-tokens"])
def test_every_operation_has_examples(servers: dict[str, str], name: str) -> None:
    doc = httpx.get(servers[name] + "/v1/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert all("example" in p for p in op.get("parameters", [])), where
            for content in op.get("requestBody", {}).get("content", {}).values():
                assert "example" in content, where
            for status, response in op["responses"].items():
                for content in response.get("content", {}).values():
                    assert "example" in content or (status == "200" and path.endswith(".json"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["origin-open", "origin-tokens", "edge-open", "edge-tokens"])
def test_schemathesis_cli_every_phase(servers: dict[str, str], name: str, tmp_path: Path) -> None:
    """`st run` as a user runs it: the examples, coverage and fuzzing phases, every check."""
    st = Path(sys.executable).with_name("st")
    command = [str(st), "run", servers[name] + "/v1/openapi.json", "--checks", "all"]
    command += ["--max-examples", str(SLOW_EXAMPLES), "--seed", "1", "--no-color"]
    if name.endswith("tokens"):
        command += ["-H", f"Authorization: Bearer {TOKEN}"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-5000:]
