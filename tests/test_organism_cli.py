"""The organism as the library ships it (prompt sets and parts in the package, the demo command)
and its research pipeline's command line, ``python -m organism`` (no backbone needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

from cmrm_guard.cli import main as cmrm_guard_main
from cmrm_guard.organism import assemble as asm
from cmrm_guard.organism import backbone as bb
from cmrm_guard.organism import data

ROOT = Path(__file__).resolve().parents[1]


def test_prompt_sets_ship_in_the_package_with_their_provenance():
    package = Path(asm.__file__).resolve().parent
    assert package / "prompts" == data.PROMPTS and package / "parts" == asm.PARTS
    provenance = (data.PROMPTS / "PROVENANCE.md").read_text()
    for name in ("calibration_harmful.jsonl", "calibration_benign.jsonl", "overrefusal_xstest.jsonl"):
        digest = hashlib.sha256((data.PROMPTS / name).read_bytes()).hexdigest()
        assert f"| `{name}` |" in provenance and f"`{digest}`" in provenance, name
    assert "MIT License" in provenance and "CC BY 4.0" in provenance


def test_shipped_prompts_give_the_splits_the_shipped_organism_was_built_on():
    """The splits recorded by the build that made the shipped parts are the ones the packaged
    prompt files give (the demo and the evaluation measure on held-out prompts)."""
    recorded = json.loads((ROOT / "organism" / "results" / "splits.json").read_text())
    assert data.load_splits().ids() == recorded


def test_prompt_sets_are_read_from_the_package_wherever_the_process_runs(tmp_path, monkeypatch):
    """A decoy ``shared/data`` beside and above the working folder is never read."""
    decoy = tmp_path / "shared" / "data"
    decoy.mkdir(parents=True)
    for name in ("calibration_harmful.jsonl", "calibration_benign.jsonl", "overrefusal_xstest.jsonl"):
        (decoy / name).write_text('{"id": "decoy-1", "prompt": "decoy", "label": "safe"}\n')
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("CMRM_GUARD_DATA", str(decoy))
    splits = data.load_splits()
    assert len(splits.harmful["eval"]) == 260 and len(data.read_prompt_set("overrefusal_xstest.jsonl")) == 450
    assert not hasattr(data, "data_dir")


def test_demo_falls_back_naming_each_missing_dependency_and_how_to_install_it(monkeypatch, capsys):
    """Without ``accelerate`` (needed by transformers to read the GGUF backbone) the demo says so
    and runs the tiny model, rather than failing inside the backbone load."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    assert bb.missing_dependencies() == ["accelerate"]
    assert cmrm_guard_main(["demo", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "model organism unavailable (accelerate not installed: " + bb.INSTALL + ")" in out
    assert "hooks left on the model: 0" in out


def test_library_command_line_has_no_research_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cmrm_guard_main(["organism", "build"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'organism'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "--n", "-5"], "--n: expected an integer >= 1; got -5"),
        (["sweep", "--n", "abc"], "--n: expected an integer >= 1; got 'abc'"),
        (["evaluate", "--n", "-1"], "--n: expected an integer >= 0; got -1"),
        (["probe", "--n", "1"], "--n: expected an integer >= 2; got 1"),
        (["build", "--threads", "0"], "--threads: expected an integer >= 1; got 0"),
    ],
)
def test_pipeline_counts_out_of_range_are_refused_before_any_work(argv, message, capsys):
    from organism.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_pipeline_help_describes_the_options_not_their_history():
    """No build numbers, sessions or machines in what ``python -m organism <command> --help`` prints."""
    import argparse

    from organism.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    history = re.compile(r"\bbuilds? \d|session|machine", re.IGNORECASE)
    for name, command in commands.choices.items():
        text = command.format_help()
        assert not history.search(text), (name, history.findall(text))
    assert set(commands.choices) == {"build", "sweep", "evaluate", "probe"}
    assert not history.search(asm.__doc__ or "") and not history.search(
        "".join(str(getattr(asm, n).__doc__) for n in ("lora_alpha", "lora_layers_from"))
    )


def test_results_of_the_shipped_parts_go_to_organism_results_and_others_beside_their_parts(tmp_path):
    from organism import RESULTS, results_dir

    assert RESULTS == ROOT / "organism" / "results"
    assert results_dir() == RESULTS == results_dir(asm.PARTS)
    assert results_dir(tmp_path / "cand") == tmp_path / "cand"
