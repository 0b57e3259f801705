"""Adapter registry, decoder location (never the vision tower), generic fallback, twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel

from cmrm_guard import SteeredVLM, SteeringConfig, count_hooks
from cmrm_guard.adapters import (
    GenericAdapter,
    VLMAdapter,
    corrupted_twin,
    get_adapter,
    register_adapter,
    registered_model_types,
    text_only_twin,
    unregister_adapter,
)
from cmrm_guard.adapters.base import module_path
from cmrm_guard.errors import AdapterRegistrationError, UnsupportedArchitectureError
from cmrm_guard.testing import GENERIC_MODEL_TYPE
from tests.conftest import image_chat, random_vectors, tiny

EXPECTED_ADAPTERS = {
    "llava": "LlavaAdapter",
    "llava_next": "LlavaAdapter",
    "qwen2_vl": "QwenVLAdapter",
    "qwen2_5_vl": "QwenVLAdapter",
    "qwen3_vl": "QwenVLAdapter",
    "internvl": "InternVLAdapter",
}


def test_every_required_architecture_is_registered():
    assert set(EXPECTED_ADAPTERS) <= set(registered_model_types())
    for model_type, name in EXPECTED_ADAPTERS.items():
        assert get_adapter(model_type).name == name
    assert GENERIC_MODEL_TYPE not in registered_model_types()
    assert isinstance(get_adapter(GENERIC_MODEL_TYPE), GenericAdapter)


def test_decoder_layers_are_the_language_decoder_not_the_vision_tower(any_model_type):
    model, _ = tiny(any_model_type)
    layers = get_adapter(model).decoder_layers(model)
    text_layers = model.config.get_text_config().num_hidden_layers
    vision = model.config.vision_config
    vision_layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", None)
    assert len(layers) == text_layers != vision_layers  # fixtures make the vision tower deeper
    path = module_path(model, layers)
    assert "language_model" in path and "vision" not in path and "visual" not in path


def test_generic_fallback_steers_a_real_vlm_without_an_adapter():
    model, processor = tiny(GENERIC_MODEL_TYPE)
    svlm = SteeredVLM(
        model, processor, vectors=random_vectors(2, model.config.get_text_config().hidden_size, 3.0)
    )
    assert isinstance(svlm.adapter, GenericAdapter)
    out = svlm.generate([image_chat()], max_new_tokens=3)
    assert out.steering.applied
    with torch.no_grad():
        base = model(**svlm.encode([image_chat()])).logits
    assert not torch.allclose(svlm.forward([image_chat()]).logits, base)
    assert count_hooks(model) == 0


def test_decoder_path_pointing_at_the_vision_tower_is_refused():
    model, processor = tiny(GENERIC_MODEL_TYPE)
    vision_path = next(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and "vision" in name
    )
    with pytest.raises(UnsupportedArchitectureError, match="not the language decoder|vision side"):
        SteeredVLM(model, processor, decoder_path=vision_path)
    with pytest.raises(UnsupportedArchitectureError, match="no module at decoder_path='model.nope'"):
        SteeredVLM(model, processor, decoder_path="model.nope")


class OpaqueConfig(PretrainedConfig):
    model_type = "opaque_vlm_for_tests"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.text_config = LlamaConfig(
            num_hidden_layers=2,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=32,
        )


class OpaqueVLM(PreTrainedModel):
    """A VLM whose decoder transformers' get_decoder() cannot find."""

    config_class = OpaqueConfig

    def __init__(self, config):
        super().__init__(config)
        self.vision = nn.Module()
        self.vision.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(4)])
        self.text = nn.Module()
        self.text.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])

    def forward(self, hidden):
        for block in self.text.blocks:
            hidden = block(hidden)
        return hidden


def test_unidentifiable_decoder_gets_an_error_naming_the_escape_hatch():
    model = OpaqueVLM(OpaqueConfig())
    with pytest.raises(UnsupportedArchitectureError, match=r"decoder_path=.*register_adapter"):
        SteeredVLM(model, processor=None)
    svlm = SteeredVLM(model, processor=None, decoder_path="text.blocks")
    assert svlm.num_layers == 2 and svlm.layers is model.text.blocks


