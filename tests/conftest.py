"""Shared test configuration: deterministic hypothesis profiles.

The default profile ("ci") derandomizes hypothesis, so every run explores the same examples and
a failure replays.  `HYPOTHESIS_PROFILE=dev` runs random examples; `=thorough` runs many more.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
