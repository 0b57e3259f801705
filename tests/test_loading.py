"""SteeredVLM.from_pretrained on local folders written by save_pretrained (the Hub path is the same)."""

from __future__ import annotations

import pytest
import torch

from cmrm_guard import SteeredVLM, SteeringConfig
from cmrm_guard.errors import UnsupportedArchitectureError
from cmrm_guard.testing import TINY_MODEL_TYPES, build_tiny_vlm, load_tiny_processor, save_tiny_vlm
from tests.conftest import image_chat, random_vectors

NEEDS_VIDEO_PROCESSOR = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"}


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_from_pretrained_loads_a_saved_folder_and_steers(tmp_path, model_type):
    save_tiny_vlm(model_type, tmp_path, seed=3)
    original, processor = build_tiny_vlm(model_type, seed=3)
    kwargs = {}
    if model_type in NEEDS_VIDEO_PROCESSOR:
        # their AutoProcessor needs torchvision (absent here) for the video processor
        kwargs["processor"] = load_tiny_processor(tmp_path)
    hidden = original.config.get_text_config().hidden_size
    svlm = SteeredVLM.from_pretrained(
        tmp_path,
        vectors=random_vectors(2, hidden, 2.0),
        config=SteeringConfig(alpha=0.5),
        dtype=torch.float32,
        **kwargs,
    )
    assert svlm.model_id == str(tmp_path) and not svlm.model.training
    inputs = svlm.encode([image_chat()])
    with torch.no_grad():
        torch.testing.assert_close(svlm.model(**inputs).logits, original(**inputs).logits)
    assert svlm.generate([image_chat()], max_new_tokens=2).steering.applied


def test_from_pretrained_passes_transformers_kwargs(tmp_path):
    save_tiny_vlm("llava", tmp_path)
    svlm = SteeredVLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(svlm.model.parameters()).dtype == torch.bfloat16


def test_from_pretrained_names_the_processor_way_out(tmp_path):
    save_tiny_vlm("qwen2_vl", tmp_path)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(UnsupportedArchitectureError, match="pass processor="):
            SteeredVLM.from_pretrained(tmp_path)
    else:  # pragma: no cover - machines with torchvision load it directly
        SteeredVLM.from_pretrained(tmp_path)


def test_from_pretrained_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OSError):
        SteeredVLM.from_pretrained(tmp_path / "nope", local_files_only=True)


def test_from_pretrained_with_a_device_map(tmp_path):
    """accelerate dispatch (device_map) and our hooks coexist; shifts follow each layer's device."""
    pytest.importorskip("accelerate")
    save_tiny_vlm("llava", tmp_path)
    svlm = SteeredVLM.from_pretrained(tmp_path, device_map="cpu", vectors=random_vectors(2, 64, 2.0))
    out = svlm.generate([image_chat()], max_new_tokens=3)
    assert out.steering.applied and len(out.texts) == 1
