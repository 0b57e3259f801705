"""From CMRM vectors to the shift each layer adds: alpha, layer subset and application form.

``v^l`` is a difference of residual-stream states, so it already contains every earlier layer's
difference. ``"every_layer"`` (the paper's literal form) adds ``alpha * v^l`` at each layer and so
stacks the shifts; ``"increment"`` adds ``alpha * (v^l - v^p)`` where ``p`` is the previous steered
layer (``v^p = 0`` for the first), so the shift accumulated in the residual stream at layer ``l`` is
about ``alpha * v^l`` (method note, "What a small real model showed").
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from cmrm_guard.errors import VectorError

if TYPE_CHECKING:
    from cmrm_guard.vectors.pack import VectorPack


def select_layers(available: Sequence[int], requested: Sequence[int] | None) -> list[int]:
    """The steered layers: ``requested`` (checked against ``available``) or all available."""
    if requested is None:
        return sorted(available)
    if not requested:
        raise VectorError("an empty layer list was requested: name at least one layer, or None for all")
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


class ShiftCache:
    """Per-layer shifts of one vector pack, kept by ``(alpha, application, layers)``.

    The cache holds the pack it was filled from (a strong reference, compared by identity): a
    lookup for any other pack object empties it first, so a replaced pack (``svlm.vectors = ...``)
    is never served the previous pack's shifts. ``layers=None`` (every layer) and an explicit
    layer tuple are distinct keys. Thread-safe; at most ``limit`` entries.
    """

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._pack: VectorPack | None = None
        self._entries: dict[tuple[Any, ...], dict[int, Tensor]] = {}
        self._lock = threading.Lock()

    def shifts(
        self, pack: VectorPack, *, alpha: float, application: str, layers: Sequence[int] | None
    ) -> dict[int, Tensor]:
        """``layer_shifts(pack.shifts, ...)``, computed once per pack and settings."""
        key = (float(alpha), application, ("all",) if layers is None else ("layers", *layers))
        with self._lock:
            if self._pack is not pack:
                self._pack, self._entries = pack, {}
            cached = self._entries.get(key)
        if cached is not None:
            return cached
        computed = layer_shifts(pack.shifts, alpha=alpha, application=application, layers=layers)
        with self._lock:
            if self._pack is pack:
                if len(self._entries) >= self._limit:
                    self._entries.clear()
                self._entries[key] = computed
        return computed

    def clear(self) -> None:
        """Forget every entry and the pack they came from."""
        with self._lock:
            self._pack, self._entries = None, {}

    def __len__(self) -> int:
        return len(self._entries)
