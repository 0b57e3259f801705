"""The shared prompt prefix (cmrm_guard/shared_prefix.py): run once, exact, and only where safe."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import image_chat, tiny

import cmrm_guard.shared_prefix as shared_prefix
import cmrm_guard.steered as steered_module
from cmrm_guard import SteeredVLM, calibrate, count_hooks
from cmrm_guard.errors import ConversationError
from cmrm_guard.shared_prefix import common_prefix_length, image_runs, image_safe_length
from cmrm_guard.testing import GENERIC_MODEL_TYPE, build_tiny_vlm, tiny_image

PROMPTS = ["what is this?", "describe the picture in many words please", "hi", "count the things"]


@pytest.fixture
def always_share(monkeypatch):
    """Share every prefix the rules allow, whatever its length (tiny models' prompts are short)."""
    monkeypatch.setattr(shared_prefix, "FORWARD_COST_TOKENS", -(10**9))


@pytest.fixture
def shared_calls(monkeypatch) -> list[bool]:
    """Records, per twin pass, whether the shared-prefix path ran."""
    calls: list[bool] = []
    original = steered_module.shared_prefix_states

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(steered_module, "shared_prefix_states", spy)
    return calls


def _twins(svlm: SteeredVLM, chats, corruption: str = "blank"):
    text = [svlm.adapter.text_only_twin(c) for c in chats]
    corrupt = [svlm.adapter.corrupted_twin(c, svlm.processor, corruption, 0) for c in chats]
    return text + corrupt


@pytest.mark.parametrize("rows", [1, 3])
def test_shared_prefix_equals_one_plain_forward(model_type, rows, always_share):
    model, processor = tiny(model_type, torch.float64)
    svlm = SteeredVLM(model, processor)
    twins = _twins(svlm, [image_chat(p, seed=i) for i, p in enumerate(PROMPTS[:rows])])
    inputs = svlm.encode(twins)
    layers = list(range(svlm.num_layers))
    shared = shared_prefix.shared_prefix_states(
        svlm.prefix_model(), twins, inputs, layers, sharing_rows=range(rows, 2 * rows)
    )
    assert shared is not None, "the registered adapters share prefixes"
    plain = svlm._last_token_states_of(inputs, layers)
    text_gap = (plain[layers[-1]][0] - plain[layers[-1]][rows]).abs().max()
    assert text_gap > 1e-3  # the twins differ, so equality below is not trivial
    for layer in layers:
        torch.testing.assert_close(shared[layer], plain[layer], atol=1e-6, rtol=0)
    assert count_hooks(model) == 0


def test_multimodal_rope_needs_the_prefix_delta(always_share, monkeypatch):
    """Qwen-VL's text positions after an image are offset; dropping that offset is caught."""
    model, processor = tiny("qwen2_vl", torch.float64)
    svlm = SteeredVLM(model, processor)
    twins = _twins(svlm, [image_chat(p, seed=i) for i, p in enumerate(PROMPTS[:2])])
    inputs = svlm.encode(twins)
    plain = svlm._last_token_states_of(inputs, [0, 1])
    monkeypatch.setattr(type(svlm.adapter), "rope_position_delta", lambda self, model: None)
    wrong = shared_prefix.shared_prefix_states(
        svlm.prefix_model(), twins, inputs, [0, 1], sharing_rows=range(2, 4)
    )
    assert (wrong[1] - plain[1]).abs().max() > 1e-5


@pytest.mark.parametrize("model_type_", ["llava", "qwen2_vl"])
def test_batched_calibration_equals_one_by_one(model_type_, always_share, shared_calls):
    model, processor = tiny(model_type_, torch.float64)
    svlm = SteeredVLM(model, processor)
    samples = [{"prompt": p} for p in PROMPTS]
    batched = calibrate(svlm, samples, batch_size=4, progress=False)
    assert shared_calls == [True]
    one_by_one = calibrate(svlm, samples, batch_size=1, progress=False)
    for layer, vector in batched.shifts.items():
        torch.testing.assert_close(vector, one_by_one.shifts[layer], atol=1e-6, rtol=0)


def test_differing_images_are_never_shared(always_share):
    """Noise corruption draws a different image per sample: nothing is shared, the plain forward runs."""
    model, processor = tiny("llava", torch.float64)
    svlm = SteeredVLM(model, processor)
    chats = [image_chat(p, seed=i) for i, p in enumerate(PROMPTS[:3])]
    twins = [svlm.adapter.text_only_twin(c) for c in chats]
    twins += [svlm.adapter.corrupted_twin(c, processor, "noise", seed) for seed, c in enumerate(chats)]
    inputs = svlm.encode(twins)
    rows = shared_prefix.unpadded_rows(inputs)[3:]
    image_token = svlm.adapter.image_token_id(model)
    length = common_prefix_length(rows)
    assert image_runs(rows[0], image_token)[0][1] <= length  # the tokens agree past the image ...
    assert image_safe_length(length, rows, image_token, twins[3:]) == 0  # ... the pixels do not
    assert (
        shared_prefix.shared_prefix_states(svlm.prefix_model(), twins, inputs, [0], sharing_rows=range(3, 6))
        is None
    )


def test_image_safe_length_rules():
    image = 9
    row = torch.tensor([1, 2, image, image, image, 3, 4, image, image, 5, 6])
    other = torch.tensor([1, 2, image, image, image, 3, 4, image, image, 5, 6, 7])
    same = [image_chat("a", seed=0), image_chat("b", seed=0)]
    differ = [image_chat("a", seed=0), image_chat("b", seed=1)]
    assert image_runs(row, image) == [(2, 5), (7, 9)]
    assert image_safe_length(2, [row, other], image, differ) == 0  # images left in the suffixes
    assert image_safe_length(4, [row, other], image, same) == 0  # would split the first image
    assert image_safe_length(6, [row, other], image, same) == 0  # the second image in the suffix
    assert image_safe_length(10, [row, other], image, same) == 10  # every image, identical
    assert image_safe_length(10, [row, other], image, differ) == 0  # every image, but they differ
    assert image_safe_length(10, [row, other], None, differ) == 10  # no image token: text only
    text = [torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5])]
    assert image_safe_length(3, text, image, differ[:1]) == 3


