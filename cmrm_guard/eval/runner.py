"""Run an evaluation: every prompt under every condition, judged, with diagnostics; resumable.

Replies are generated greedily in batches, judged as they come, and written to ``results.json``
after every batch (atomically), keyed by condition and prompt id. A later run with the same output
picks up where the last one stopped: it checks that the model, generation settings, prompts and
conditions it finds are the ones it was asked for, generates only what is missing, and judges
only verdicts a judge has not given yet (add an LLM judge to a finished run and only it runs).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from cmrm_guard.errors import CMRMError, ConfigError
from cmrm_guard.eval import conditions as cond
from cmrm_guard.eval.conditions import Condition
from cmrm_guard.eval.judges import Judge, RefusalPhraseJudge
from cmrm_guard.eval.metrics import compute_metrics
from cmrm_guard.eval.prompts import EvalPrompt, check_disjoint, check_unique_ids
from cmrm_guard.eval.tasks import check_answer

if TYPE_CHECKING:
    from cmrm_guard.steered import SteeredVLM

FORMAT = "cmrm-guard-eval/1"
RESULTS_NAME = "results.json"


class EvalResumeError(CMRMError, ValueError):
    """An existing results file was made with other settings than the run that wants to resume it."""


class EvalResults:
    """The results of an evaluation: a JSON-ready dict with helpers.

    Attributes:
        data: everything (``model``, ``generation``, ``judges``, ``prompts``, ``conditions``,
            ``records``, ``diagnostics``, ``metrics``).
        path: the ``results.json`` it was read from or written to, if any.
    """

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        self.data = data
        self.path = path

    @property
    def metrics(self) -> dict[str, Any]:
        """Per-condition metrics (:func:`cmrm_guard.eval.metrics.compute_metrics`)."""
        return self.data["metrics"]

    @property
    def primary_judge(self) -> str:
        """The judge whose numbers the table and plots show."""
        return self.data["judges"][0]

    @classmethod
    def load(cls, path: str | Path) -> EvalResults:
        """Read a ``results.json`` (or the one inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read results {str(path)!r}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"results {str(path)!r} is not valid JSON ({error.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{str(path)!r} is not a cmrm-guard evaluation results file ({FORMAT})")
        return cls(data, path)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the results as JSON (atomically: a crash never leaves half a file)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("no path to save the results to")
        if target.is_dir() or target.suffix != ".json":
            target = target / RESULTS_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        self.data["updated"] = _now()
        handle, temporary = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=target.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(self.data, stream, indent=1, ensure_ascii=False)
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
        self.path = target
        return target

    def table(self, judge: str | None = None) -> str:
        """The Markdown table (:func:`cmrm_guard.eval.report.markdown_table`)."""
        from cmrm_guard.eval.report import markdown_table

        return markdown_table(self, judge=judge)

    def write_report(self, folder: str | Path | None = None) -> dict[str, Path]:
        """Write ``results.md`` and the PNG plots (:func:`cmrm_guard.eval.report.write_report`)."""
        from cmrm_guard.eval.report import write_report

        if folder is None:
            if self.path is None:
                raise ConfigError("no folder to write the report to")
            folder = self.path.parent
        return write_report(self, folder)


