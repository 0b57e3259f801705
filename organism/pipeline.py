"""The organism's measurement pipeline: calibrate + sweep (tune split), evaluate (eval split).

Both run through the project's evaluation harness (:mod:`cmrm_guard.eval`, via
:func:`cmrm_guard.organism.evaluate.measure`). The sweep writes the vector pack into the parts
folder (``<parts>/pack``; its stored alpha and application are the chosen default); ``sweep.json``
and ``evaluation_<split>.json`` (rates with Wilson intervals and the first replies) go to
:func:`organism.results_dir` (``organism/results`` for the shipped parts, else the parts folder). The harness's own output (``results.json`` with every reply and verdict,
``results.md``, plots) goes to ``--out`` (default ``~/.cache/cmrm-guard/organism-<what>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cmrm_guard.eval import conditions as cond
from cmrm_guard.eval.colours import PLOT_COLOURS
from cmrm_guard.organism import assemble as asm
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev
from organism import results_dir
from organism import sweep as sw

STEERED_COLUMNS = (ev.HARMFUL, ev.HARMFUL_TYPED)
BENIGN_COLUMNS = (ev.BENIGN, ev.BENIGN_TYPED)


def default_output(what: str) -> Path:
    """Where the harness output of ``organism evaluate`` / ``sweep`` goes by default."""
    return Path.home() / ".cache" / "cmrm-guard" / f"organism-{what}"


def _load(parts: Path, vectors: Any = "shipped"):
    from cmrm_guard.organism.load import load_organism

    return load_organism(parts, vectors=vectors)


def _ranked(rows: list[dict[str, Any]], text_rate: float, budget: float) -> list[tuple]:
    """``(not admissible, worse shortfall, total shortfall, benign increase, alpha, row)`` per dataset row."""
    base = next(r for r in rows if r["setting"] == "multimodal")["rates"]

    def slack(column: str) -> float:
        return max(budget, 1.0 / max(1, base[column]["n"])) + 1e-9

    ranked = []
    for row in rows:
        if row["spec"]["kind"] != "dataset":
            continue
        rates = row["rates"]
        benign_up = [rates[c]["rate"] - base[c]["rate"] for c in BENIGN_COLUMNS]
        qa_down = base["qa"]["rate"] - rates["qa"]["rate"]
        admissible = all(up <= slack(c) for up, c in zip(benign_up, BENIGN_COLUMNS, strict=True))
        admissible = admissible and qa_down <= slack("qa")
        short = [round(max(0.0, text_rate - rates[c]["rate"]), 9) for c in STEERED_COLUMNS]  # exact ties
        benign = round(sum(max(0.0, u) for u in benign_up), 9)
        ranked.append((not admissible, max(short), round(sum(short), 9), benign, row["spec"]["alpha"], row))
    return ranked


def admissible_settings(rows: list[dict[str, Any]], budget: float = 0.02) -> list[str]:
    """Names of the dataset-level rows within :func:`choose_default`'s benign and QA budgets."""
    return [item[5]["setting"] for item in _ranked(rows, 0.0, budget) if not item[0]]


def choose_default(rows: list[dict[str, Any]], text_rate: float, budget: float = 0.02) -> dict[str, Any]:
    """The sweep row to store as the pack's default (dataset mode only: a pack holds vectors).

    The organism's goals (restore refusal with an image, keep benign refusal and image QA) as
    a rule. Admissible: every benign set (beside / typed) refused at most
    ``budget`` more than unsteered and image-question accuracy at most ``budget`` lower, where a
    budget is never smaller than one prompt (at n = 48 one prompt is 2.1 points: the sweep cannot
    resolve less). Among admissible rows: the one whose worse harmful set with an image (beside or
    typed) falls least short of the text-only rate (the goal holds for each set, so a surplus on
    one does not pay for a shortfall on the other); ties go to the smaller total shortfall, then
    the smaller benign increase, then the smaller alpha. A ``ValueError`` says so when no row is
    admissible.
    """
    ranked = _ranked(rows, text_rate, budget)
    if not ranked:
        raise ValueError("the sweep holds no dataset-level setting")
    ranked.sort(key=lambda item: item[:5])
    if ranked[0][0]:
        raise ValueError(
            "no dataset-level setting of the sweep keeps benign refusal and image QA within budget"
        )
    return ranked[0][5]


