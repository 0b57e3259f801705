"""Qwen-VL family: ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``.

Decoder: ``model.language_model.layers`` (never ``model.visual.blocks``, which is deeper in the
real checkpoints). Image placeholder: ``<|vision_start|><|image_pad|>...<|vision_end|>``, the pad
repeated per merged patch, so a corrupted twin keeps the original image size (same token count).
``generate`` needs ``mm_token_type_ids`` (transformers 5.x) and ``image_grid_thw``: the processor
returns both and they are passed through.
"""

from __future__ import annotations

from cmrm_guard.adapters.base import VLMAdapter
from cmrm_guard.adapters.registry import register_adapter


@register_adapter("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
class QwenVLAdapter(VLMAdapter):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL."""

    decoder_path = "model.language_model.layers"
