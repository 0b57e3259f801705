"""A peft LoRA VLM is wrapped like any other and steers like the same weights merged."""

from __future__ import annotations

import copy

import pytest
import torch

from cmrm_guard import SteeredVLM, SteeringConfig, count_hooks
from tests.conftest import image_chat, random_vectors, tiny

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("mode", ["dataset", "sample"])
def test_peft_model_steers_identically_to_merged_weights(model_type, mode):
    model, processor = tiny(model_type, torch.float64)
    base = copy.deepcopy(model)
    lora = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
    )
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(base, lora)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    vectors = random_vectors(2, model.config.get_text_config().hidden_size, 3.0)
    config = SteeringConfig(mode=mode, alpha=1.5)
    wrapped = SteeredVLM(peft_model, processor, vectors=vectors, config=config)
    reference = SteeredVLM(merged, processor, vectors=vectors, config=config)
    assert wrapped.layers is peft_model.get_base_model().model.language_model.layers
    batch = [image_chat(), image_chat("another question", 2)]
    torch.testing.assert_close(
        wrapped.forward(batch).logits, reference.forward(batch).logits, atol=1e-8, rtol=1e-8
    )
    with torch.no_grad():
        unsteered = peft_model(**wrapped.encode(batch)).logits
    assert not torch.allclose(wrapped.forward(batch).logits, unsteered)
    assert wrapped.chat(image_chat(), max_new_tokens=4) == reference.chat(image_chat(), max_new_tokens=4)
    assert count_hooks(peft_model) == 0