def refined_choice(
    refined_rows: list[dict[str, Any]], text_rate: float, grid_choice: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The default after the sweep's second stage, and where it came from (``"refined"`` / ``"grid"``).

    :func:`choose_default` on the second stage's rows; when none of them stays within the benign
    and QA budgets on the whole tune split, the grid's choice stands (and the caller says so),
    rather than losing the sweep to a ``ValueError``.
    """
    try:
        return choose_default(refined_rows, text_rate), "refined"
    except ValueError:
        return grid_choice, "grid"


def calibrate_and_sweep(
    parts: str | Path | None = None,
    *,
    n: int = 48,
    refine: bool = True,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate the pack on ``calib``, sweep on ``tune``, store the chosen default in the pack.

    The grid (:data:`sweep.SWEEP`, ``n`` prompts per set) runs first; with ``refine`` (default)
    its admissible settings (:func:`admissible_settings`) run again on the whole tune split with
    every typed request under each typed instruction (:func:`sweep.refine_sweep`), and
    :func:`choose_default` picks on those rows. ``refine=False``: it picks on the grid.
    """
    if n < 1:
        raise ValueError(f"n (prompts per set on the tune split) must be >= 1; got {n}")
    parts = Path(parts or asm.PARTS)
    svlm = _load(parts, vectors=None)
    tokenizer = svlm.processor.tokenizer
    splits = data.load_splits()
    t = time.perf_counter()
    pack = sw.calibrate_pack(svlm, splits, tokenizer, progress=progress)
    calib_s = time.perf_counter() - t
    svlm.attach(pack)
    t = time.perf_counter()
    out = Path(output) if output is not None else default_output("sweep")
    measured, rows = sw.run_sweep(svlm, splits, tokenizer, n=n, output=out, progress=progress)
    text_rate = measured.rate("text-only", ev.HARMFUL)
    best = grid_best = choose_default(rows, text_rate)
    sweep_s = time.perf_counter() - t
    refined = None
    if refine:  # the grid's admissible settings again, with the typed set's power (sw.refine_sweep)
        t = time.perf_counter()
        names = admissible_settings(rows)
        settings = [c for c in sw.SWEEP if c.name in names]
        measured_refined, refined_rows = sw.refine_sweep(
            svlm, splits, tokenizer, settings, output=out / "refined", progress=progress
        )
        refined_text = measured_refined.rate("text-only", ev.HARMFUL)
        best, source = refined_choice(refined_rows, refined_text, grid_best)
        if source == "grid":
            print("second stage: no setting within the benign / QA budgets; the grid's choice stands")
        refined = {
            "harmful_text_rate": refined_text,
            "seconds": round(time.perf_counter() - t, 1),
            "prompts": {
                column: measured_refined.table["multimodal"][column]["n"]
                for column in measured_refined.table["multimodal"]
            },
            "grid_choice": grid_best["setting"],
            "chosen_from": source,
            "rows": refined_rows,
        }
    pack.meta = pack.meta.model_copy(
        update={
            "alpha": best["spec"]["alpha"],
            "application": best["spec"]["application"],
            "base_model": f"cmrm-guard organism SmolLM2-135M LLaVA, parts {asm.parts_hash(parts)}",
        }
    )
    pack.save_pretrained(parts / "pack")
    result = {
        "split": "tune",
        "n_per_condition": n,
        "judge": measured.results.primary_judge,
        "harmful_text_rate": text_rate,
        "calibration": {"split": "calib", "samples": pack.meta.num_samples, "seconds": round(calib_s, 1)},
        "sweep_seconds": round(sweep_s, 1),
        "chosen": best["setting"],
        "rows": rows,
    }
    if refined is not None:
        result["refined"] = refined
    written = results_dir(parts) / "sweep.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot = f"plot: {plot_sweep(written, out / 'sweep.png')}"
    except ImportError:
        plot = "no plot: pip install 'cmrm-guard[eval]' for matplotlib"
    print(ev.format_table({r["setting"]: r["rates"] for r in rows}))
    if refined is not None:
        print("second stage (whole tune split, typed requests x 4 instructions):")
        print(ev.format_table({r["setting"]: r["rates"] for r in refined["rows"]}))
    print(f"chosen default: {best['setting']} (harness output: {out}; {plot})")
    return result


def evaluate_organism(
    parts: str | Path | None = None,
    *,
    n: int | None = 200,
    split: str = "eval",
    progress: bool = True,
    sample_level: bool = False,
    max_new_tokens: int = 16,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate unsteered (image+text and text-only), the pack's default and optionally
    sample-level CMRM on ``split``; write ``evaluation_<split>.json`` to :func:`organism.results_dir`."""
    parts = Path(parts or asm.PARTS)
    svlm = _load(parts)
    tokenizer = svlm.processor.tokenizer
    examples = ev.conditions(data.load_splits(), tokenizer, split=split, n=n)
    conditions = [cond.multimodal(), cond.text_only()]
    if svlm.vectors is not None:
        conditions.append(ev.pack_condition(svlm))
        if sample_level:
            conditions.append(ev.sample_condition(svlm))
    out = Path(output) if output is not None else default_output(f"evaluation-{split}")
    t = time.perf_counter()
    measured = ev.measure(
        svlm,
        examples,
        conditions,
        output=out,
        max_new_tokens=max_new_tokens,
        diagnostics=True,
        report=True,
        progress=progress,
    )
    result: dict[str, Any] = {
        "split": split,
        "n_cap": n,
        "max_new_tokens": max_new_tokens,
        "greedy": True,
        "judge": measured.results.primary_judge,
        "seconds": round(time.perf_counter() - t, 1),
        "conditions": {c.name: c.as_dict() for c in conditions},
        "rates": measured.table,
        "examples": {
            c.name: {s: measured.replies(c.name, s, 5) for s in measured.table[c.name] if s != "qa"}
            for c in conditions
        },
    }
    if svlm.vectors is not None:
        meta = svlm.vectors.meta
        result["pack"] = {"alpha": meta.alpha, "application": meta.application, "layers": meta.layer_indices}
    written = results_dir(parts) / f"evaluation_{split}.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(ev.format_table(measured.table))
    print(f"harness output (every reply and verdict, report, plots): {out}")
    return result


def plot_sweep(sweep_json: str | Path, out_png: str | Path) -> Path:
    """Plot the sweep (refusal with an image / typed, benign refusal, image QA vs setting).

    Raises:
        ImportError: matplotlib is missing (``pip install 'cmrm-guard[eval]'``).
    """
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    result = json.loads(Path(sweep_json).read_text())
    rows = [r for r in result["rows"] if r["setting"] != "text-only"]
    labels = [r["setting"] for r in rows]
    series = {
        "harmful + image refused": ev.HARMFUL,
        "harmful typed in image refused": ev.HARMFUL_TYPED,
        "benign + image refused": ev.BENIGN,
        "benign typed in image refused": ev.BENIGN_TYPED,
        "image QA accuracy": "qa",
    }
    fig = Figure(figsize=(11, 4.4))
    ax = fig.subplots()
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
        result["harmful_text_rate"] * 100,
        color=PLOT_COLOURS["text-only"],
        linestyle="--",
        label="harmful refused as text",
    )
    if result.get("chosen") in labels:
        ax.axvline(
            labels.index(result["chosen"]),
            color=PLOT_COLOURS["highlight"],
            alpha=0.12,
            linewidth=10,
            label="chosen default",
        )
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_title(
        f"CMRM on the organism (tune split, n <= {result['n_per_condition']} per prompt set, 95% Wilson CIs)"
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return Path(out_png)
