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
    conditions = [cond.multimodal(), cond.text_only(), *sweep]
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
    print(f"sweep: {len(conditions)} conditions in {seconds:.0f} s")
    return measured, rows