def test_common_prefix_leaves_each_row_a_token_of_its_own():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5])]
    assert common_prefix_length(rows) == 2
    assert common_prefix_length([torch.tensor([1, 2, 3, 4])]) == 3
    assert common_prefix_length([torch.tensor([7]), torch.tensor([7, 8])]) == 0


def test_image_rows_outside_the_shared_group_are_refused(always_share):
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    chats = [image_chat(p, seed=i) for i, p in enumerate(PROMPTS[:2])]
    inputs = svlm.encode(chats)
    assert (
        shared_prefix.shared_prefix_states(svlm.prefix_model(), chats, inputs, [0], sharing_rows=[1]) is None
    )


def test_generic_fallback_does_not_share(always_share, shared_calls):
    model, processor = tiny(GENERIC_MODEL_TYPE)
    svlm = SteeredVLM(model, processor)
    svlm.twin_differences([image_chat(p) for p in PROMPTS[:3]], [0])
    assert shared_calls == [False]


def test_cost_rule_shares_only_where_it_saves(shared_calls):
    """Default rule: one short tiny prompt runs as one plain forward; a batch of prompts whose
    blank images are 64 tokens long shares them."""
    small = SteeredVLM(*tiny("llava"))
    small.twin_differences([image_chat(PROMPTS[0])], [0])
    big = SteeredVLM(*build_tiny_vlm("llava", image_geometry=(64, 8)))
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": tiny_image(i, 64)}, {"type": "text", "text": p}],
            }
        ]
        for i, p in enumerate(PROMPTS)
    ]
    big.twin_differences(chats, [0])
    assert shared_calls == [False, True]


def test_text_twins_are_checked_before_sharing(always_share):
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    with pytest.raises(ConversationError, match="image placeholder"):
        svlm.twin_differences([image_chat("look at <image> here"), image_chat("hi")], [0])
    assert count_hooks(model) == 0


@pytest.mark.parametrize("model_type_", ["llava", "qwen2_vl"])
def test_peft_model_shares_like_the_plain_forward(model_type_, monkeypatch, shared_calls):
    peft = pytest.importorskip("peft")
    model, processor = tiny(model_type_, torch.float64)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=r".*language_model.*\.(q_proj|v_proj)"
    )
    torch.manual_seed(0)
    svlm = SteeredVLM(peft.get_peft_model(copy.deepcopy(model), lora), processor)
    chats = [image_chat(p, seed=i) for i, p in enumerate(PROMPTS[:3])]
    monkeypatch.setattr(shared_prefix, "FORWARD_COST_TOKENS", -(10**9))
    shared = svlm.twin_differences(chats, [0, 1])
    monkeypatch.setattr(shared_prefix, "FORWARD_COST_TOKENS", 10**9)
    plain = svlm.twin_differences(chats, [0, 1])
    assert shared_calls == [True, False]
    for layer in (0, 1):
        torch.testing.assert_close(shared[layer], plain[layer], atol=1e-6, rtol=0)
