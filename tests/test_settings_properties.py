"""Property test: under a SteeringLock, no request resolves to weaker steering than the deployer set.

Every generated request (per-call settings, as a mapping or a ``steering()`` block) either raises a
named cmrm-guard error or resolves to settings that steer at least as strongly as the deployer's.
Settings resolution runs no model, so this stays fast.
"""

from __future__ import annotations

import functools

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cmrm_guard import SteeredVLM, SteeringConfig, SteeringLock  # noqa: E402
from cmrm_guard.errors import CMRMError, SteeringLockedError  # noqa: E402
from tests.conftest import random_vectors, tiny  # noqa: E402
from tests.hypothesis_profiles import cases  # noqa: E402

_values = {
    "alpha": st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.integers(-3, 3),
        st.booleans(),
        st.text(max_size=3),
    ),
    "layers": st.one_of(
        st.none(),
        st.lists(st.integers(-2, 4), max_size=4),
        st.integers(0, 2),
        st.text(max_size=2),
    ),
    "enabled": st.one_of(st.booleans(), st.integers(-1, 2), st.none()),
    "policy": st.sampled_from(["images", "always", "never", "sometimes", None]),
    "mode": st.sampled_from(["dataset", "sample", "both"]),
    "application": st.sampled_from(["increment", "every_layer", None, "x"]),
    "step_scope": st.sampled_from(["all_steps", "prefill_only", "none"]),
    "positions": st.sampled_from(["last", "all"]),
    "noise_seed": st.integers(-2, 2),
    "unknown_field": st.integers(),
}
_requests = st.fixed_dictionaries({}, optional=_values)
_POLICY_RANK = {"never": 0, "images": 1, "always": 2}


@functools.cache
def _wrapper() -> SteeredVLM:
    """One locked wrapper for every case: a request must leave nothing behind for the next."""
    model, processor = tiny("llava")
    return SteeredVLM(
        model,
        processor,
        vectors=random_vectors(2, 64, 1.0),
        config=SteeringConfig(alpha=0.8, layers=[1]),
        lock=SteeringLock(),
    )


#: cases per run (CMRM_GUARD_HYPOTHESIS_PROFILE=large: 20,000)
EXAMPLES = cases(2000)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_requests, as_block=st.booleans())
def test_no_request_resolves_weaker_than_the_lock_allows(request, as_block):
    svlm = _wrapper()
    try:
        if as_block:
            with svlm.steering(**request) as resolved:
                pass
        else:
            resolved = svlm.resolve_config(request)
    except CMRMError as error:
        assert isinstance(error, ValueError | IndexError | PermissionError)
        assert not isinstance(error, SteeringLockedError) or "SteeringLock" in str(error)
        return
    effective = svlm.effective_config(resolved)
    assert effective.enabled is True and _POLICY_RANK[effective.policy] >= _POLICY_RANK["images"]
    assert effective.alpha is not None and effective.alpha >= 0.8
    assert effective.layers is not None and 1 in effective.layers
    assert (effective.mode, effective.application, effective.positions) == ("dataset", "increment", "last")
    assert effective.step_scope == "all_steps"
    assert svlm.resolve_config() == svlm.config  # nothing leaked into later calls
