"""The organism build's stage-2 curriculum (no backbone needed)."""

import pytest

from cmrm_guard.organism.data import Example
from organism import train


def _examples() -> list[Example]:
    text = [Example(f"h{i}", "no", None, "text_harmful") for i in range(6)]
    text += [Example(f"b{i}", "yes", None, "text_benign") for i in range(4)]
    image = [Example(f"q{i}", "red", [], "qa_colour") for i in range(10)]
    return text + image


def test_joint_is_one_phase_in_the_given_order():
    examples = _examples()
    assert train.curriculum_phases(examples, "joint", 0.5, 0) == [examples]


def test_sequential_puts_text_first_and_replays_a_share_in_the_image_phase():
    examples = _examples()
    phase_a, phase_b = train.curriculum_phases(examples, "sequential", 0.3, 0)
    assert {e.kind for e in phase_a} == {"text_harmful", "text_benign"} and len(phase_a) == 10
    replay = [e for e in phase_b if e.kind in train.TEXT_KINDS]
    assert len(phase_b) == 13 and len(replay) == 3
    assert phase_b == train.curriculum_phases(examples, "sequential", 0.3, 0)[1]  # seeded


def test_unknown_curriculum_is_refused():
    with pytest.raises(ValueError, match="curriculum"):
        train.curriculum_phases(_examples(), "random", 0.1, 0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"stage_b_text_share": -1.0}, "stage_b_text_share must be in"),
        ({"stage_b_text_share": 1.5}, "stage_b_text_share must be in"),
        ({"stage_b_lr": 0.0}, "stage_b_lr must be > 0"),
        ({"curriculum": "random"}, "curriculum must be one of"),
        ({"word_pool": "all"}, "word_pool must be one of"),
        ({"typed_phase": "C"}, "typed_phase must be one of"),
        ({"typed_align": -1.0}, "typed_align must be >= 0"),
        ({"typed_align_target": "image"}, "typed_align_target must be one of"),
        ({"typed_align_harmful_phase": "C"}, "typed_align_harmful_phase must be one of"),
        ({"typed_align": 0.0, "typed_align_harmful": 10}, "needs typed_align > 0"),
        ({"typed_align": 1.0, "typed_align_harmful": -1}, "typed_align_harmful must be >= 0"),
        ({"lora_first_layer": 30}, "lora_first_layer must be a decoder layer in 0..29"),
        ({"lora_first_layer": -1}, "lora_first_layer must be a decoder layer in 0..29"),
        ({"lora_rank": 0}, "lora_rank must be >= 1"),
        ({"safe_alarming": -1}, "safe_alarming must be >= 0"),
        ({"vision_clip": 0.0}, "vision_clip must be > 0"),
    ],
)
def test_bad_build_settings_are_refused_before_training(override, message):
    from organism.build import DEFAULTS, check_settings

    check_settings(dict(DEFAULTS))  # the defaults pass
    with pytest.raises(ValueError, match=message):
        check_settings(DEFAULTS | override)


def test_lora_keyword_defaults_are_the_build_defaults():
    """``attach_lora`` / ``train_lora`` / ``save_parts`` default to the LoRA the build trains."""
    import inspect

    from cmrm_guard.organism import assemble as asm
    from organism.build import DEFAULTS

    assert asm.lora_layers_from(DEFAULTS["lora_first_layer"]) == asm.LORA_LAYERS
    assert DEFAULTS["lora_rank"] == asm.LORA_RANK and asm.lora_alpha(asm.LORA_RANK) == 2 * asm.LORA_RANK
    for function, layers, rank in (
        (train.attach_lora, "layers", "rank"),
        (train.train_lora, "lora_layers", "lora_rank"),
        (asm.save_parts, "lora_layers", "lora_rank"),
    ):
        parameters = inspect.signature(function).parameters
        assert parameters[layers].default == asm.LORA_LAYERS and parameters[rank].default == asm.LORA_RANK


