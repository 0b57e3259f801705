"""Hypothesis profiles of the property-based tests: one switch for the size of every property test.

``CMRM_GUARD_HYPOTHESIS_PROFILE`` selects the profile (default ``ci``):

- ``ci``: the sizes written in each test (``cases(n)`` is ``n``), about 3,000 cases over the suite;
- ``large``: ten times as many (about 30,000 cases), for a corpus run before a release.

No example database is kept (no ``.hypothesis/`` folder is written); a failure prints the seed and
the blob to reproduce it (``@reproduce_failure``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "CMRM_GUARD_HYPOTHESIS_PROFILE"
"""Environment variable naming the profile to load."""
SCALE = {"ci": 1, "large": 10}
"""Factor applied to each property test's CI case count, per profile."""

settings.register_profile(
    "ci",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("large", parent=settings.get_profile("ci"))

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in SCALE:
    raise ValueError(f"{PROFILE_ENV}={PROFILE!r} is not a profile; expected one of {sorted(SCALE)}")
settings.load_profile(PROFILE)


def cases(ci_count: int) -> int:
    """The number of cases a property test runs under the loaded profile (``ci_count`` in CI)."""
    return ci_count * SCALE[PROFILE]
