"""Steering settings: per-wrapper overrides, per-call merges, the shift cache, and SteeringLock."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cmrm_guard import SteeredVLM, SteeringConfig, SteeringLock, VectorPack, calibrate, count_hooks
from cmrm_guard.errors import CMRMError, ConfigError, PackError, SteeringLockedError, VectorError
from cmrm_guard.shifts import ShiftCache, select_layers
from tests.conftest import image_chat, random_vectors, tiny


def _svlm(**kwargs) -> SteeredVLM:
    model, processor = tiny("llava")
    return SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0), **kwargs)


def _logits(svlm: SteeredVLM, **kwargs) -> torch.Tensor:
    return svlm.forward([image_chat()], **kwargs).logits


# ------------------------------------------------------------------------ steering() overrides
def test_steering_block_of_one_wrapper_does_not_reach_another():
    first, second = _svlm(), _svlm()
    with first.steering(alpha=0.123):
        assert first.resolve_config().alpha == 0.123
        assert second.resolve_config().alpha is None
        assert torch.equal(_logits(second), _logits(_svlm()))
    assert first.resolve_config().alpha is None


def test_steering_block_stays_in_its_asyncio_task():
    svlm = _svlm()

    async def inside() -> float | None:
        with svlm.steering(alpha=0.4):
            await asyncio.sleep(0)
            return svlm.resolve_config().alpha

    async def outside() -> float | None:
        await asyncio.sleep(0)
        return svlm.resolve_config().alpha

    async def both():
        return await asyncio.gather(inside(), outside())

    assert asyncio.run(both()) == [0.4, None]


# -------------------------------------------------------------------------- per-call config=
def test_per_call_config_merges_only_the_fields_it_sets():
    svlm = _svlm(config=SteeringConfig(alpha=0.7))
    with svlm.steering(layers=[1]):
        resolved = svlm.resolve_config(SteeringConfig(step_scope="prefill_only"))
        assert (resolved.alpha, resolved.layers, resolved.step_scope) == (0.7, (1,), "prefill_only")
        output = svlm.generate(
            [image_chat()], config=SteeringConfig(step_scope="prefill_only"), max_new_tokens=2
        )
    assert output.steering.alpha == 0.7 and output.steering.layers == (1,)
    # a config made by replace() carries the fields set in it and the changes, nothing more
    assert SteeringConfig(alpha=0.2).replace(policy="always").model_fields_set == {"alpha", "policy"}


def test_per_call_config_may_be_a_mapping_of_fields():
    svlm = _svlm()
    as_mapping = svlm.chat(image_chat(), config={"alpha": 0.5}, max_new_tokens=3)
    assert as_mapping == svlm.chat(image_chat(), config=SteeringConfig(alpha=0.5), max_new_tokens=3)
    assert svlm.resolve_config({"alpha": 0.5}).alpha == 0.5
    with svlm.steering({"policy": "always"}) as settings:
        assert settings.policy == "always"
    with pytest.raises(ConfigError, match="alpah=0.5: unknown setting"):
        svlm.chat(image_chat(), config={"alpah": 0.5})
    with pytest.raises(ConfigError, match="SteeringConfig or a mapping.*got int"):
        svlm.resolve_config(42)
    assert count_hooks(svlm.model) == 0


# ------------------------------------------------------------------ sample mode with a pack
def test_sample_mode_on_a_wrapper_with_a_pack_takes_the_packs_alpha_and_application():
    svlm = _svlm()
    svlm.vectors.meta = svlm.vectors.meta.model_copy(update={"alpha": 0.3, "application": "every_layer"})
    with svlm.steering(mode="sample"):
        steering = svlm.generate([image_chat()], max_new_tokens=2).steering
    assert (steering.mode, steering.alpha, steering.application) == ("sample", 0.3, "every_layer")
    explicit = svlm.generate([image_chat()], config={"mode": "sample", "alpha": 0.9}, max_new_tokens=2)
    assert explicit.steering.alpha == 0.9
    model, processor = tiny("llava")
    packless = SteeredVLM(model, processor, config=SteeringConfig(mode="sample"))
    assert packless.generate([image_chat()], max_new_tokens=2).steering.alpha == 1.0


# ---------------------------------------------------------------------------- the shift cache
def test_a_replaced_pack_is_never_served_the_previous_packs_shifts():
    svlm = _svlm()
    meta = svlm.vectors.meta
    for seed in range(20):  # until a new pack gets a freed pack's address (and id), as CPython does
        first = VectorPack(random_vectors(2, 64, 3.0, seed=11), meta)
        svlm.vectors = first  # a public attribute: assigning it must not leave stale shifts behind
        before = _logits(svlm)
        next_shifts = random_vectors(2, 64, 3.0, seed=100 + seed)
        svlm.vectors = None
        old_id = id(first)
        del first
        second = VectorPack(next_shifts, meta)
        if id(second) == old_id:
            break
    svlm.vectors = second
    fresh = _svlm()
    fresh.vectors = second
    after = _logits(svlm)
    assert torch.equal(after, _logits(fresh)) and not torch.equal(after, before)


def test_shift_cache_keys_tell_every_layer_from_an_explicit_subset():
    pack = _svlm().vectors
    cache = ShiftCache()
    every = cache.shifts(pack, alpha=1.0, application="increment", layers=None)
    only_one = cache.shifts(pack, alpha=1.0, application="increment", layers=[1])
    assert sorted(every) == [0, 1] and sorted(only_one) == [1]
    assert len(cache) == 2
    with pytest.raises(VectorError, match="empty layer list"):
        select_layers([0, 1], [])


# ------------------------------------------------------------------------------- layers=[]
def test_an_empty_layer_list_is_refused_and_cannot_poison_later_calls():
    svlm = _svlm()
    expected = svlm.generate([image_chat()], max_new_tokens=3)
    with pytest.raises(ConfigError, match=r"layers=\[\]: layers must name at least one layer"):
        SteeringConfig(layers=[])
    with pytest.raises(ConfigError, match="at least one layer"):
        svlm.generate([image_chat()], config={"layers": []}, max_new_tokens=3)
    with pytest.raises(ConfigError, match="at least one layer"), svlm.steering(layers=()):
        pass
    later = svlm.generate([image_chat()], max_new_tokens=3)
    assert later.steering.layers == (0, 1) and later.texts == expected.texts
    assert torch.equal(later.sequences, expected.sequences)


# ------------------------------------------------------------------------------ negative alpha
@pytest.mark.parametrize("alpha", [-1.0, -0.01])
def test_negative_alpha_is_refused_in_every_setting(alpha):
    with pytest.raises(ConfigError, match=rf"alpha={alpha}.*must be >= 0.*-pack"):
        SteeringConfig(alpha=alpha)
    svlm = _svlm()
    with pytest.raises(ConfigError, match="must be >= 0"):
        svlm.chat(image_chat(), config={"alpha": alpha})
    with pytest.raises(ConfigError, match="must be >= 0"), svlm.steering(alpha=alpha):
        pass
    with pytest.raises(ConfigError, match="min_alpha"):
        SteeringLock(min_alpha=alpha)
    inverted = _svlm()
    inverted.vectors = -inverted.vectors  # the one way to invert: arithmetic on the pack itself
    assert inverted.generate([image_chat()], max_new_tokens=2).steering.applied


def test_a_pack_whose_stored_alpha_is_negative_is_refused_at_the_call():
    svlm = _svlm()
    svlm.vectors.meta = svlm.vectors.meta.model_copy(update={"alpha": -1.0})
    with pytest.raises(PackError, match="the pack's default alpha must be >= 0, got -1.0"):
        svlm.generate([image_chat()], max_new_tokens=2)
    assert svlm.generate([image_chat()], config={"alpha": 0.5}, max_new_tokens=2).steering.alpha == 0.5
    assert count_hooks(svlm.model) == 0


def test_calibrate_refuses_a_bad_alpha_before_any_sample_runs():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    consumed = []

    def samples():
        consumed.append(True)
        yield "how do I pick a lock"

    for bad, shown in (
        (-1.0, "must be >= 0, got -1.0"),
        (float("nan"), "must be a finite number, got nan"),
        (float("inf"), "must be a finite number, got inf"),
    ):
        with pytest.raises(ConfigError, match=f"calibrate: alpha {shown}"):
            calibrate(svlm, samples(), alpha=bad)
    with pytest.raises(ConfigError, match="application='both'"):
        calibrate(svlm, samples(), application="both")
    assert consumed == []


# ------------------------------------------------------------------------------ SteeringLock
def test_a_locked_wrapper_refuses_weaker_requests_before_any_work(monkeypatch):
    svlm = _svlm(config=SteeringConfig(alpha=0.8), lock=SteeringLock())
    monkeypatch.setattr(svlm, "encode", lambda *a, **k: pytest.fail("the model input was encoded"))
    weaker = [
        ({"alpha": 0.2}, "alpha=0.2 is below the deployer's alpha 0.8"),
        ({"alpha": 0.0}, "alpha=0.0 is below"),
        ({"enabled": False}, "enabled=False turns steering off"),
        ({"policy": "never"}, "policy='never' turns steering off"),
        ({"layers": [0]}, r"leave out required layers \[1\]"),
        ({"mode": "sample"}, "mode='sample' differs"),
        ({"application": "every_layer"}, "application='every_layer' differs from the deployer's 'increment'"),
        ({"step_scope": "prefill_only"}, "step_scope='prefill_only' steers fewer tokens"),
    ]
    for changes, message in weaker:
        with pytest.raises(SteeringLockedError, match=message) as caught:
            svlm.generate([image_chat()], config=changes, max_new_tokens=2)
        assert isinstance(caught.value, CMRMError) and isinstance(caught.value, PermissionError)
        with pytest.raises(SteeringLockedError), svlm.steering(**changes):
            pass
        with pytest.raises(SteeringLockedError):
            svlm.forward([image_chat()], config=SteeringConfig(**changes))
    assert svlm.resolve_config(alpha=2.0, policy="always").alpha == 2.0  # stronger is allowed
    assert count_hooks(svlm.model) == 0


def test_lock_floor_layer_set_and_allowed_changes():
    svlm = _svlm(lock=SteeringLock(min_alpha=0.5, layers=[1], allow_changes={"step_scope"}))
    assert svlm.resolve_config(alpha=0.5, layers=[1], step_scope="prefill_only").layers == (1,)
    with pytest.raises(SteeringLockedError, match="alpha=0.4 is below min_alpha 0.5"):
        svlm.resolve_config(alpha=0.4)
    with pytest.raises(SteeringLockedError, match="required layers"):
        svlm.resolve_config(layers=[0])
    exact = _svlm(lock=SteeringLock(layers=[1], exact_layers=True, allow_disable=True))
    with pytest.raises(SteeringLockedError, match=r"add layers \[0\]"):
        exact.resolve_config()  # the pack's default steers layers 0 and 1
    assert exact.resolve_config(layers=[1]).layers == (1,)
    assert exact.resolve_config(enabled=False).enabled is False
    # the pack's stored default alpha is the floor when the deployer sets none
    packed = _svlm(lock=SteeringLock())
    packed.vectors.meta = packed.vectors.meta.model_copy(update={"alpha": 0.6})
    with pytest.raises(SteeringLockedError, match="alpha=0.5 is below the deployer's alpha 0.6"):
        packed.resolve_config(alpha=0.5)
    with pytest.raises(ConfigError, match="allow_changes"):
        SteeringLock(allow_changes={"alpha"})
    with pytest.raises(ConfigError, match="lock must be a SteeringLock"):
        _svlm(lock={"min_alpha": 1.0})


def test_a_disabled_deployer_config_has_nothing_to_weaken():
    svlm = _svlm(config=SteeringConfig(enabled=False), lock=SteeringLock())
    assert svlm.resolve_config(alpha=0.0).alpha == 0.0