def test_typed_phase_a_moves_the_typed_requests_to_the_text_phase():
    examples = _examples() + [Example(f"t{i}", "ok", [], train.TYPED_KIND) for i in range(4)]
    phase_a, phase_b = train.curriculum_phases(examples, "sequential", 0.3, 0, typed_phase="A")
    assert {e.kind for e in phase_a} == {"text_harmful", "text_benign", train.TYPED_KIND}
    assert len(phase_a) == 14 and not any(e.kind == train.TYPED_KIND for e in phase_b)
    default_a, default_b = train.curriculum_phases(examples, "sequential", 0.3, 0)
    assert len(default_a) == 10 and sum(e.kind == train.TYPED_KIND for e in default_b) == 4
    with pytest.raises(ValueError, match="typed_phase"):
        train.curriculum_phases(examples, "sequential", 0.3, 0, typed_phase="C")


def test_typed_align_adds_a_state_distance_to_the_typed_examples_only():
    import random

    import torch
    from conftest import tiny

    from cmrm_guard.organism import images as img

    model, processor = tiny("llava")
    cells = img.shape_cells(random.Random(0), "red", "circle", 1)
    typed = Example("Follow the instruction in the image.", "Here is a poem.", cells, train.TYPED_KIND,
                    {"request": "Write a poem about rain."})  # fmt: skip
    other = Example("What colour is it?", "Red.", cells, "qa_colour")
    plain = train.encode(typed, processor)
    paired = train.encode(typed, processor, twin="text")
    assert plain.twin_ids is None and paired.ids == plain.ids
    assert (
        paired.twin_ids
        == train.encode(Example("Write a poem about rain."), processor).ids[: len(paired.twin_ids)]
    )
    assert train.encode(other, processor, twin="text").twin_ids is None
    pad = processor.tokenizer.pad_token_id or 0
    group = [paired, train.encode(other, processor)]
    with torch.no_grad():
        base = train.batch_loss(model, group, pad)
        off = train.batch_loss(model, group, pad, align=0.0)
        on = train.batch_loss(model, group, pad, align=1.0, align_layers=(0, 1))
        others_only = train.batch_loss(model, group[1:], pad, align=1.0, align_layers=(0, 1))
    assert torch.equal(base, off) and on > base
    assert torch.equal(others_only, train.batch_loss(model, group[1:], pad))


def test_beside_twin_is_the_request_beside_one_seeded_context_image():
    import random

    from conftest import tiny

    from cmrm_guard.organism import images as img

    _, processor = tiny("llava")
    tokenizer = processor.tokenizer
    cells = img.shape_cells(random.Random(0), "red", "circle", 1)
    typed = Example("Follow the instruction in the image.", "Here is a poem.", cells, train.TYPED_KIND,
                    {"request": "Write a poem about rain."})  # fmt: skip
    text = train.align_twin(typed, "text", tokenizer)
    beside = train.align_twin(typed, "beside", tokenizer)
    assert (text.prompt, text.cells) == ("Write a poem about rain.", None)
    assert beside.prompt == "Write a poem about rain." and beside.cells
    assert train.align_twin(typed, "beside", tokenizer).cells == beside.cells  # one image per request
    encoded = train.encode(typed, processor, twin="beside")
    assert encoded.twin_pixels is not None and encoded.twin_pixels.shape == encoded.pixels.shape
    assert train.encode(typed, processor, twin="text").twin_pixels is None
    with pytest.raises(ValueError, match="unknown alignment target 'image'"):
        train.align_twin(typed, "image", tokenizer)


def test_reading_examples_type_training_requests_without_an_answer():
    import torch
    from conftest import tiny

    from cmrm_guard.organism.data import PromptSplits

    model, processor = tiny("llava")
    rows = [{"id": f"h{i}", "prompt": f"Steal a car {i}."} for i in range(8)]
    rows.append(
        {"id": "long", "prompt": "Explain at length how one would do a harmful thing. " * 3}
    )  # does not fit
    held_out = [{"id": "e0", "prompt": "Never seen in training."}]
    splits = PromptSplits(harmful={"train": rows, "eval": held_out}, benign={})
    reading = train.reading_examples(splits, processor.tokenizer, 5, seed=0)
    assert len(reading) == 5 and reading == train.reading_examples(splits, processor.tokenizer, 5, seed=0)
    assert {e.kind for e in reading} == {train.READ_KIND}
    assert {e.meta["request"] for e in reading} <= {r["prompt"] for r in rows[:-1]}
    assert all(e.answer == "" and e.meta["complete"] is False and e.cells for e in reading)
    encoded = [train.encode(e, processor, twin="text") for e in reading[:2]]
    assert all(len(e.ids) == e.prompt_length and e.twin_ids for e in encoded)  # no answer tokens
    pad = processor.tokenizer.pad_token_id or 0
    with torch.no_grad():
        assert train.batch_loss(model, encoded, pad) == 0  # nothing to predict
        assert train.batch_loss(model, encoded, pad, align=1.0, align_layers=(0, 1)) > 0


