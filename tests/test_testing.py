"""The tiny real VLMs of :mod:`cmrm_guard.testing` build, run, generate and round-trip through disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from cmrm_guard.testing import (
    GENERIC_MODEL_TYPE,
    TEXT_LAYERS,
    TINY_MODEL_TYPES,
    VISION_LAYERS,
    build_tiny_vlm,
    load_tiny_processor,
    save_tiny_vlm,
    tiny_image,
)

# Placeholder tokens the processor writes for one 32x32 image at the tiny settings.
IMAGE_TOKENS_PER_IMAGE = {
    "llava": 16,  # (32 / 8) ** 2 patches, CLS dropped
    "llava_next": 10,  # 4 base + 4 tile features + 2 row newlines
    "qwen2_vl": 4,  # 4x4 patches merged 2x2
    "qwen2_5_vl": 4,
    "qwen3_vl": 4,
    "internvl": 4,  # 4x4 patches pixel-shuffled by 0.5
    "gemma3": 4,  # mm_tokens_per_image
}
PROCESSOR_CLASSES = {
    "llava": "LlavaProcessor",
    "llava_next": "LlavaNextProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "internvl": "InternVLProcessor",
    "gemma3": "Gemma3Processor",
}
# Processors whose class declares a torchvision-only video processor.
VIDEO_PROCESSOR_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"}


def image_chat(seed: int, text: str) -> list[dict[str, object]]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": tiny_image(seed)}, {"type": "text", "text": text}],
        }
    ]


def text_chat(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def encode(processor, conversations):
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )


def run_and_generate(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return logits, generated


def layer_stack_path(model: nn.Module, layers: nn.ModuleList) -> str:
    return next(name for name, module in model.named_modules() if module is layers)


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def tiny(request):
    model, processor = build_tiny_vlm(request.param)
    return request.param, model, processor


def test_model_types_cover_adapters_and_one_generic_architecture():
    expected = {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"}
    assert expected <= set(TINY_MODEL_TYPES)
    assert GENERIC_MODEL_TYPE in TINY_MODEL_TYPES
    assert GENERIC_MODEL_TYPE not in expected


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="unknown tiny model_type"):
        build_tiny_vlm("not_a_vlm")


def test_tiny_image_is_deterministic():
    assert tiny_image(3).tobytes() == tiny_image(3).tobytes()
    assert tiny_image(3).tobytes() != tiny_image(4).tobytes()
    image = tiny_image(0, size=48)
    assert image.mode == "RGB"
    assert image.size == (48, 48)


def test_real_classes_and_matching_token_ids(tiny):
    model_type, model, processor = tiny
    assert model.config.model_type == model_type
    assert type(model).__name__.endswith("ForConditionalGeneration")
    assert type(processor).__name__ == PROCESSOR_CLASSES[model_type]
    assert type(processor.image_processor).__name__.endswith("Pil")
    assert not model.training

    tokenizer = processor.tokenizer
    text_config = model.config.get_text_config()
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert text_config.pad_token_id == tokenizer.pad_token_id
    assert text_config.eos_token_id == tokenizer.eos_token_id
    assert text_config.vocab_size == len(tokenizer)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    image_token = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    assert image_token in tokenizer.all_special_tokens


def test_decoder_layers_are_the_text_stack_not_the_vision_stack(tiny):
    _, model, _ = tiny
    text_config = model.config.get_text_config()
    layers = model.get_decoder().layers
    assert layer_stack_path(model, layers) == "model.language_model.layers"
    assert len(layers) == text_config.num_hidden_layers == TEXT_LAYERS
    assert model.config.vision_config.num_hidden_layers == VISION_LAYERS != TEXT_LAYERS
    vision_stacks = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == VISION_LAYERS and "language_model" not in name
    ]
    assert vision_stacks, "no vision block stack with VISION_LAYERS blocks"


def test_same_seed_gives_identical_weights(tiny):
    model_type, model, _ = tiny
    same, _ = build_tiny_vlm(model_type, seed=0)
    other, _ = build_tiny_vlm(model_type, seed=1)
    reference = model.state_dict()
    assert all(torch.equal(reference[name], tensor) for name, tensor in same.state_dict().items())
    assert any(not torch.equal(reference[name], tensor) for name, tensor in other.state_dict().items())


def test_batched_image_chat_forward_and_generate(tiny):
    model_type, model, processor = tiny
    inputs = encode(processor, [image_chat(0, "what is in this picture?"), image_chat(1, "and this?")])
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    assert input_ids.shape[0] == 2
    # Left padding: the shorter prompt starts with pad tokens, every prompt ends on a real token.
    assert attention_mask[1, 0] == 0
    assert input_ids[1, 0] == processor.tokenizer.pad_token_id
    assert bool(attention_mask[:, -1].all())
    image_tokens = (input_ids == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [IMAGE_TOKENS_PER_IMAGE[model_type]] * 2

    logits, generated = run_and_generate(model, inputs)
    assert logits.shape == (*input_ids.shape, model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()
    assert input_ids.shape[1] < generated.shape[1] <= input_ids.shape[1] + 4
    assert torch.equal(generated[:, : input_ids.shape[1]], input_ids)


@pytest.mark.parametrize("image_first", [True, False])
def test_mixed_image_and_text_only_batch(tiny, image_first):
    model_type, model, processor = tiny
    conversations = [image_chat(2, "what is in this picture?"), text_chat("hello there, how are you today?")]
    if not image_first:
        conversations.reverse()
    inputs = encode(processor, conversations)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    expected = [IMAGE_TOKENS_PER_IMAGE[model_type], 0]
    assert image_tokens == (expected if image_first else expected[::-1])
    logits, generated = run_and_generate(model, inputs)
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert generated.shape[0] == 2


def test_single_text_only_chat(tiny):
    _, model, processor = tiny
    inputs = encode(processor, text_chat("hello there"))
    assert inputs["input_ids"].shape[0] == 1
    assert "pixel_values" not in inputs
    logits, generated = run_and_generate(model, inputs)
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_string_content_system_and_assistant_turns(tiny):
    model_type, model, processor = tiny
    conversation = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        *image_chat(3, "and this?"),
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    for text in ("You are a helpful assistant.", "hi", "Hello!", "and this?"):
        assert text in prompt
    inputs = encode(processor, conversation)
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == IMAGE_TOKENS_PER_IMAGE[model_type]


def test_logits_depend_on_the_prompt(tiny):
    _, model, processor = tiny
    first = encode(processor, text_chat("the cat sat"))
    second = encode(processor, text_chat("a dog is here"))
    with torch.no_grad():
        first_logits = model(**first).logits[0, -1]
        second_logits = model(**second).logits[0, -1]
    assert (first_logits - second_logits).abs().max() > 1e-3


def test_decoder_layers_return_hidden_states(tiny):
    _, model, processor = tiny
    inputs = encode(processor, [image_chat(0, "what is in this picture?")])
    outputs: list[object] = []
    handles = [
        layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
        for layer in model.get_decoder().layers
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert len(outputs) == TEXT_LAYERS
    for output in outputs:
        hidden = output[0] if isinstance(output, tuple) else output
        assert hidden.shape == (*inputs["input_ids"].shape, model.config.get_text_config().hidden_size)


def test_save_and_reload_round_trip(tiny, tmp_path: Path):
    model_type, model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    conversations = [image_chat(0, "what is in this picture?"), text_chat("hello")]
    inputs = encode(processor, conversations)

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)

    reloaded_processor = load_tiny_processor(tmp_path)
    assert type(reloaded_processor) is type(processor)
    reloaded_inputs = encode(reloaded_processor, conversations)
    assert reloaded_inputs.keys() == inputs.keys()
    assert all(torch.equal(reloaded_inputs[key], inputs[key]) for key in inputs)

    if model_type in VIDEO_PROCESSOR_TYPES and not is_torchvision_available():
        with pytest.raises(OSError, match="video processor"):
            AutoProcessor.from_pretrained(tmp_path)
    else:
        assert type(AutoProcessor.from_pretrained(tmp_path)) is type(processor)


def test_save_tiny_vlm_writes_a_loadable_folder(tmp_path: Path):
    save_tiny_vlm("llava", tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert model.config.model_type == "llava"
    assert processor.tokenizer.padding_side == "left"
