"""Qwen-VL family: ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``.

Decoder: ``model.language_model.layers`` (never ``model.visual.blocks``, which is deeper in the
real checkpoints). Image placeholder: ``<|vision_start|><|image_pad|>...<|vision_end|>``, the pad
repeated per merged patch, so a corrupted twin keeps the original image size (same token count).
``generate`` needs ``mm_token_type_ids`` (transformers 5.x) and ``image_grid_thw``: the processor
returns both and they are passed through.
"""

from __future__ import annotations

import torch
from torch import nn

from cmrm_guard.adapters.base import VLMAdapter, unwrap_model
from cmrm_guard.adapters.registry import register_adapter


@register_adapter("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
class QwenVLAdapter(VLMAdapter):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL."""

    decoder_path = "model.language_model.layers"
    shares_prompt_prefix = True

    def rope_position_delta(self, model: nn.Module) -> torch.Tensor | None:
        """M-RoPE: text after the last forward's prompt sits at ``position + delta`` on all three
        axes; the model stores that delta (``rope_deltas``) when it encodes a prompt."""
        return getattr(getattr(unwrap_model(model), "model", None), "rope_deltas", None)