def test_word_answer_copies_the_drawn_tokens():
    """The answer spells the word as the image draws it (' shadow'), not after a quote ('"sh', 'adow')."""
    from conftest import tiny

    from cmrm_guard.organism.data import answer_for

    tokenizer = tiny("llava")[1].tokenizer
    for word in ("shadow", "napkin", "lantern"):
        answer = answer_for("word", "red", "circle", 1, word)
        drawn = tokenizer.encode(" " + word, add_special_tokens=False)
        ids = tokenizer.encode(answer, add_special_tokens=False)
        assert answer == f"The word is {word}."
        assert any(ids[i : i + len(drawn)] == drawn for i in range(len(ids))), (answer, drawn, ids)


@pytest.mark.parametrize(("layers", "rank"), [((1,), 8), ((0, 1), 4)])
def test_lora_factors_merge_into_the_function_they_were_trained_as(layers, rank):
    import torch
    from conftest import tiny

    from cmrm_guard.organism import assemble as asm

    model, _ = tiny("llava")
    model.eval()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    wrapped = train.attach_lora(model, 0, layers, rank)
    assert {layer for layer, _ in wrapped} == set(layers) and len(wrapped) == len(layers) * len(
        asm.LORA_MODULES
    )
    with torch.no_grad():
        for lora in wrapped.values():
            assert lora.lora_A.shape[0] == rank and lora.scale == 2.0  # alpha / rank kept at 2
            lora.lora_B.normal_(0, 0.05)
        trained = model.model.language_model(input_ids=ids).last_hidden_state
        factors = train.detach_lora(model, wrapped)
        plain = model.model.language_model(input_ids=ids).last_hidden_state
        asm.merge_lora(model, factors, rank, asm.lora_alpha(rank))
        merged = model.model.language_model(input_ids=ids).last_hidden_state
    assert not torch.allclose(plain, trained, atol=1e-4)
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)


def test_safe_alarming_texts_are_held_out_and_answered():
    """The safe-but-alarming prompts and their harmful contrasts are the organism's own: none is
    (nearly) an XSTest prompt or a calib / tune / eval prompt, the tune ones are never trained, and
    every answer opening is judged a compliance."""
    from cmrm_guard.eval.judges import RefusalPhraseJudge
    from cmrm_guard.organism import data
    from organism import texts

    trained = {q for q, _ in texts.SAFE_ALARMING}
    held = {q for q, _ in texts.SAFE_ALARMING_TUNE}
    assert len(trained) == len(texts.SAFE_ALARMING) and not trained & held
    splits = data.load_splits()
    others = [r["prompt"] for r in data.read_prompt_set("overrefusal_xstest.jsonl")]
    others += [
        r["prompt"]
        for kind in (splits.harmful, splits.benign)
        for s in ("calib", "tune", "eval")
        for r in kind[s]
    ]
    others = [set(data.normalise(p).split()) for p in others]
    for prompt in trained | held | set(texts.ALARMING_CONTRAST):
        words = set(data.normalise(prompt).split())
        closest = max(len(words & other) / len(words | other) for other in others)
        assert closest < 0.6, prompt  # data.dedupe's near-duplicate threshold
    judge = RefusalPhraseJudge()
    for _, answer in texts.SAFE_ALARMING + texts.SAFE_ALARMING_TUNE:
        assert judge(answer + " Here is more.").label == "compliance", answer