def run_evaluation(
    svlm: SteeredVLM,
    prompts: Sequence[EvalPrompt],
    conditions: Sequence[Condition] | None = None,
    *,
    judges: Sequence[Judge] | None = None,
    packs: Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    resume: bool = True,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    generate_kwargs: Mapping[str, Any] | None = None,
    image_size: tuple[int, int] | None = None,
    calibration: Sequence[Mapping[str, Any] | str] | None = None,
    check_calibration: bool = True,
    near_duplicate: float | None = 0.8,
    diagnostics: bool = True,
    diagnostic_prompts: int = 16,
    pca_layer: int | None = None,
    report: bool = True,
    progress: bool | None = None,
) -> EvalResults:
    """Evaluate ``svlm`` on ``prompts`` under ``conditions``.

    Args:
        svlm: the :class:`~cmrm_guard.SteeredVLM` (its model is never changed).
        prompts: evaluation prompts (:func:`~cmrm_guard.eval.prompts.load_prompt_set`).
        conditions: default: multimodal, text-only, dataset alpha 0.5 and 1.0 (if a pack is
            available) and sample alpha 1.0 (:func:`~cmrm_guard.eval.conditions.default_conditions`).
        judges: default ``[RefusalPhraseJudge()]``; the first is the primary judge (table and
            plots); every judge's verdicts are recorded under its name.
        packs: vector packs of dataset conditions by name (a ``VectorPack``, a folder or a Hub id);
            default ``{"pack": svlm.vectors}`` when it has one.
        output: folder for ``results.json``, ``results.md`` and ``plots/`` (``None``: in memory).
        resume: continue an existing ``results.json`` in ``output`` (else start over).
        max_new_tokens, batch_size, generate_kwargs: generation (greedy unless you say otherwise).
        image_size: size prompts' images are drawn at; default: the model's native size.
        calibration: the calibration prompts to keep the evaluation disjoint from; default: the
            shipped default calibration set. ``check_calibration=False`` skips the check.
        near_duplicate: word-Jaccard threshold of the disjointness check (``None``: exact only).
        diagnostics: measure the per-layer representation gap and its PCA on
            ``diagnostic_prompts`` prompts (``pca_layer``: default the layer of largest gap).
        report: write the Markdown table and the plots into ``output``.
        progress: progress bar (``None``: only when stderr is a terminal).

    Raises:
        PromptOverlapError: evaluation and calibration prompts overlap, or ids repeat.
        EvalResumeError: ``output`` holds results made with other settings.
    """
    from cmrm_guard.steered import SteeredVLM

    check_unique_ids(prompts)
    if not prompts:
        raise ConfigError("no evaluation prompt given")
    if check_calibration:
        check_disjoint(prompts, calibration, near_duplicate=near_duplicate)
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}"
        )
    judges = list(judges) if judges else [RefusalPhraseJudge()]
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ConfigError(f"judge names repeat: {names}")
    if packs is None:
        packs = {cond.DEFAULT_PACK: svlm.vectors} if svlm.vectors is not None else {}
    if conditions is None:
        conditions = cond.default_conditions(packs=list(packs) or (), sample_alphas=(1.0,))
    cond.check_conditions(conditions)
    wrappers: dict[str | None, Any] = {None: svlm}
    for condition in conditions:
        if condition.kind == "dataset" and condition.pack not in wrappers:
            if condition.pack is None or condition.pack not in packs:
                raise ConfigError(
                    f"condition {condition.name!r} uses pack {condition.pack!r}, but packs holds "
                    f"{sorted(packs) or 'none'}: pass packs={{{condition.pack!r}: ...}}"
                )
            pack = packs[condition.pack]
            wrappers[condition.pack] = (
                svlm
                if pack is svlm.vectors and pack is not None
                else SteeredVLM(
                    svlm.model,
                    svlm.processor,
                    vectors=pack,
                    adapter=svlm.adapter,
                    config=svlm.config,
                    strict=True,
                )
            )
    size: tuple[int, int] = (
        (int(image_size[0]), int(image_size[1]))
        if image_size
        else svlm.adapter.default_image_size(svlm.processor)
    )
    folder = Path(output) if output is not None else None
    generation = {"max_new_tokens": int(max_new_tokens), "do_sample": False, **dict(generate_kwargs or {})}
    header = {
        "model": _model_info(svlm),
        "generation": generation,
        "image_size": list(size),
        "steering_defaults": svlm.config.model_dump(mode="json"),
        "conditions": {c.name: c.as_dict() | _pack_info(wrappers, c) for c in conditions},
    }
    results = _start(folder, header, prompts, judges, resume)

    show = sys.stderr.isatty() if progress is None else progress
    todo = [
        (c, [p for p in prompts if c.applies_to(p) and p.id not in results.data["records"].get(c.name, {})])
        for c in conditions
    ]
    total = sum(len(batch) for _, batch in todo)
    with tqdm(total=total, desc="CMRM eval", unit="reply", disable=not show) as bar:
        for condition, pending in todo:
            bar.set_postfix_str(condition.name)
            wrapper = wrappers[condition.pack if condition.kind == "dataset" else None]
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                _run_batch(wrapper, condition, chunk, judges, results, size, generation)
                if folder is not None:
                    results.save(folder)
                bar.update(len(chunk))
    _judge_missing(results, judges, batch_size)
    if diagnostics and _diagnostics_stale(results, conditions, prompts, diagnostic_prompts, pca_layer):
        from cmrm_guard.eval.diagnostics import choose_prompts, representation_diagnostics

        chosen = choose_prompts(prompts, diagnostic_prompts)
        found = representation_diagnostics(
            wrappers, chosen, conditions, image_size=size, batch_size=batch_size, pca_layer=pca_layer
        )
        found["requested"] = {"count": diagnostic_prompts, "pca_layer": pca_layer}
        results.data["diagnostics"] = found
    results.data["metrics"] = compute_metrics(results.data)
    if folder is not None:
        results.save(folder)
        if report:
            results.write_report(folder)
    return results


# ------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _model_info(svlm: Any) -> dict[str, Any]:
    return {
        "id": svlm.model_id,
        "model_type": svlm.model_type,
        "num_layers": svlm.num_layers,
        "hidden_size": svlm.hidden_size,
        "adapter": svlm.adapter.name,
    }


def _pack_info(wrappers: Mapping[str | None, Any], condition: Condition) -> dict[str, Any]:
    if condition.kind != "dataset":
        return {}
    pack = wrappers[condition.pack].vectors
    digest = hashlib.sha256()
    for layer in pack.layer_indices:
        digest.update(pack.shifts[layer].numpy().tobytes())
    return {
        "pack_source": pack.meta.repo_id or pack.meta.base_model,
        "pack_revision": pack.meta.revision,
        "pack_sha256": digest.hexdigest(),
        "pack_alpha_default": pack.meta.alpha,
        "pack_application": pack.meta.application,
    }


