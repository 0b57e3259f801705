"""The evaluation harness end to end on a tiny random LLaVA: files, table, plots, resume, CLI.

Tiny random models emit gibberish: these tests check plumbing and well-formed output, not rates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from cmrm_guard import SteeredVLM, calibrate, count_hooks
from cmrm_guard.cli import main
from cmrm_guard.eval import conditions as cond
from cmrm_guard.eval.judges import RefusalPhraseJudge, Verdict
from cmrm_guard.eval.metrics import compute_metrics, wilson_interval
from cmrm_guard.eval.prompts import PromptOverlapError, load_prompt_set, make_prompt
from cmrm_guard.eval.runner import EvalResumeError, run_evaluation
from cmrm_guard.testing import save_tiny_vlm
from cmrm_guard.vectors.data import default_calibration_records
from tests.conftest import tiny

GENERATION = {"max_new_tokens": 3, "batch_size": 4, "diagnostic_prompts": 3, "progress": False}


def _svlm() -> SteeredVLM:
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor)
    svlm.attach(calibrate(svlm, [f"calibration request {i}" for i in range(3)], batch_size=3, progress=False))
    return svlm


def _prompts() -> list:
    return (
        load_prompt_set("harmful", n=2)
        + load_prompt_set("xstest_safe", n=2)
        + load_prompt_set("gsm8k", n=1)
        + load_prompt_set("shapes", n=2)
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    svlm = _svlm()
    folder = tmp_path_factory.mktemp("eval")
    conditions = cond.default_conditions([0.5, 1.0], sample_alphas=[1.0])
    results = run_evaluation(svlm, _prompts(), conditions, output=folder, **GENERATION)
    return svlm, folder, results


def test_results_json_is_complete_and_well_formed(evaluated):
    svlm, folder, results = evaluated
    data = json.loads((folder / "results.json").read_text())
    assert data == results.data
    assert data["format"] == "cmrm-guard-eval/1" and data["judges"] == ["refusal-phrase/v1"]
    assert data["model"]["model_type"] == "llava" and data["model"]["num_layers"] == svlm.num_layers
    names = ["multimodal", "text-only", "dataset alpha=0.5", "dataset alpha=1", "sample alpha=1"]
    assert list(data["conditions"]) == names and list(data["records"]) == names
    prompts = data["prompts"]
    for name, records in data["records"].items():
        expected = {p for p, r in prompts.items() if not (name == "text-only" and r.get("needs_image"))}
        assert set(records) == expected, name
        for pid, record in records.items():
            assert isinstance(record["response"], str)
            if prompts[pid]["kind"] == "utility":
                assert isinstance(record["correct"], bool)
            else:
                assert set(record["verdicts"]) == {"refusal-phrase/v1"}
                assert record["verdicts"]["refusal-phrase/v1"]["label"] in ("refusal", "compliance", "broken")
            steered = data["conditions"][name]["kind"] in ("dataset", "sample")
            assert record["steered"] is steered
    assert (
        data["applied"]["dataset alpha=0.5"]["alpha"] == 0.5
        and data["applied"]["dataset alpha=0.5"]["applied"]
    )
    assert data["conditions"]["dataset alpha=1"]["pack_sha256"]
    assert count_hooks(svlm.model) == 0


def test_metrics_partition_and_carry_their_judge(evaluated):
    _, _, results = evaluated
    for name, m in results.metrics.items():
        harmful = m["harmful"]["refusal-phrase/v1"]
        total = sum(harmful[key]["k"] for key in ("unsafe", "refusal", "broken", "unknown"))
        assert total == harmful["unsafe"]["n"] == 2, name
        for entry in [
            *harmful.values(),
            *m["benign"]["refusal-phrase/v1"].values(),
            m["utility"]["accuracy"],
        ]:
            low, high = entry["ci95"]
            assert 0 <= low <= (entry["rate"] or 0) <= high <= 1 and entry["judge"]
        assert m["utility"]["accuracy"]["judge"] == "checker"
    assert results.metrics["text-only"]["counts"]["utility"] == 1  # image questions not asked text-only
    assert results.metrics["multimodal"]["counts"]["utility"] == 3


def test_table_and_plots_are_written(evaluated):
    _, folder, results = evaluated
    table = (folder / "results.md").read_text()
    assert table.startswith("### CMRM evaluation")
    for name in results.data["conditions"]:
        assert f"| {name} |" in table
    assert "`refusal-phrase/v1`" in table and "Wilson 95%" in table
    # two utility sets (gsm8k, shapes): a per-set table
    assert (
        "By prompt set" in table
        and "gsm8k/train (accuracy)" in table
        and "shapes (generated) (accuracy)" in table
    )
    for plot in ("alpha_sweep", "layer_gap", "pca"):
        path = folder / "plots" / f"{plot}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{plot}.png" in table
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 300


def test_diagnostics_measure_every_layer_before_and_after(evaluated):
    svlm, _, results = evaluated
    diagnostics = results.data["diagnostics"]
    assert diagnostics["layers"] == list(range(svlm.num_layers)) and len(diagnostics["prompt_ids"]) == 3
    assert set(diagnostics["gap"]) == {"multimodal", "dataset alpha=0.5", "dataset alpha=1", "sample alpha=1"}
    for gap in diagnostics["gap"].values():
        assert all(-1 <= c <= 1 for c in gap["cosine"]) and all(d >= 0 for d in gap["l2"])
    assert diagnostics["gap"]["dataset alpha=1"]["l2"] != diagnostics["gap"]["multimodal"]["l2"]
    pca = diagnostics["pca"]
    assert pca["layer"] in diagnostics["layers"]
    assert {name: len(points) for name, points in pca["points"].items()} == {
        "text-only": 3, "multimodal": 3, "dataset alpha=0.5": 3, "dataset alpha=1": 3, "sample alpha=1": 3,
    }  # fmt: skip


def test_resume_generates_nothing_new_and_judges_only_what_is_missing(evaluated, tmp_path, monkeypatch):
    svlm, folder, results = evaluated
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((folder / "results.json").read_text())

    def no_generation(*args, **kwargs):
        raise AssertionError("a resumed run must not generate again")

    class Strict:
        name = "always-refusal"

        def judge(self, prompts, responses):
            return [Verdict("refusal", self.name, "test") for _ in responses]

    monkeypatch.setattr(SteeredVLM, "generate", no_generation)
    conditions = cond.default_conditions([0.5, 1.0], sample_alphas=[1.0])
    resumed = run_evaluation(
        svlm, _prompts(), conditions, output=copy, judges=[Strict(), RefusalPhraseJudge()], **GENERATION
    )
    assert resumed.data["judges"] == ["always-refusal", "refusal-phrase/v1"]
    for name, records in resumed.data["records"].items():
        for pid, record in records.items():
            assert record["response"] == results.data["records"][name][pid]["response"]
            if "verdicts" in record:
                assert record["verdicts"]["always-refusal"]["label"] == "refusal"
    assert resumed.metrics["multimodal"]["harmful"]["always-refusal"]["refusal"]["rate"] == 1.0
    assert "Unsafe rate by judge" in (copy / "results.md").read_text()
    with pytest.raises(EvalResumeError, match="max_new_tokens"):
        run_evaluation(svlm, _prompts(), conditions, output=copy, **(GENERATION | {"max_new_tokens": 5}))


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, monkeypatch):
    svlm = _svlm()
    prompts = load_prompt_set("harmful", n=3)
    conditions = [cond.multimodal(), cond.dataset(1.0)]
    real = SteeredVLM.generate
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SteeredVLM, "generate", flaky)
    settings = GENERATION | {"batch_size": 2, "diagnostics": False}
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(svlm, prompts, conditions, output=tmp_path, **settings)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]["multimodal"]) == 2  # the first batch was saved
    calls["n"] = 10
    done = run_evaluation(svlm, prompts, conditions, output=tmp_path, **settings)
    assert {name: len(r) for name, r in done.data["records"].items()} == {
        "multimodal": 3,
        "dataset alpha=1": 3,
    }
    assert (
        done.data["records"]["multimodal"]
        == done.data["records"]["multimodal"] | saved["records"]["multimodal"]
    )


def test_overlap_with_calibration_stops_before_any_generation(monkeypatch):
    svlm = _svlm()
    leaked = make_prompt(default_calibration_records()[0], "harmful")
    monkeypatch.setattr(SteeredVLM, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(PromptOverlapError, match="overlap"):
        run_evaluation(svlm, [leaked], [cond.multimodal()], **GENERATION)


def test_wilson_interval_and_metric_definitions():
    low, high = wilson_interval(0, 10)
    assert low == 0 and math.isclose(high, 0.2775, abs_tol=1e-4)
    low, high = wilson_interval(5, 10)
    assert math.isclose(low, 0.2366, abs_tol=1e-4) and math.isclose(high, 0.7634, abs_tol=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    labels = ["refusal", "compliance", "compliance", "broken"]
    data = {
        "prompts": {f"h{i}": {"kind": "harmful"} for i in range(4)} | {"b0": {"kind": "benign"}},
        "records": {"c": {f"h{i}": {"verdicts": {"j": {"label": label}}} for i, label in enumerate(labels)}
                    | {"b0": {"verdicts": {"j": {"label": "refusal"}}}}},
    }  # fmt: skip
    metrics = compute_metrics(data)["c"]
    harmful = metrics["harmful"]["j"]
    assert (harmful["unsafe"]["rate"], harmful["refusal"]["rate"], harmful["broken"]["rate"]) == (
        0.5,
        0.25,
        0.25,
    )
    assert metrics["benign"]["j"]["over_refusal"]["rate"] == 1.0 and "utility" not in metrics


def test_metrics_per_prompt_source():
    sources = {"h0": "beside", "h1": "beside", "h2": "typed", "h3": "typed", "h4": "typed"}
    labels = {"h0": "refusal", "h1": "refusal", "h2": "compliance", "h3": "refusal", "h4": "broken"}
    data = {
        "prompts": {pid: {"kind": "harmful", "source": s} for pid, s in sources.items()}
        | {"b0": {"kind": "benign"}},
        "records": {
            "c": {pid: {"verdicts": {"j": {"label": label}}} for pid, label in labels.items()}
            | {"b0": {"verdicts": {"j": {"label": "compliance"}}}}
        },
    }
    metrics = compute_metrics(data)["c"]
    harmful = metrics["harmful"]["j"]
    assert harmful["refusal"]["k"] == 3 and harmful["refusal"]["n"] == 5
    beside, typed = (
        metrics["by_source"]["harmful"]["j"]["beside"],
        metrics["by_source"]["harmful"]["j"]["typed"],
    )
    assert (beside["refusal"]["k"], beside["refusal"]["n"]) == (2, 2)
    assert (typed["refusal"]["k"], typed["unsafe"]["k"], typed["broken"]["k"], typed["refusal"]["n"]) == (
        1,
        1,
        1,
        3,
    )
    assert typed["refusal"]["ci95"] == list(wilson_interval(1, 3))
    benign = metrics["by_source"]["benign"]["j"]
    assert benign["benign"]["over_refusal"]["k"] == 0  # a prompt without a source: its kind names it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llava")
    save_tiny_vlm("llava", folder)
    return folder


def test_cli_eval_end_to_end_and_report_only(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", str(model_dir), "-o", str(out), "--calibrate", "3", "--num", "1", "--alphas", "0.5,1",
            "--utility", "gsm8k", "--max-new-tokens", "2", "--diagnostic-prompts", "2", "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| dataset alpha=0.5 |" in printed and "| sample alpha=1 |" in printed
    assert {p.name for p in (out / "plots").iterdir()} == {"alpha_sweep.png", "layer_gap.png", "pca.png"}
    (out / "results.md").unlink()
    assert main(["eval", "-o", str(out), "--report-only"]) == 0
    assert (out / "results.md").is_file()


def test_cli_eval_errors_are_one_line(model_dir, tmp_path, capsys):
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps(default_calibration_records()[0]) + "\n")
    args = ["eval", str(model_dir), "-o", str(tmp_path / "o"), "--harmful", str(leaked), "--benign",
            "--utility", "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmrm-guard eval: error: 1 evaluation prompt(s) overlap") and err.count("\n") == 1
    assert main(args + ["--drop-overlap"]) == 2  # nothing left
    assert "no evaluation prompt left" in capsys.readouterr().err
    assert main(["eval", str(model_dir), "-o", str(tmp_path / "o"), "--llm-judge", "nowhere:Model"]) == 2
    assert "cannot import" in capsys.readouterr().err
    assert main(["eval", "-o", str(tmp_path / "missing"), "--report-only"]) == 2


def test_llm_judge_from_the_cli_must_be_a_chat_model(model_dir, tmp_path, capsys):
    args = ["eval", str(model_dir), "-o", str(tmp_path / "o"), "--num", "1", "--utility", "--benign",
            "--llm-judge", "collections:OrderedDict", "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert "LangChain chat model" in capsys.readouterr().err


def test_steered_states_are_a_real_pass(evaluated):
    """Sanity: the dataset condition's states differ from unsteered ones (steering really ran)."""
    svlm, _, _ = evaluated
    prompt = load_prompt_set("harmful", n=1)[0]
    chat = prompt.conversation(svlm.adapter.default_image_size(svlm.processor))
    plain = svlm.last_token_states([chat])
    steered = svlm.last_token_states([chat], config=cond.dataset(1.0).steering_config())
    assert not torch.equal(plain[svlm.num_layers - 1], steered[svlm.num_layers - 1])
