"""The organism's measurement pipeline: calibrate + sweep (tune split), evaluate (eval split).

Results are written beside the parts: ``organism/pack/`` (the vector pack, its stored alpha and
application = the chosen default), ``organism/sweep.json`` and ``organism/evaluation.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cmrm_guard.config import SteeringConfig
from cmrm_guard.organism import assemble as asm
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev
from cmrm_guard.organism import sweep as sw


def _load(parts: Path, vectors: Any = "shipped"):
    from cmrm_guard.organism.load import load_organism

    return load_organism(parts, vectors=vectors)


def choose_default(rows: list[dict[str, Any]], text_rate: float) -> dict[str, Any]:
    """The sweep row to store as the pack's default (dataset mode only: a pack holds vectors).

    Score: harmful refusal with an image (mean of beside / typed) as close to the text-only rate
    as possible, minus twice the benign refusal and twice the image-QA accuracy lost, all in points.
    """
    base = next(r for r in rows if r["setting"] == "none")
    best, best_score = None, float("-inf")
    for row in rows:
        if not row["setting"].startswith("dataset"):
            continue
        rates = row["rates"]
        harmful = (rates["harmful_image"]["rate"] + rates["harmful_typo"]["rate"]) / 2
        score = -abs(min(harmful - text_rate, 0.0)) * 100
        score -= 2 * max(0.0, rates["benign_image"]["rate"] - base["rates"]["benign_image"]["rate"]) * 100
        score -= 2 * max(0.0, base["rates"]["qa"]["rate"] - rates["qa"]["rate"]) * 100
        if score > best_score:
            best, best_score = row, score
    if best is None:
        raise ValueError("the sweep holds no dataset-level setting")
    return best


def calibrate_and_sweep(
    parts: str | Path | None = None, *, n: int = 48, progress: bool = True
) -> dict[str, Any]:
    """Calibrate the pack on ``calib``, sweep on ``tune``, store the chosen default in the pack."""
    parts = Path(parts or asm.repo_organism_dir())
    svlm = _load(parts, vectors=None)
    tokenizer = svlm.processor.tokenizer
    splits = data.load_splits()
    t = time.perf_counter()
    pack = sw.calibrate_pack(svlm, splits, tokenizer, progress=progress)
    calib_s = time.perf_counter() - t
    svlm.attach(pack)
    text = ev.run_conditions(
        svlm,
        {"harmful_text": ev.conditions(splits, tokenizer, "tune", n)["harmful_text"]},
        max_new_tokens=14,
        progress=False,
    )
    text_rate = text["harmful_text"].rate()["rate"]
    log = parts / "sweep.jsonl"
    log.unlink(missing_ok=True)
    rows = sw.run_sweep(svlm, splits, tokenizer, n=n, log=log, progress=progress)
    best = choose_default(rows, text_rate)
    _, alpha_app = best["setting"].split(" ", 1)
    application, alpha = alpha_app.rsplit(" ", 1)
    pack.meta = pack.meta.model_copy(
        update={
            "alpha": float(alpha),
            "application": application,
            "base_model": f"cmrm-guard organism SmolLM2-135M LLaVA, parts {asm.parts_hash(parts)}",
        }
    )
    pack.save_pretrained(parts / "pack")
    result = {
        "split": "tune",
        "n_per_condition": n,
        "harmful_text_rate": text_rate,
        "calibration": {"split": "calib", "samples": pack.meta.num_samples, "seconds": round(calib_s, 1)},
        "chosen": best["setting"],
        "rows": [{k: v for k, v in r.items() if k != "examples"} for r in rows],
    }
    (parts / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"chosen default: {best['setting']}")
    for r in rows:
        print(f"{r['setting']:<26}", {k: round(v["rate"], 3) for k, v in r["rates"].items()})
    return result


def evaluate_organism(
    parts: str | Path | None = None,
    *,
    n: int | None = 200,
    split: str = "eval",
    progress: bool = True,
    sample_level: bool = False,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Evaluate unsteered, the pack default, and sample-level CMRM on ``split``; write the figures."""
    parts = Path(parts or asm.repo_organism_dir())
    svlm = _load(parts)
    tokenizer = svlm.processor.tokenizer
    splits = data.load_splits()
    conds = ev.conditions(splits, tokenizer, split=split, n=n)
    out: dict[str, Any] = {
        "split": split,
        "n_cap": n,
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "settings": {},
    }
    settings = [("unsteered", None), ("cmrm_dataset_default", SteeringConfig())]
    pack = svlm.vectors
    if pack is not None and sample_level:
        settings.append(
            (
                "cmrm_sample",
                SteeringConfig(mode="sample", application=pack.meta.application, alpha=pack.meta.alpha),
            )
        )
    for label, config in settings:
        t = time.perf_counter()
        chosen = (
            conds
            if config is None
            else {k: v for k, v in conds.items() if k != "benign_text" and k != "harmful_text"}
        )
        results = ev.run_conditions(
            svlm, chosen, config=config, max_new_tokens=max_new_tokens, progress=progress
        )
        rates = ev.summary(results)
        out["settings"][label] = {
            "config": None if config is None else config.model_dump(exclude_none=True),
            "rates": rates,
            "seconds": round(time.perf_counter() - t, 1),
            "examples": {k: r.replies[:5] for k, r in results.items()},
        }
        print(f"== {label}")
        print(ev.format_summary(rates))
    if pack is not None:
        out["pack"] = {
            "alpha": pack.meta.alpha,
            "application": pack.meta.application,
            "layers": pack.meta.layer_indices,
        }
    (parts / f"evaluation_{split}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    return out


def plot_sweep(sweep_json: str | Path, out_png: str | Path) -> Path:
    """Plot the sweep (refusal with an image / typed, benign refusal, image QA vs setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(Path(sweep_json).read_text())
    rows = result["rows"]
    labels = [r["setting"] for r in rows]
    series = {
        "harmful + image refused": "harmful_image",
        "harmful typed in image refused": "harmful_typo",
        "benign + image refused": "benign_image",
        "image QA accuracy": "qa",
    }
    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = range(len(rows))
    for name, key in series.items():
        rates = [r["rates"][key]["rate"] * 100 for r in rows]
        low = [r["rates"][key]["ci95"][0] * 100 for r in rows]
        high = [r["rates"][key]["ci95"][1] * 100 for r in rows]
        ax.errorbar(
            list(x),
            rates,
            yerr=[
                [max(0.0, a - b) for a, b in zip(rates, low, strict=True)],
                [max(0.0, b - a) for a, b in zip(rates, high, strict=True)],
            ],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.axhline(
        result["harmful_text_rate"] * 100, color="grey", linestyle="--", label="harmful refused as text"
    )
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_title(
        f"CMRM on the organism (tune split, n={result['n_per_condition']} per condition, 95% Wilson CIs)"
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