def _start(
    folder: Path | None,
    header: dict[str, Any],
    prompts: Sequence[EvalPrompt],
    judges: Sequence[Judge],
    resume: bool,
) -> EvalResults:
    from cmrm_guard import package_version

    path = folder / RESULTS_NAME if folder is not None else None
    prompt_records = {p.id: p.record() for p in prompts}
    if resume and path is not None and path.is_file():
        results = EvalResults.load(path)
        data = results.data
        _check_same(data, "model", header["model"], path)
        _check_same(data, "generation", header["generation"], path)
        _check_same(data, "image_size", header["image_size"], path)
        _check_same(data, "steering_defaults", header["steering_defaults"], path)
        for name, spec in header["conditions"].items():
            if name in data["conditions"] and data["conditions"][name] != spec:
                raise EvalResumeError(
                    f"{path}: condition {name!r} was run as {data['conditions'][name]}, this run asks "
                    f"{spec}; use another output folder or resume=False (--no-resume)"
                )
        for pid, record in prompt_records.items():
            old = data["prompts"].get(pid)
            if old is not None and old["fingerprint"] != record["fingerprint"]:
                raise EvalResumeError(
                    f"{path}: prompt {pid!r} differs from the one recorded there; use another output "
                    "folder or resume=False (--no-resume)"
                )
        data["conditions"].update(header["conditions"])
        data["prompts"].update(prompt_records)
        data["judges"] = [j.name for j in judges] + [
            n for n in data["judges"] if n not in {j.name for j in judges}
        ]
        return results
    data = {
        "format": FORMAT,
        "created": _now(),
        "updated": _now(),
        "cmrm_guard_version": package_version(),
        **header,
        "judges": [j.name for j in judges],
        "prompts": prompt_records,
        "records": {},
        "applied": {},
        "diagnostics": None,
        "metrics": {},
    }
    return EvalResults(data, path)


def _check_same(data: Mapping[str, Any], key: str, expected: Any, path: Path) -> None:
    if data.get(key) != expected:
        raise EvalResumeError(
            f"{path} was made with {key} {data.get(key)}, this run asks {expected}: use another output "
            "folder or resume=False (--no-resume)"
        )


def _run_batch(
    svlm: Any,
    condition: Condition,
    prompts: Sequence[EvalPrompt],
    judges: Sequence[Judge],
    results: EvalResults,
    size: tuple[int, int],
    generation: Mapping[str, Any],
) -> None:
    conversations = [condition.conversation(p, size, svlm.adapter) for p in prompts]
    out = svlm.generate(conversations, config=condition.steering_config(svlm.config), **generation)
    rows = out.steering.rows_steered or (False,) * len(prompts)
    records = results.data["records"].setdefault(condition.name, {})
    applied = out.steering.as_dict()
    applied.pop("rows_steered")
    results.data.setdefault("applied", {})[condition.name] = applied
    for i, (prompt, text) in enumerate(zip(prompts, out.texts, strict=True)):
        record: dict[str, Any] = {"response": text, "steered": bool(out.steering.applied and rows[i])}
        if out.new_token_counts:
            record["new_tokens"] = out.new_token_counts[i]
        if prompt.kind == "utility":
            record["correct"] = check_answer(
                text, prompt.answer or "", prompt.answer_type or "contains", prompt.options
            )
        else:
            record["verdicts"] = {}
        records[prompt.id] = record
    _judge(results, condition.name, [p.id for p in prompts if p.kind != "utility"], judges)


def _judge(results: EvalResults, condition: str, prompt_ids: Sequence[str], judges: Sequence[Judge]) -> None:
    records = results.data["records"][condition]
    prompts = results.data["prompts"]
    for judge in judges:
        ids = [pid for pid in prompt_ids if judge.name not in records[pid].get("verdicts", {})]
        if not ids:
            continue
        verdicts = judge.judge(
            [prompts[pid]["request"] for pid in ids], [records[pid]["response"] for pid in ids]
        )
        for pid, verdict in zip(ids, verdicts, strict=True):
            records[pid].setdefault("verdicts", {})[judge.name] = {
                "label": verdict.label,
                "reason": verdict.reason,
            }


def _judge_missing(results: EvalResults, judges: Sequence[Judge], batch_size: int) -> None:
    prompts = results.data["prompts"]
    for condition, records in results.data["records"].items():
        ids = [pid for pid in records if prompts[pid]["kind"] != "utility"]
        for start in range(0, len(ids), max(batch_size, 32)):
            _judge(results, condition, ids[start : start + max(batch_size, 32)], judges)


def _diagnostics_stale(
    results: EvalResults,
    conditions: Sequence[Condition],
    prompts: Sequence[EvalPrompt],
    count: int,
    pca_layer: int | None,
) -> bool:
    found = results.data.get("diagnostics")
    if not found:
        return True
    wanted = {"multimodal"} | {c.name for c in conditions if c.steered}
    from cmrm_guard.eval.diagnostics import choose_prompts

    return (
        set(found["gap"]) != wanted
        or found["prompt_ids"] != [p.id for p in choose_prompts(prompts, count)]
        or found.get("requested", {}).get("pca_layer") != pca_layer
    )
