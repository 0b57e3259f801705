"""Shared fixtures: tiny real VLMs of every registered architecture, built from configs."""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from cmrm_guard.testing import GENERIC_MODEL_TYPE, TINY_MODEL_TYPES, build_tiny_vlm, tiny_image  # noqa: E402

if importlib.util.find_spec("hypothesis") is not None:  # one profile for every property test
    import tests.hypothesis_profiles  # noqa: E402, F401

ADAPTER_TYPES = tuple(t for t in TINY_MODEL_TYPES if t != GENERIC_MODEL_TYPE)


@functools.cache
def _cached(model_type: str, dtype: torch.dtype):
    return build_tiny_vlm(model_type, seed=0, dtype=dtype)


def tiny(model_type: str, dtype: torch.dtype = torch.float32):
    """A cached (model, processor) pair; tests must not mutate it (cmrm-guard never does)."""
    return _cached(model_type, dtype)


def image_chat(text: str = "what is in this picture?", seed: int = 0, size: int = 32) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": tiny_image(seed, size)}, {"type": "text", "text": text}],
        }
    ]


def text_chat(text: str = "hello, how are you today?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def random_vectors(
    num_layers: int, hidden: int, scale: float = 1.0, seed: int = 1
) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {i: torch.randn(hidden, generator=generator) * scale for i in range(num_layers)}


@pytest.fixture(params=ADAPTER_TYPES)
def model_type(request) -> str:
    return request.param


@pytest.fixture(params=TINY_MODEL_TYPES)
def any_model_type(request) -> str:
    return request.param