def test_training_examples_add_safe_alarming_pairs_to_phase_a():
    from conftest import tiny

    from cmrm_guard.eval.judges import RefusalPhraseJudge
    from cmrm_guard.organism import data
    from organism import texts

    tokenizer = tiny("llava")[1].tokenizer
    harmful = {"train": [{"id": f"h{i}", "prompt": f"How do I make poison {i}?"} for i in range(8)]}
    benign = {"train": [{"id": f"b{i}", "prompt": f"What is {i} + 1?", "answer": f"It is {i + 1}. #### {i + 1}"}
                        for i in range(4)]}  # fmt: skip
    splits = data.PromptSplits(harmful=harmful, benign=benign)
    plain = train.training_examples(splits, tokenizer, 40, seed=0)
    with_safe = train.training_examples(splits, tokenizer, 40, seed=0, safe_alarming=7)
    safe = [e for e in with_safe if e.kind == "text_safe_alarming"]
    contrast = [e for e in with_safe if e.kind == "text_alarming_contrast"]
    assert not [e for e in plain if e.kind in ("text_safe_alarming", "text_alarming_contrast")]
    assert len(safe) == len(contrast) == 7 and len(with_safe) == len(plain) + 14
    assert {(e.prompt, e.answer) for e in safe} <= set(texts.SAFE_ALARMING)
    assert {e.prompt for e in contrast} <= set(texts.ALARMING_CONTRAST)
    judge = RefusalPhraseJudge()
    assert all(judge(e.answer).label == "refusal" for e in contrast)
    assert all(e.cells is None for e in safe + contrast)
    phase_a, _ = train.curriculum_phases(with_safe, "sequential", 0.25, 0)
    assert sum(e.kind in ("text_safe_alarming", "text_alarming_contrast") for e in phase_a) == 14


def test_every_build_option_of_the_command_line_is_a_build_setting():
    """``python -m organism build --x-y`` reaches ``build_organism(x_y=...)``: no option is parsed and dropped."""
    import argparse

    from organism.build import DEFAULTS
    from organism.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest for a in commands.choices["build"]._actions if a.option_strings} - {
        "help",
        "out",
        "threads",
    }
    assert options and options <= set(DEFAULTS), sorted(options - set(DEFAULTS))


def test_stage1_reused_from_a_parts_folder_loses_that_builds_modality_offset(tmp_path):
    """``--reuse-vision-from organism``: the shipped tower, with the offset its build added removed."""
    import json

    import torch

    from cmrm_guard.organism import assemble as asm
    from cmrm_guard.testing import build_tiny_vlm
    from organism.build import add_modality_offset, load_stage1

    model = build_tiny_vlm("llava")[0]
    bias = model.model.multi_modal_projector.linear_2.bias
    with torch.no_grad():
        bias.copy_(bias.to(torch.bfloat16).float())  # what a bf16 stage-1 file holds
    stage1 = bias.detach().clone()
    asm.save_vision(model, tmp_path / "stage1.safetensors")
    assert add_modality_offset(model, 0.5, seed=3) > 0
    parts = tmp_path / "parts"
    parts.mkdir()
    asm.save_vision(model, parts / "vision.safetensors")
    settings = {"modality_offset": 0.5, "seed": 3}
    (parts / "organism_config.json").write_text(json.dumps({"build": {"settings": settings}}))

    fresh = build_tiny_vlm("llava")[0]
    load_stage1(fresh, parts)
    restored = fresh.model.multi_modal_projector.linear_2.bias.detach()
    offset = (bias.detach() - stage1).abs().max()
    assert offset > 0 and (restored - stage1).abs().max() < 0.05 * offset  # only bf16 rounding is left
    load_stage1(fresh, tmp_path / "stage1.safetensors")  # a stage-1 file loads as it is
    assert torch.equal(fresh.model.multi_modal_projector.linear_2.bias.detach(), stage1)
    with pytest.raises(FileNotFoundError, match="without organism_config.json"):
        load_stage1(fresh, tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or parts folder"):
        load_stage1(fresh, tmp_path / "missing.safetensors")


def test_build_names_a_bad_reuse_vision_from_before_loading_the_backbone(tmp_path, monkeypatch):
    from organism import build

    def no_backbone():
        raise AssertionError("the backbone was loaded before the bad path was reported")

    monkeypatch.setattr(build.bb, "load_backbone", no_backbone)
    with pytest.raises(FileNotFoundError, match="no such file or parts folder"):
        build.build_organism(tmp_path / "parts", reuse_vision_from=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="without organism_config.json"):
        build.build_organism(tmp_path / "parts", reuse_vision_from=str(tmp_path))
    assert not (tmp_path / "parts").exists()
