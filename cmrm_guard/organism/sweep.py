"""CMRM on the organism: calibration, the alpha sweep on the tune split, the evaluation on eval.

Splits (disjoint, see :mod:`cmrm_guard.organism.data`): vectors are calibrated on ``calib``
(harmful requests beside an image and typed in an image, GSM8K questions beside an image); alpha
and the application form are chosen on ``tune``; reported figures use ``eval``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from cmrm_guard.config import SteeringConfig
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev

SWEEP = (
    ("none", None),
    ("dataset every_layer 0.1", SteeringConfig(mode="dataset", application="every_layer", alpha=0.1)),
    ("dataset every_layer 0.15", SteeringConfig(mode="dataset", application="every_layer", alpha=0.15)),
    ("dataset every_layer 0.2", SteeringConfig(mode="dataset", application="every_layer", alpha=0.2)),
    ("dataset every_layer 0.3", SteeringConfig(mode="dataset", application="every_layer", alpha=0.3)),
    ("dataset increment 0.25", SteeringConfig(mode="dataset", application="increment", alpha=0.25)),
    ("dataset increment 0.5", SteeringConfig(mode="dataset", application="increment", alpha=0.5)),
    ("dataset increment 1.0", SteeringConfig(mode="dataset", application="increment", alpha=1.0)),
    ("sample every_layer 0.1", SteeringConfig(mode="sample", application="every_layer", alpha=0.1)),
    ("sample every_layer 0.2", SteeringConfig(mode="sample", application="every_layer", alpha=0.2)),
    ("sample increment 0.5", SteeringConfig(mode="sample", application="increment", alpha=0.5)),
)


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
    names: tuple[str, ...] = ("harmful_image", "harmful_typo", "benign_image", "qa"),
    log: Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate each sweep setting on the tune split; returns one row per setting."""
    conds = ev.conditions(splits, tokenizer, split="tune", n=n)
    conds = {k: v for k, v in conds.items() if k in names}
    rows = []
    for label, config in sweep:
        t = time.perf_counter()
        results = ev.run_conditions(
            svlm, conds, config=config, max_new_tokens=max_new_tokens, progress=progress
        )
        row = {"setting": label, "rates": ev.summary(results), "seconds": round(time.perf_counter() - t, 1)}
        row["examples"] = {k: r.replies[:3] for k, r in results.items()}
        rows.append(row)
        if log is not None:
            with open(log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    return rows
