"""Shared test configuration: deterministic hypothesis profiles.

The default profile ("ci") derandomizes hypothesis, so every run explores the same examples and
a failure replays.  `HYPOTHESIS_PROFILE=dev` runs random examples; `=thorough` runs many more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from edgekv.testnet.postgres import ThrowawayPostgres, postgres_unavailable, throwaway_postgres

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL server for the session (initdb + pg_ctl in a temp dir on
    127.0.0.1, stopped at the end); tests that need it skip, with the reason, where none can
    be started.  Each test makes its own database (`create_database`)."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(f"no throwaway PostgreSQL: {reason}")
    with throwaway_postgres() as pg:
        yield pg
