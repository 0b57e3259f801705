"""What the benchmarks share: the SmolLM2-135M-shaped model, timing helpers, result output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

SMOLLM2_135M: dict[str, int] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 4096,
}
"""Decoder shape of SmolLM2-135M-Instruct (the backbone of the project's model organism)."""


LLAVA_1_5_GEOMETRY = (336, 14)
"""LLaVA-1.5's image size and patch size: 576 image tokens per image."""


def bench_vlm(seed: int = 0, image_geometry: tuple[int, int] | None = None) -> tuple[Any, Any]:
    """A LLaVA whose language decoder has SmolLM2-135M's shape (random weights) and a tiny CLIP
    tower: per-token compute is that of the real 135M backbone, nothing is downloaded.

    ``image_geometry``: ``(image_size, patch_size)``; default 32 px / 8 px patches (16 image
    tokens), :data:`LLAVA_1_5_GEOMETRY` for LLaVA-1.5's 576."""
    from cmrm_guard.testing import build_tiny_vlm

    torch.manual_seed(seed)
    return build_tiny_vlm("llava", text_overrides=SMOLLM2_135M, image_geometry=image_geometry)


def random_vectors(scale: float = 0.01, seed: int = 0) -> dict[int, torch.Tensor]:
    """Random per-layer vectors of the benchmark model's shape (timing does not depend on norms)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, layers = SMOLLM2_135M["hidden_size"], SMOLLM2_135M["num_hidden_layers"]
    return {i: torch.randn(hidden, generator=generator) * scale for i in range(layers)}


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_per_call(fn: Callable[[], object], calls: int = 2000, repeats: int = 7) -> float:
    """Best-of-``repeats`` mean seconds per call of ``fn`` (a microbenchmark)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def report(results: Mapping[str, float], output: Path, precision: int = 4) -> None:
    """Print ``results`` as aligned rows and write them as JSON to ``output``."""
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:10.{precision}f}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(dict(results), indent=2))
