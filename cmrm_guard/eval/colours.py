"""The colours of every plot cmrm-guard draws, in one table (matplotlib colour specs).

Metrics, reference conditions and marks keep one colour across the evaluation report and the
organism's sweep plot, so a reader learns them once. (The organism's *image* palette,
``cmrm_guard.organism.images.COLOURS``, is something else: the RGB values of the shapes drawn into
its synthetic images, named by the colour words the model answers with.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = ["CONDITION_PALETTE", "PLOT_COLOURS", "condition_colours"]

PLOT_COLOURS: Mapping[str, str] = MappingProxyType(
    {
        # metrics (rates plotted against alpha)
        "unsafe": "C3",
        "broken": "0.45",
        "over-refusal": "C1",
        "utility": "C0",
        # reference conditions: the unsteered model on the image prompt and on its text-only twin
        "multimodal": "k",
        "text-only": "0.5",
        # marks
        "highlight": "k",
        "other": "C7",
    }
)
"""Colour of each metric, reference condition and mark."""

CONDITION_PALETTE: tuple[str, ...] = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "C3", "C7")
"""Colours given to steered conditions, in order."""


def condition_colours(steered: Iterable[str]) -> dict[str, str]:
    """One colour per steered condition (in order, cycling), plus the reference conditions'."""
    colours = {name: CONDITION_PALETTE[i % len(CONDITION_PALETTE)] for i, name in enumerate(steered)}
    return colours | {name: PLOT_COLOURS[name] for name in ("multimodal", "text-only")}
