"""Typed, validated settings for CMRM steering.

`SteeringConfig` holds every knob of the method note (``docs/steering.md``): which CMRM
mode, how strong, which layers, which token positions, which decoding steps, and when to steer at
all. Configs are immutable values: :meth:`SteeringConfig.replace` returns a validated copy.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from typing_extensions import Self  # typing.Self needs Python 3.11

from cmrm_guard.errors import ConfigError, SteeringLockedError

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

    def replace(self, **changes: Any) -> Self:
        """Return a validated copy with ``changes`` applied (``None`` values are kept as given).

        The copy's set fields (``model_fields_set``) are this config's set fields plus ``changes``,
        so merging it over other settings (``model_dump(exclude_unset=True)``) carries only those.
        """
        return type(self)(**{**self.model_dump(exclude_unset=True), **changes})


def check_alpha(value: float | None, where: str = "alpha") -> float | None:
    """``value`` if it is ``None`` or a finite number >= 0, else a ``ValueError`` naming ``where``.

    Negative strengths are refused in every setting: ``-alpha * v`` pushes representations away
    from the text-only state, the opposite of CMRM. The one way to invert a pack is arithmetic on
    the pack itself (``-pack``), a deliberate object in the deployer's code, never a request setting.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(
            f"{where} must be >= 0, got {value!r}: a negative strength inverts the shift; to invert a "
            "pack on purpose, steer with -pack"
        )
    return value


def _layer_tuple(value: Any) -> tuple[int, ...] | None:
    """Validated, sorted layer indices (``None`` stays ``None``; an empty list is refused)."""
    if value is None:
        return None
    if isinstance(value, int | str | bytes) or not hasattr(value, "__iter__"):
        raise ValueError(f"layers must be a list of layer indices or None, got {value!r}")
    items = list(value)
    if not items:
        raise ValueError(
            "layers must name at least one layer, got an empty list: an empty layer set would steer "
            "nothing while the call is recorded as steered (use None for every layer, enabled=False "
            "to turn steering off)"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"layers must hold integers, got {item!r}")
        if item < 0:
            raise ValueError(f"layer indices must be >= 0, got {item}")
    if len(set(items)) != len(items):
        raise ValueError(f"layers holds duplicates: {items}")
    return tuple(sorted(items))


