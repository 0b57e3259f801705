"""`cmrm-guard` CLI: calibrate -> save -> load -> attach round trip, push / pull / inspect, clean errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_fixtures import ALICE, LocalHub, local_hub

from cmrm_guard import SteeredVLM, VectorPack, calibrate, count_hooks
from cmrm_guard.cli import main
from cmrm_guard.testing import save_tiny_vlm
from cmrm_guard.vectors import data
from tests.conftest import image_chat


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with local_hub(tmp_path / "hf_home", monkeypatch) as running:
        yield running


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llava")
    save_tiny_vlm("llava", folder)
    return folder


def test_calibrate_save_load_attach_gives_bit_identical_steering(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"id": f"p{i}", "prompt": f"request number {i} please"}) for i in range(6))
    )
    status = main(["calibrate", str(model_dir), "-o", str(tmp_path / "pack"), "--data", str(prompts),
                   "--batch-size", "4", "--quiet", "--alpha", "0.7"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    loaded = VectorPack.from_pretrained(tmp_path / "pack")
    assert loaded.meta.num_samples == 6 and loaded.meta.alpha == 0.7
    svlm = SteeredVLM.from_pretrained(model_dir)
    records = data.read_prompts_jsonl(prompts)
    size = svlm.adapter.default_image_size(svlm.processor)
    in_memory = calibrate(
        svlm, data.calibration_conversations(records, image_size=size), batch_size=4, alpha=0.7
    )
    for layer in in_memory.layer_indices:
        assert torch.equal(loaded.shifts[layer], in_memory.shifts[layer])
    assert loaded.meta.calibration_hash == in_memory.meta.calibration_hash
    from_disk = SteeredVLM.from_pretrained(model_dir, vectors=tmp_path / "pack")
    from_memory = SteeredVLM.from_pretrained(model_dir, vectors=in_memory)
    assert torch.equal(from_disk.forward([image_chat()]).logits, from_memory.forward([image_chat()]).logits)
    assert count_hooks(from_disk.model) == 0


def test_calibrate_defaults_to_the_shipped_prompts(model_dir, tmp_path):
    assert (
        main(["calibrate", str(model_dir), "-o", str(tmp_path / "p"), "--num-samples", "4", "--quiet"]) == 0
    )
    pack = VectorPack.from_pretrained(tmp_path / "p")
    assert pack.meta.num_samples == 4 and pack.meta.model_type == "llava"


def test_push_pull_inspect_through_a_local_hub(hub, model_dir, tmp_path, capsys):
    source = tmp_path / "pack"
    assert main(["calibrate", str(model_dir), "-o", str(source), "--num-samples", "3", "--quiet"]) == 0
    assert main(["push", str(source), "alice/tiny-llava-cmrm", "--token", ALICE, "--private"]) == 0
    assert len(hub.commits("alice/tiny-llava-cmrm")) == 2  # the repo's initial commit + ONE pack commit
    # before anything is cached (huggingface_hub serves a cached snapshot when the Hub refuses)
    assert main(["pull", "alice/tiny-llava-cmrm"]) == 2  # private, no token
    assert "not found" in capsys.readouterr().err
    assert main(["pull", "alice/tiny-llava-cmrm", "--token", ALICE, "-o", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"at commit [0-9a-f]{40}", out)
    assert torch.equal(
        VectorPack.from_pretrained(tmp_path / "copy").shifts[1], VectorPack.from_pretrained(source).shifts[1]
    )
    assert main(["inspect", "alice/tiny-llava-cmrm", "--token", ALICE]) == 0
    printed = capsys.readouterr().out
    assert '"model_type": "llava"' in printed and "layer   1:" in printed


def test_errors_are_one_line_and_exit_non_zero(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"no_prompt": 1}\n')
    assert (
        main(["calibrate", str(tmp_path / "missing-model"), "-o", str(tmp_path / "x"), "--data", str(bad)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2" in err and "Traceback" not in err
    assert main(["inspect", str(bad)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "m", "-o", "x", "--layers", "a,b"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--max-new-tokens", "-3"], "--max-new-tokens: expected an integer >= 1; got -3"),
        (["calibrate", "m", "-o", "x", "--batch-size", "0"], "--batch-size: expected an integer >= 1; got 0"),
        (["calibrate", "m", "-o", "x", "--alpha", "-1"], "--alpha: expected a finite number >= 0; got '-1'"),
        (
            ["calibrate", "m", "-o", "x", "--alpha", "nan"],
            "--alpha: expected a finite number >= 0; got 'nan'",
        ),
        (
            ["calibrate", "m", "-o", "x", "--alpha", "inf"],
            "--alpha: expected a finite number >= 0; got 'inf'",
        ),
        (["calibrate", "m", "-o", "x", "--alpha", "x"], "--alpha: expected a finite number >= 0; got 'x'"),
    ],
)
def test_counts_out_of_range_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tiny_demo_runs_and_leaves_no_hooks(capsys):
    assert main(["demo", "--tiny", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "steering applied: {'applied': True" in out
    assert "policy 'images'" in out and "hooks left on the model: 0" in out


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse refusals
        return int(exit_info.code or 0)


def _single_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "error:" in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--tiny", "--model-type", "no-such-arch"], "unknown tiny model_type 'no-such-arch'"),
        (["demo", "--max-new-tokens", "x"], "--max-new-tokens"),
        (["calibrate", "{tmp}/missing-model"], "required: --output/-o"),
        (["calibrate", "{model}", "-o", "{tmp}/o", "--data", "{tmp}/none.jsonl"], "cannot read prompt file"),
        (["push", "{tmp}/no-pack", "alice/x"], "does not exist"),
        (["push", "{tmp}/pack", "not a/valid id!"], "not a Hub repo id"),
        (["pull", "not a/valid id!"], "neither a local folder nor a Hub repo id"),
        (["pull", "alice/nothing-here", "--timeout", "2"], "was not found"),
        (["pull", "alice/x", "--timeout", "-1"], "--timeout: expected a number of seconds > 0"),
        (["inspect", "{tmp}/no-pack"], "does not exist"),
        (["inspect", "{tmp}/pack", "--revision", "main"], "a revision applies to Hub repo ids only"),
        (["inspect", "{tmp}/pack/pack_config.json"], "is a file"),
        (["eval", "{tmp}/missing-model", "-o", "{tmp}/e"], "eval: error:"),
        (["organism", "no-such-step"], "invalid choice"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_every_subcommand_reports_bad_input_in_one_line_with_status_2(
    hub, model_dir, tmp_path, capsys, argv, match
):
    from cmrm_guard.vectors.pack import PackMeta

    meta = PackMeta(model_type="llava", hidden_size=4, num_layers=1, layer_indices=[0])
    VectorPack({0: torch.ones(4)}, meta).save_pretrained(tmp_path / "pack")
    argv = [a.format(tmp=tmp_path, model=model_dir) for a in argv]
    assert _run(argv) == 2
    assert match in _single_error_line(capsys)


def test_hub_failures_are_one_line(hub, tmp_path, capsys):
    from hub_server import Fault

    hub.state.faults.append(Fault("/api/models/alice/hangs", action="hang"))
    hub.state.faults.append(Fault("/api/models/alice/broken", status=500))
    assert main(["pull", "alice/hangs", "--timeout", "0.5"]) == 2
    assert "total deadline of 0.5 s" in _single_error_line(capsys)
    assert main(["inspect", "alice/broken", "--revision", "main", "--timeout", "5"]) == 2
    err = _single_error_line(capsys)
    assert "HTTP 500" in err and "offline" not in err


def test_a_cuda_device_map_without_cuda_is_one_line(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [
        "calibrate",
        str(model_dir),
        "-o",
        str(tmp_path / "p"),
        "--device-map",
        "cuda",
        "--num-samples",
        "2",
    ]
    assert main(argv) == 2
    assert "--device-map 'cuda'" in _single_error_line(capsys)
    assert not (tmp_path / "p").exists()


def test_an_unexpected_exception_is_still_one_line(monkeypatch, capsys):
    import cmrm_guard.demo

    def broken(**kwargs):
        raise AssertionError("internal\ninvariant broken")

    monkeypatch.setattr(cmrm_guard.demo, "run_demo", broken)
    assert main(["demo", "--tiny"]) == 2
    assert "AssertionError: internal invariant broken" in _single_error_line(capsys)


def test_tiny_demo_prints_no_raw_bytes_or_replacement_characters(capsys):
    """The tiny model's replies decode to partial UTF-8 bytes and control characters: the demo
    prints them neither as U+FFFD nor as escapes."""
    import unicodedata

    assert main(["demo", "--tiny", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "\ufffd" not in out and "\\x" not in out and "\\u" not in out
    assert not [ch for ch in out if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co", "Cs")]


@pytest.mark.parametrize(
    ("reply", "width", "shown"),
    [
        (
            "I can't help with that. It may be illegal. Let me know if th",
            100,
            "I can't help with that. It may be illegal.",
        ),
        ("Sure! Here is a website that lets users che", 100, "Sure! Here is a website that lets users..."),
        ("The word is yogurt.", 100, "The word is yogurt."),
        ("Sure! Here is a site for it: 1. Go", 100, "Sure! Here is a site for it: 1..."),
        ("Sure. Here is  a\nvery long reply that goes on and on", 24, "Sure. Here is a very..."),
        ("ab\x0ec\ufffd d\ufffd", 100, "abc..."),
    ],
)
def test_demo_replies_end_at_a_sentence_or_word_boundary(reply, width, shown):
    from cmrm_guard.demo import clip_reply

    assert clip_reply(reply, width) == shown
    assert len(clip_reply(reply, width)) <= width
