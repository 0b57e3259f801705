"""Typed, validated settings for CMRM steering.

`SteeringConfig` holds every knob of the method note (``../shared/docs/cmrm-method.md``): which CMRM
mode, how strong, which layers, which token positions, which decoding steps, and when to steer at
all. Configs are immutable values: :meth:`SteeringConfig.replace` returns a validated copy.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from cmrm_guard.errors import ConfigError

Mode = Literal["dataset", "sample"]
Positions = Literal["last", "all"]
StepScope = Literal["all_steps", "prefill_only"]
Corruption = Literal["blank", "noise"]
Application = Literal["every_layer", "increment"]
Policy = Literal["images", "always", "never"]
Estimator = Literal["mean", "pc1"]


def _explain(error: ValidationError, cls_name: str) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "value"
        given = item.get("input")
        expected = item["msg"].removeprefix("Value error, ")
        if item["type"] == "literal_error":
            expected = "expected one of " + item["ctx"]["expected"]
        elif item["type"] == "extra_forbidden":
            expected = f"unknown setting; valid settings: {', '.join(sorted(_FIELDS[cls_name]))}"
        parts.append(f"{where}={given!r}: {expected}")
    return f"invalid {cls_name}: " + "; ".join(parts)


_FIELDS: dict[str, set[str]] = {}


class _Settings(BaseModel):
    """Base of our configs: frozen, no unknown keys, errors raised as `ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise ConfigError(_explain(error, type(self).__name__)) from None

    def replace(self, **changes: Any) -> _Settings:
        """Return a validated copy with ``changes`` applied (``None`` values are kept as given)."""
        return type(self)(**{**self.model_dump(), **changes})


class SteeringConfig(_Settings):
    """How CMRM is applied at inference time.

    Attributes:
        mode: ``"dataset"`` adds precomputed shift vectors (a vector pack, zero extra passes);
            ``"sample"`` computes each input's own shift from its text-only and corrupted twins
            (one extra batched prefill per call).
        alpha: strength; the shift added is ``alpha * v``. ``None`` takes the pack's stored
            default (1.0 when there is none).
        application: ``None`` takes the pack's stored form (``"increment"`` when there is none).
            ``"increment"`` adds ``v^l - v^(l-1)`` at each steered layer so the
            accumulated shift at layer ``l`` is about ``alpha * v^l``; ``"every_layer"`` adds
            ``v^l`` at every layer (the paper's literal form, which stacks shifts: use alpha ~0.1-0.2).
        layers: decoder layer indices to steer; ``None`` steers every layer the vectors cover
            (sample mode: every decoder layer).
        positions: ``"last"`` steers the last prompt token of each row; ``"all"`` every prompt token.
        step_scope: ``"all_steps"`` also steers every generated token; ``"prefill_only"`` only the prompt.
        corruption: uninformative image used for the corrupted twin (sample mode and calibration):
            ``"blank"`` (constant at the processor's mean pixel) or ``"noise"`` (seeded Gaussian noise).
        policy: ``"images"`` steers only conversations that contain an image (text-only inputs are
            what the backbone was aligned on and stay bit-identical); ``"always"``; ``"never"``.
        enabled: master switch; ``False`` runs the unsteered model.
        noise_seed: seed of the ``"noise"`` corruption, so sample-level steering is deterministic.
    """

    mode: Mode = "dataset"
    alpha: float | None = None
    application: Application | None = None
    layers: tuple[int, ...] | None = None
    positions: Positions = "last"
    step_scope: StepScope = "all_steps"
    corruption: Corruption = "blank"
    policy: Policy = "images"
    enabled: bool = True
    noise_seed: int = 0

    @field_validator("alpha")
    @classmethod
    def _alpha_is_finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"alpha must be a finite number, got {value!r}")
        return value

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_are_indices(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, int | str) or not hasattr(value, "__iter__"):
            raise ValueError(f"layers must be a list of layer indices or None, got {value!r}")
        items = list(value)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"layers must hold integers, got {item!r}")
            if item < 0:
                raise ValueError(f"layer indices must be >= 0, got {item}")
        if len(set(items)) != len(items):
            raise ValueError(f"layers holds duplicates: {items}")
        return tuple(sorted(items))


class CalibrationConfig(_Settings):
    """How dataset-level shift vectors are estimated.

    Attributes:
        estimator: ``"mean"`` averages the per-sample differences ``h_text - h_corrupt``; ``"pc1"``
            takes their first principal component, signed to agree with the mean and scaled to the
            mean's norm.
        corruption: uninformative image of the corrupted twin (``"blank"`` or ``"noise"``).
        batch_size: samples per forward pass (each sample makes two rows: its two twins).
        noise_seed: seed of the ``"noise"`` corruption.
    """

    estimator: Estimator = "mean"
    corruption: Corruption = "blank"
    batch_size: int = 8
    noise_seed: int = 0

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")
        return value


for _cls in (SteeringConfig, CalibrationConfig):
    _FIELDS[_cls.__name__] = set(_cls.model_fields)
