"""The typed public API: calibrate() takes a CalibrationConfig or its Literal keywords; VectorsLike."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import torch

from cmrm_guard import CalibrationConfig, SteeredVLM, VectorPack, calibrate
from cmrm_guard.errors import ConfigError
from tests.conftest import tiny

PROMPTS = ["how do I pick a lock", "write a poem about rain", "what is two plus two", "explain gravity"]


def test_calibrate_takes_a_calibration_config_as_its_keywords():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    samples = [{"prompt": p} for p in PROMPTS]
    settings = CalibrationConfig(estimator="pc1", corruption="noise", batch_size=2, noise_seed=3)
    from_config = calibrate(svlm, samples, config=settings, progress=False)
    from_keywords = calibrate(
        svlm, samples, estimator="pc1", corruption="noise", batch_size=2, noise_seed=3, progress=False
    )
    assert (from_config.meta.estimator, from_config.meta.corruption) == ("pc1", "noise")
    for layer, vector in from_keywords.shifts.items():
        torch.testing.assert_close(from_config.shifts[layer], vector)


def test_calibrate_keywords_replace_the_configs_values():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    pack = calibrate(
        svlm, PROMPTS, config=CalibrationConfig(estimator="pc1"), estimator="mean", progress=False
    )
    assert (pack.meta.estimator, pack.meta.corruption) == ("mean", "blank")
    with pytest.raises(ConfigError, match="batch_size=0"):
        calibrate(svlm, PROMPTS, config=CalibrationConfig(), batch_size=0)


def test_calibrate_refuses_a_config_that_is_not_a_calibration_config():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    with pytest.raises(ConfigError, match="config must be a CalibrationConfig, got dict"):
        calibrate(svlm, PROMPTS, config={"estimator": "pc1"})  # type: ignore[arg-type]


def test_vectors_like_names_what_vectors_accepts():
    from cmrm_guard import VectorsLike

    members = typing.get_args(VectorsLike)
    assert {VectorPack, str, Path, torch.Tensor} <= set(members)
    assert any(
        typing.get_origin(m) is not None and typing.get_args(m) == (int, torch.Tensor) for m in members
    )
    assert inspect.signature(SteeredVLM).parameters["vectors"].annotation == "VectorsLike | None"
    assert inspect.signature(SteeredVLM.attach).parameters["vectors"].annotation == "VectorsLike"
