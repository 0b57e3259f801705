"""Test fixtures for cmrm-guard and for authors of adapters and integrations.

Everything here builds real transformers objects offline, in seconds, on a CPU:

- :func:`build_tiny_vlm` / :func:`save_tiny_vlm` / :func:`load_tiny_processor`: tiny, randomly
  initialised ``*ForConditionalGeneration`` models of every supported architecture, built from their
  real config classes with their real processors (:data:`TINY_MODEL_TYPES`);
- :func:`tiny_image`: small deterministic RGB images;
- :class:`ScriptedReplies`: a logits processor that forces scripted replies, so an agent pipeline can
  be tested end to end on a model that otherwise emits gibberish.

A third-party adapter is tested the way cmrm-guard tests its own::

    from cmrm_guard import SteeredVLM
    from cmrm_guard.testing import build_tiny_vlm, tiny_image

    model, processor = build_tiny_vlm("qwen2_vl")
    svlm = SteeredVLM(model, processor)
"""

from __future__ import annotations

from cmrm_guard.testing.images import tiny_image
from cmrm_guard.testing.models import (
    GENERIC_MODEL_TYPE,
    TEXT_LAYERS,
    TINY_MODEL_TYPES,
    VISION_LAYERS,
    build_processor_without_video,
    build_tiny_vlm,
    load_tiny_processor,
    save_tiny_vlm,
)
from cmrm_guard.testing.scripted import ScriptedReplies

__all__ = [
    "GENERIC_MODEL_TYPE",
    "TEXT_LAYERS",
    "TINY_MODEL_TYPES",
    "VISION_LAYERS",
    "ScriptedReplies",
    "build_processor_without_video",
    "build_tiny_vlm",
    "load_tiny_processor",
    "save_tiny_vlm",
    "tiny_image",
]
