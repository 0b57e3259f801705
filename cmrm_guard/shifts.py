"""From CMRM vectors to the shift each layer adds: alpha, layer subset and application form.

``v^l`` is a difference of residual-stream states, so it already contains every earlier layer's
difference. ``"every_layer"`` (the paper's literal form) adds ``alpha * v^l`` at each layer and so
stacks the shifts; ``"increment"`` adds ``alpha * (v^l - v^p)`` where ``p`` is the previous steered
layer (``v^p = 0`` for the first), so the shift accumulated in the residual stream at layer ``l`` is
about ``alpha * v^l`` (method note, "What a small real model showed").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from cmrm_guard.errors import VectorError


def select_layers(available: Sequence[int], requested: Sequence[int] | None) -> list[int]:
    """The steered layers: ``requested`` (checked against ``available``) or all available."""
    if requested is None:
        return sorted(available)
    missing = sorted(set(requested) - set(available))
    if missing:
        raise VectorError(
            f"layers {missing} were requested but the vectors cover only layers {sorted(available)}"
        )
    return sorted(requested)


def layer_shifts(
    vectors: Mapping[int, Tensor],
    *,
    alpha: float,
    application: str,
    layers: Sequence[int] | None = None,
) -> dict[int, Tensor]:
    """Per-layer shifts to add: ``alpha * v^l`` or ``alpha * (v^l - v^prev)``.

    Args:
        vectors: layer -> CMRM vector, shape (hidden,) or (batch, hidden).
        alpha: strength.
        application: ``"every_layer"`` or ``"increment"``.
        layers: subset of layers to steer (``None``: every layer in ``vectors``).
    """
    chosen = select_layers(list(vectors), layers)
    if application == "every_layer":
        return {i: vectors[i] * alpha for i in chosen}
    if application == "increment":
        shifts: dict[int, Tensor] = {}
        previous: Tensor | None = None
        for i in chosen:
            current = vectors[i]
            shifts[i] = (current if previous is None else current - previous) * alpha
            previous = current
        return shifts
    raise VectorError(f"unknown application {application!r}: expected 'every_layer' or 'increment'")
