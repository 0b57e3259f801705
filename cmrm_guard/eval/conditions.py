"""Evaluation conditions: how each prompt is put to the model.

- ``multimodal``: the image+text prompt, unsteered (the degraded baseline);
- ``text-only``: the prompt's text-only twin, unsteered (what the backbone was aligned on; see
  :mod:`cmrm_guard.eval.prompts` for how the twin of a FigStep prompt is defined);
- ``dataset``: the image+text prompt with dataset-level CMRM from a named vector pack at strength
  ``alpha`` (an alpha sweep is one condition per alpha, per pack);
- ``sample``: the image+text prompt with sample-level CMRM at ``alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.config import SteeringConfig
from cmrm_guard.errors import ConfigError
from cmrm_guard.eval.prompts import EvalPrompt

ConditionKind = Literal["multimodal", "text_only", "dataset", "sample"]
DEFAULT_PACK = "pack"


@dataclass(frozen=True)
class Condition:
    """One way of running the prompts.

    Attributes:
        name: unique label (results are keyed by it).
        kind: ``"multimodal"``, ``"text_only"``, ``"dataset"`` or ``"sample"``.
        alpha: steering strength (steered kinds).
        pack: name of the vector pack a ``"dataset"`` condition uses.
        application: ``"increment"`` / ``"every_layer"``; ``None`` takes the pack's (or increment).
    """

    name: str
    kind: ConditionKind
    alpha: float | None = None
    pack: str | None = None
    application: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("multimodal", "text_only", "dataset", "sample"):
            raise ConfigError(
                f"condition kind {self.kind!r}: expected multimodal, text_only, dataset or sample"
            )
        if self.steered and self.alpha is None:
            raise ConfigError(f"condition {self.name!r} ({self.kind}) needs an alpha")
        if self.kind == "dataset" and not self.pack:
            raise ConfigError(f"dataset condition {self.name!r} needs a pack name")

    @property
    def steered(self) -> bool:
        """Whether CMRM is applied."""
        return self.kind in ("dataset", "sample")

    def steering_config(self, base: SteeringConfig | None = None) -> SteeringConfig:
        """The :class:`~cmrm_guard.config.SteeringConfig` of this condition.

        Args:
            base: the wrapper's own settings (layers, positions, step scope, ...), kept except for
                ``mode``, ``alpha``, ``enabled`` and, when the condition sets one, ``application``.
        """
        base = base or SteeringConfig()
        if not self.steered:
            return base.replace(enabled=False)
        changes: dict[str, Any] = {"mode": self.kind, "alpha": self.alpha, "enabled": True}
        if self.application is not None:
            changes["application"] = self.application
        return base.replace(**changes)

    def applies_to(self, prompt: EvalPrompt) -> bool:
        """Whether the prompt is run under this condition (image questions are not asked text-only)."""
        return not (self.kind == "text_only" and prompt.needs_image)

    def conversation(self, prompt: EvalPrompt, size: tuple[int, int], adapter: Any = None) -> Conversation:
        """The conversation sent for ``prompt``: its text-only twin or its image+text form."""
        if self.kind != "text_only":
            return prompt.conversation(size)
        if prompt.twin_text == prompt.text and adapter is not None:
            return adapter.text_only_twin(prompt.conversation(size))  # the adapter's own twin
        return prompt.twin_conversation()

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "alpha": self.alpha, "pack": self.pack, "application": self.application}


def multimodal() -> Condition:
    """Image+text, unsteered."""
    return Condition("multimodal", "multimodal")


def text_only() -> Condition:
    """Text-only twin, unsteered."""
    return Condition("text-only", "text_only")


def dataset(alpha: float, pack: str = DEFAULT_PACK, application: str | None = None) -> Condition:
    """Dataset-level CMRM from pack ``pack`` at ``alpha``."""
    label = "dataset" if pack == DEFAULT_PACK else f"dataset[{pack}]"
    suffix = f" {application}" if application else ""
    return Condition(f"{label} alpha={alpha:g}{suffix}", "dataset", float(alpha), pack, application)


def sample(alpha: float, application: str | None = None) -> Condition:
    """Sample-level CMRM at ``alpha``."""
    suffix = f" {application}" if application else ""
    return Condition(f"sample alpha={alpha:g}{suffix}", "sample", float(alpha), None, application)


def default_conditions(
    alphas: Iterable[float] = (0.5, 1.0),
    *,
    packs: Sequence[str] = (DEFAULT_PACK,),
    sample_alphas: Iterable[float] = (1.0,),
    include_text_only: bool = True,
    application: str | None = None,
) -> list[Condition]:
    """Multimodal, text-only, a dataset-level sweep (alpha x pack) and sample-level conditions."""
    out = [multimodal()]
    if include_text_only:
        out.append(text_only())
    for pack in packs:
        out.extend(dataset(a, pack, application) for a in alphas)
    out.extend(sample(a, application) for a in sample_alphas)
    check_conditions(out)
    return out


def check_conditions(conditions: Sequence[Condition]) -> None:
    """Raise :class:`ConfigError` on an empty list or a repeated name."""
    if not conditions:
        raise ConfigError("no evaluation condition given")
    names = [c.name for c in conditions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"condition name(s) {repeated} repeated: results are keyed by name")
