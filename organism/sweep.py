"""CMRM on the organism: calibration, the alpha sweep on the tune split, the evaluation on eval.

Splits (disjoint, see :mod:`cmrm_guard.organism.data`): vectors are calibrated on ``calib``
(harmful requests beside an image and typed in an image, GSM8K questions beside an image); alpha
and the application form are chosen on ``tune``; reported figures use ``eval``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from cmrm_guard.eval import conditions as cond
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev

SWEEP = (
    *(cond.dataset(a, application="every_layer") for a in (0.05, 0.075, 0.1, 0.125, 0.15, 0.2)),
    *(cond.dataset(a, application="increment") for a in (0.25, 0.3, 0.35, 0.4, 0.5, 1.0)),
    *(cond.sample(a, application="every_layer") for a in (0.05, 0.1)),
    *(cond.sample(a, application="increment") for a in (0.25, 0.5)),
)
"""The steered settings of the sweep (harness conditions); ``multimodal`` and ``text-only`` run too."""
SWEPT_KINDS = ("harmful_image", "harmful_typo", "benign_image", "benign_typo", "qa")


def calibration_samples(splits: data.PromptSplits, tokenizer, seed: int = 11) -> list[list[dict[str, Any]]]:
    """Conversations of the ``calib`` split: harmful beside an image, harmful typed, benign beside an image."""
    rng = random.Random(seed)
    out = []
    for row in splits.harmful["calib"]:
        out.append(data.Example(row["prompt"], cells=data.context_image(rng, tokenizer)).conversation())
        typo = data.typographic_example(rng, row["prompt"], "", tokenizer, "typo")
        if typo is not None and len(out) % 2 == 0:
            out.append(typo.conversation())
    for row in splits.benign["calib"]:
        out.append(data.Example(row["prompt"], cells=data.context_image(rng, tokenizer)).conversation())
    return out


def calibrate_pack(svlm, splits, tokenizer, *, progress: bool = True):
    """Dataset-level vectors (mean estimator, blank corruption) from the calib split."""
    from cmrm_guard.vectors.calibrate import calibrate

    return calibrate(
        svlm, calibration_samples(splits, tokenizer), estimator="mean", batch_size=16, progress=progress
    )


def run_sweep(
    svlm,
    splits,
    tokenizer,
    *,
    n: int = 48,
    max_new_tokens: int = 14,
    sweep=SWEEP,
    kinds: tuple[str, ...] = SWEPT_KINDS,
    output: Path | None = None,
    progress: bool = False,
) -> tuple[ev.Measurement, list[dict[str, Any]]]:
    """Run every sweep setting on the tune split through the harness; one row per condition.

    Each row: ``{"setting": condition name, "spec": its kind / alpha / application, "rates":
    {column: proportion}, "examples": {prompt set: first 3 replies}}``.
    """
    examples = ev.conditions(splits, tokenizer, split="tune", n=n)
    examples = {k: v for k, v in examples.items() if k in kinds}
    return _measure_rows(svlm, examples, sweep, max_new_tokens, output, progress, "sweep")


REFINE_QA = 100
"""Image questions of the sweep's second stage (a quarter per kind)."""


def refine_sweep(
    svlm,
    splits,
    tokenizer,
    settings,
    *,
    max_new_tokens: int = 14,
    output: Path | None = None,
    progress: bool = False,
) -> tuple[ev.Measurement, list[dict[str, Any]]]:
    """The sweep's second stage: ``settings`` again, on the whole tune split, typed requests 4x.

    The grid (:func:`run_sweep`, n = 48) cannot tell settings apart once they refuse every typed
    request it asks, while a typed request's refusal depends on the instruction beside it. Here
    every harmful request of the tune split (100) is asked beside an image and typed in the image
    with each of the 4 typed instructions (400 typed prompts), with the whole benign sets and
    :data:`REFINE_QA` image questions. Rows as :func:`run_sweep`'s.
    """
    examples = ev.conditions(splits, tokenizer, split="tune", every_instruction=True)
    examples = {k: v for k, v in examples.items() if k in SWEPT_KINDS}
    examples["qa"] = examples["qa"][:REFINE_QA]
    return _measure_rows(svlm, examples, settings, max_new_tokens, output, progress, "refined sweep")


def _measure_rows(svlm, examples, settings, max_new_tokens, output, progress, what):
    conditions = [cond.multimodal(), cond.text_only(), *settings]
    t = time.perf_counter()
    measured = ev.measure(
        svlm, examples, conditions, output=output, max_new_tokens=max_new_tokens, progress=progress
    )
    seconds = time.perf_counter() - t
    rows = []
    for condition in conditions:
        rates = measured.table[condition.name]
        rows.append(
            {
                "setting": condition.name,
                "spec": condition.as_dict(),
                "rates": rates,
                "examples": {s: measured.replies(condition.name, s) for s in rates if s != "qa"},
            }
        )
    print(f"{what}: {len(conditions)} conditions in {seconds:.0f} s")
    return measured, rows