class SteeringConfig(_Settings):
    """How CMRM is applied at inference time.

    Attributes:
        mode: ``"dataset"`` adds precomputed shift vectors (a vector pack, zero extra passes);
            ``"sample"`` computes each input's own shift from its text-only and corrupted twins
            (one extra batched prefill per call).
        alpha: strength, a finite number >= 0; the shift added is ``alpha * v``. ``None`` takes the
            attached pack's stored default, in both modes (1.0 when there is no pack). Negative
            values are refused (:func:`check_alpha`).
        application: ``None`` takes the attached pack's stored form, in both modes
            (``"increment"`` when there is no pack).
            ``"increment"`` adds ``v^l - v^(l-1)`` at each steered layer so the
            accumulated shift at layer ``l`` is about ``alpha * v^l``; ``"every_layer"`` adds
            ``v^l`` at every layer (the paper's literal form, which stacks shifts: use alpha ~0.1-0.2).
        layers: decoder layer indices to steer (at least one); ``None`` steers every layer the
            vectors cover (sample mode: every decoder layer).
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
    def _alpha_is_a_strength(cls, value: float | None) -> float | None:
        return check_alpha(value)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_are_indices(cls, value: Any) -> Any:
        return _layer_tuple(value)


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


#: Settings a :class:`SteeringLock` can leave free for requests to change (``allow_changes``).
LockableSetting = Literal[
    "mode", "application", "policy", "positions", "step_scope", "corruption", "noise_seed"
]
_POLICY_RANK = {"never": 0, "images": 1, "always": 2}
_SCOPE_RANK = {"prefill_only": 0, "all_steps": 1}


class SteeringLock(_Settings):
    """What a request may ask of the steering a deployer set up.

    The deployer's settings are the baseline: a :class:`~cmrm_guard.SteeredVLM`'s ``config``, a
    chat model's ``steering`` field, a guard middleware's settings. Settings that come with a
    request (a per-call ``config=``, a ``steering()`` block, LangChain call arguments and ``bind``,
    a run's ``configurable["cmrm_steering"]``, a later middleware's ``model_settings``) may make
    steering stronger: a higher alpha, more layers, policy ``"always"`` over ``"images"``,
    ``"all_steps"`` over ``"prefill_only"``. A request for anything the lock does not allow raises
    :class:`~cmrm_guard.errors.SteeringLockedError` before the model runs; a call is never served
    weaker steering than the lock allows. ``SteeringLock()`` locks every setting at the
    deployer's own values (the default lock of a strict chat model or guard middleware).

    Attributes:
        min_alpha: lowest strength a call may steer with, compared with the effective alpha
            (after the pack's default). ``None``: the deployer's own effective alpha.
        layers: layers every steered call must include. ``None``: the layers the deployer's
            settings steer (the pack's layers when ``layers`` is not set); ``()``: none.
        exact_layers: a call must steer exactly those layers, no more.
        allow_disable: a request may turn steering off (``enabled=False`` or ``policy="never"``).
        allow_changes: settings a request may set to any value (``"mode"``, ``"application"``,
            ``"policy"``, ``"positions"``, ``"step_scope"``, ``"corruption"``, ``"noise_seed"``).
            The others: ``policy`` and ``step_scope`` keep the deployer's value or a stronger one;
            ``mode``, ``application``, ``positions`` (and in sample mode ``corruption`` and
            ``noise_seed``) keep the deployer's value.

    Example:
        >>> lock = SteeringLock(min_alpha=0.8, allow_changes={"step_scope"})
        >>> svlm = SteeredVLM(model, processor, vectors=pack, lock=lock)
        >>> svlm.chat(conversation, config={"alpha": 0.2})  # SteeringLockedError: alpha 0.2 < 0.8
    """

    min_alpha: float | None = None
    layers: tuple[int, ...] | None = None
    exact_layers: bool = False
    allow_disable: bool = False
    allow_changes: frozenset[LockableSetting] = frozenset()

    @classmethod
    def unlocked(cls) -> Self:
        """A lock that lets a request change every setting, turn steering off included: the
        explicit opt-out of the lock a strict chat model or guard middleware implies (e.g. for
        an evaluation harness that compares steered and unsteered answers)."""
        return cls(
            min_alpha=0.0, layers=(), allow_disable=True, allow_changes=frozenset(get_args(LockableSetting))
        )

    @field_validator("min_alpha")
    @classmethod
    def _floor_is_a_strength(cls, value: float | None) -> float | None:
        return check_alpha(value, "min_alpha")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_are_indices(cls, value: Any) -> Any:
        if value is not None and hasattr(value, "__len__") and len(value) == 0:
            return ()  # a lock may require no layer at all
        return _layer_tuple(value)

    def check(self, requested: SteeringConfig, baseline: SteeringConfig, where: str = "the request") -> None:
        """Raise :class:`SteeringLockedError` if ``requested`` is weaker than this lock allows.

        Both configs are effective ones (:meth:`SteeredVLM.effective_config`: alpha, application
        and layers filled in from the pack), so a request that leaves ``alpha`` to the pack is
        compared by the strength it would really get.
        """
        if not baseline.enabled or baseline.policy == "never":
            return  # the deployer steers nothing: nothing a request asks for is weaker
        problems: list[str] = []
        free = self.allow_changes
        if not requested.enabled or requested.policy == "never":
            if self.allow_disable:
                return
            setting = "enabled=False" if not requested.enabled else "policy='never'"
            problems.append(f"{setting} turns steering off (allow it with allow_disable=True)")
        else:
            if _POLICY_RANK[requested.policy] < _POLICY_RANK[baseline.policy] and "policy" not in free:
                problems.append(
                    f"policy={requested.policy!r} steers fewer calls than the deployer's {baseline.policy!r}"
                )
            for name in ("mode", "application", "positions"):
                mine, theirs = getattr(requested, name), getattr(baseline, name)
                if mine != theirs and theirs is not None and name not in free:
                    problems.append(f"{name}={mine!r} differs from the deployer's {theirs!r}")
            if (
                _SCOPE_RANK[requested.step_scope] < _SCOPE_RANK[baseline.step_scope]
                and "step_scope" not in free
            ):
                problems.append(
                    f"step_scope={requested.step_scope!r} steers fewer tokens than the deployer's "
                    f"{baseline.step_scope!r}"
                )
            if requested.mode == "sample" and baseline.mode == "sample":
                for name in ("corruption", "noise_seed"):
                    mine, theirs = getattr(requested, name), getattr(baseline, name)
                    if mine != theirs and name not in free:
                        problems.append(f"{name}={mine!r} differs from the deployer's {theirs!r}")
            floor = self.min_alpha if self.min_alpha is not None else baseline.alpha
            if floor is not None and requested.alpha is not None and requested.alpha < floor:
                source = "min_alpha" if self.min_alpha is not None else "the deployer's alpha"
                problems.append(f"alpha={requested.alpha!r} is below {source} {floor!r}")
            required = self.layers if self.layers is not None else baseline.layers
            if required is not None and requested.layers is not None:
                missing = sorted(set(required) - set(requested.layers))
                extra = sorted(set(requested.layers) - set(required))
                if missing:
                    problems.append(
                        f"layers={list(requested.layers)} leave out required layers {missing} "
                        f"(the lock requires {list(required)})"
                    )
                if self.exact_layers and extra:
                    problems.append(
                        f"layers={list(requested.layers)} add layers {extra}: the lock fixes the layers "
                        f"to {list(required)}"
                    )
        if problems:
            raise SteeringLockedError(
                f"{where} asks for steering the deployer's SteeringLock does not allow: "
                + "; ".join(problems)
            )


for _cls in (SteeringConfig, CalibrationConfig, SteeringLock):
    _FIELDS[_cls.__name__] = set(_cls.model_fields)
