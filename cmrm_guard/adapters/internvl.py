"""InternVL (transformers-native checkpoints such as ``OpenGVLab/InternVL3-1B-hf``).

Decoder: ``model.language_model.layers``. Image placeholder: ``<img><IMG_CONTEXT>...</img>``, the
context token repeated per image patch. Remote-code InternVL checkpoints (``trust_remote_code``) have
another layout: use their ``-hf`` conversions or pass ``decoder_path=``.
"""

from __future__ import annotations

from cmrm_guard.adapters.base import VLMAdapter
from cmrm_guard.adapters.registry import register_adapter


@register_adapter("internvl")
class InternVLAdapter(VLMAdapter):
    """InternVL 2.5 / 3 (transformers-native)."""

    decoder_path = "model.language_model.layers"
    shares_prompt_prefix = True
