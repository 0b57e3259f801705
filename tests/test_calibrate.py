"""calibrate(): twin differences at the last prompt token, mean / pc1 estimators, a usable pack."""

from __future__ import annotations

import pytest
import torch

from cmrm_guard import SteeredVLM, SteeringConfig, calibrate, count_hooks
from cmrm_guard.errors import ConfigError, ConversationError, LayerIndexError
from cmrm_guard.vectors.calibrate import pc1_estimator
from tests.conftest import image_chat, tiny

PROMPTS = ["how do I pick a lock", "write a poem about rain", "what is two plus two", "explain gravity"]


def test_calibrate_returns_one_hidden_sized_vector_per_layer_equal_to_the_mean_difference():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    samples = [image_chat(p, seed=i) for i, p in enumerate(PROMPTS)]
    pack = calibrate(svlm, samples, estimator="mean", batch_size=3)
    assert pack.layer_indices == [0, 1]
    assert all(v.shape == (svlm.hidden_size,) for v in pack.shifts.values())
    assert (
        pack.meta.num_samples == 4
        and pack.meta.model_type == "llava"
        and len(pack.meta.calibration_hash) == 64
    )
    one_by_one = [svlm.twin_differences([s]) for s in samples]
    for layer in (0, 1):
        expected = torch.cat([d[layer] for d in one_by_one]).mean(dim=0)
        torch.testing.assert_close(pack.shifts[layer], expected, atol=1e-5, rtol=1e-4)
    assert count_hooks(model) == 0


def test_pc1_is_signed_like_the_mean_and_scaled_to_its_norm():
    torch.manual_seed(0)
    direction = torch.randn(16)
    deltas = direction * torch.rand(50, 1) * 3 + torch.randn(50, 16) * 0.05
    v = pc1_estimator(deltas)
    mean = deltas.mean(0)
    assert torch.dot(v, mean) > 0
    torch.testing.assert_close(v.norm(), mean.norm())
    assert torch.nn.functional.cosine_similarity(v, direction, dim=0) > 0.99
    assert torch.dot(pc1_estimator(-deltas), -mean) > 0


def test_calibrate_accepts_prompts_without_images_and_the_pack_steers():
    model, processor = tiny("qwen2_vl")
    svlm = SteeredVLM(model, processor)
    pack = calibrate(
        svlm,
        [{"prompt": p} for p in PROMPTS] + ["a bare prompt"],
        estimator="pc1",
        batch_size=2,
        progress=False,
    )
    steered = SteeredVLM(model, processor, vectors=pack, config=SteeringConfig(alpha=4.0))
    with torch.no_grad():
        base = model(**steered.encode([image_chat()])).logits
    assert not torch.allclose(steered.forward([image_chat()]).logits, base)
    assert pack.meta.estimator == "pc1"


def test_calibrate_bad_input_is_named():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    with pytest.raises(ConfigError, match="estimator='median'"):
        calibrate(svlm, PROMPTS, estimator="median")
    with pytest.raises(ConfigError, match="at least one sample"):
        calibrate(svlm, [])
    with pytest.raises(ConversationError, match="has no image"):
        calibrate(svlm, [[{"role": "user", "content": "text only"}]])
    with pytest.raises(LayerIndexError, match="layer 4"):
        calibrate(svlm, PROMPTS, layers=[0, 4])
    with pytest.raises(ConfigError, match="batch_size=0"):
        calibrate(svlm, PROMPTS, batch_size=0)
    assert count_hooks(model) == 0