def test_third_party_registration_with_one_decorator_and_duplicates_refused():
    try:

        @register_adapter("opaque_vlm_for_tests")
        class OpaqueAdapter(VLMAdapter):
            decoder_path = "text.blocks"

        model = OpaqueVLM(OpaqueConfig())
        assert isinstance(get_adapter(model), OpaqueAdapter)
        assert SteeredVLM(model, processor=None).layers is model.text.blocks
        with pytest.raises(
            AdapterRegistrationError, match="'opaque_vlm_for_tests' already has adapter OpaqueAdapter"
        ):

            @register_adapter("opaque_vlm_for_tests")
            class Again(VLMAdapter):
                pass

        with pytest.raises(AdapterRegistrationError, match="already has adapter LlavaAdapter"):

            @register_adapter("llava")
            class Hijack(VLMAdapter):
                pass

        with pytest.raises(AdapterRegistrationError, match="model_type"):
            register_adapter()
    finally:
        unregister_adapter("opaque_vlm_for_tests")
    assert get_adapter("llava").name == "LlavaAdapter"


def test_twins_drop_or_blank_the_image_and_keep_the_text():
    chat = image_chat("describe it", size=40)
    text = text_only_twin(chat)
    assert text[0]["content"] == [{"type": "text", "text": "describe it"}]
    blank = corrupted_twin(chat, "blank", mean=(0.5, 0.25, 1.0), std=(0.2, 0.2, 0.2))
    image = blank[0]["content"][0]["image"]
    pixels = np.asarray(image).reshape(-1, 3)
    assert image.size == (40, 40) and {tuple(p) for p in pixels.tolist()} == {(128, 64, 255)}
    noise_a = corrupted_twin(chat, "noise", mean=(0.5,) * 3, std=(0.2,) * 3, seed=3)[0]["content"][0]["image"]
    noise_b = corrupted_twin(chat, "noise", mean=(0.5,) * 3, std=(0.2,) * 3, seed=3)[0]["content"][0]["image"]
    assert np.array_equal(np.asarray(noise_a), np.asarray(noise_b)) and np.asarray(noise_a).std() > 10
    assert chat[0]["content"][0]["image"] is not image  # the input conversation is not modified


def test_twin_prompts_render_through_each_chat_template(model_type):
    model, processor = tiny(model_type)
    svlm = SteeredVLM(model, processor)
    chat = image_chat("what is this")
    adapter = svlm.adapter
    image_id = adapter.image_token_id(model)
    mm = svlm.encode([chat])["input_ids"]
    text = svlm.encode_text_only([adapter.text_only_twin(chat)])["input_ids"]
    corrupt = svlm.encode([adapter.corrupted_twin(chat, processor, "blank")])["input_ids"]
    assert image_id is not None and (mm == image_id).any() and not (text == image_id).any()
    assert torch.equal(mm, corrupt)  # same size image: same tokens, only pixels differ
    assert text.shape[1] < mm.shape[1]


def test_sample_mode_steers_every_architecture(any_model_type):
    model, processor = tiny(any_model_type)
    svlm = SteeredVLM(model, processor, config=SteeringConfig(mode="sample"))
    with torch.no_grad():
        base = model(**svlm.encode([image_chat()])).logits
    steered = svlm.forward([image_chat()]).logits
    assert not torch.allclose(base, steered)
    assert count_hooks(model) == 0


@pytest.mark.parametrize(
    "model_type, token", [("llava", "<image>"), ("llava_next", "<image>"), ("qwen2_vl", "<|image_pad|>")]
)
def test_placeholder_tokens_typed_as_text_are_refused_by_name(model_type, token):
    from cmrm_guard.adapters import conversation
    from cmrm_guard.errors import PlaceholderTextError

    model, processor = tiny(model_type)
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    for chat in (
        [{"role": "user", "content": f"what does {token} mean in a chat template?"}],
        image_chat(f"and {token} here?"),
    ):
        with pytest.raises(PlaceholderTextError, match="image placeholder"):
            steered.chat(chat, max_new_tokens=2)
    assert count_hooks(model) == 0
    assert token in conversation.placeholder_tokens(processor)
    assert isinstance(
        steered.chat([{"role": "user", "content": "what does <b>image</b> mean?"}], max_new_tokens=2), str
    )
