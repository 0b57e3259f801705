"""benchmarks/run_all.py: one table of ratios and goals; the pack load + attach benchmark runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:  # benchmark scripts import their shared `common` module
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_table_reads_every_benchmark_and_judges_goals(tmp_path):
    run_all = _load("run_all")
    runs = {
        "steering": {"status": "ok", "seconds": 1.0, "results": {
            "B=1 dataset/unsteered paired median": 1.004, "B=1 sample/unsteered paired median": 2.0,
            "B=1 sample-level goal (1 + twin prefill share)": 1.9,
            "hook cost per layer call, decode (4,1,H), us": 3.3, "steer() enter+exit, 30 layers, ms": 0.33}},
        "calibration": {"status": "ok", "seconds": 1.0, "results": {
            "memory ratio calibrate / output_hidden_states": 0.1, "throughput ratio batched / one-by-one": 2.5}},
        "langchain": {"status": "skipped: script missing", "seconds": 0.0, "results": None},
        "pack_load": {"status": "ok", "seconds": 1.0, "results": {"load + attach ms (median)": 2.2}},
    }  # fmt: skip
    rows = {row["measure"]: row for row in run_all.summary_rows(runs)}
    assert rows["dataset-level generate / unsteered, B=1"]["met"] is True
    assert rows["sample-level generate / unsteered, B=1"]["met"] is False  # 2.0 > its own goal 1.9
    assert rows["sample-level generate / unsteered, B=1"]["goal"] == "<= 1.9"
    assert rows["steer() set-up per call (30 layers), ms"]["met"] is True
    assert rows["pack load + attach, 32 x 4096, ms"]["goal"] == "< 50"
    assert not any(row["benchmark"] == "langchain" for row in rows.values())
    markdown = run_all.write_summary(runs, tmp_path, quick=True).read_text()
    assert "| pack_load | pack load + attach, 32 x 4096, ms | 2.2 | < 50 | yes |" in markdown
    assert "| sample-level generate / unsteered, B=1 | 2 | <= 1.9 | **no** |" in markdown
    assert "| langchain | skipped: script missing | 0 |" in markdown
    assert json.loads((tmp_path / "summary.json").read_text())["quick"] is True


def test_pack_load_benchmark_times_a_real_32_by_4096_attach():
    results = _load("bench_pack_load").run(repeats=1)
    assert results["pack layers"] == 32 and results["pack hidden"] == 4096
    assert 0 < results["load + attach ms (median)"] < 10_000
