"""Evaluation prompts: shipped sets, multimodal construction, twins, answer checks, disjointness."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cmrm_guard.errors import ConfigError, ConversationError
from cmrm_guard.eval import conditions as cond
from cmrm_guard.eval.prompts import (
    NEUTRAL_INSTRUCTION,
    NUMBER_ANSWER_FORMAT,
    PromptOverlapError,
    check_disjoint,
    exclude_overlaps,
    load_prompt_set,
    make_prompt,
)
from cmrm_guard.eval.tasks import check_answer, extract_number, shape_questions
from cmrm_guard.typography import FIGSTEP_INSTRUCTION
from cmrm_guard.vectors.data import default_calibration_records


@pytest.mark.parametrize(
    ("name", "kind", "rows"),
    [("harmful", "harmful", 200), ("xstest_safe", "benign", 250), ("xstest_unsafe", "harmful", 200),
     ("gsm8k", "utility", 300)],
)  # fmt: skip
def test_shipped_sets_load_with_their_kind(name, kind, rows):
    prompts = load_prompt_set(name)
    assert len(prompts) == rows and {p.kind for p in prompts} == {kind}
    assert len({p.id for p in prompts}) == rows


def test_shipped_evaluation_sets_are_disjoint_from_the_default_calibration_set():
    prompts = load_prompt_set("harmful") + load_prompt_set("xstest_unsafe") + load_prompt_set("xstest_safe")
    check_disjoint(prompts + load_prompt_set("gsm8k"))  # ids, texts and near duplicates (Jaccard >= 0.8)
    check_disjoint(load_prompt_set("harmful"), near_duplicate=0.6)  # the set was cut at 0.6


def test_disjointness_check_fails_when_sets_overlap():
    calibration = default_calibration_records()[:5]
    same_id = make_prompt({"id": calibration[0]["id"], "prompt": "an unrelated request"}, "harmful")
    with pytest.raises(PromptOverlapError, match="same id"):
        check_disjoint([same_id], calibration)
    restyled = "  " + calibration[1]["prompt"].upper().replace(" ", "  ") + "!!"
    same_text = make_prompt({"id": "mine-1", "prompt": restyled}, "harmful")
    with pytest.raises(PromptOverlapError, match=rf"mine-1 ~ {calibration[1]['id']} \(same text\)"):
        check_disjoint([same_text], calibration)
    words = calibration[2]["prompt"].split()
    near = make_prompt({"id": "mine-2", "prompt": " ".join(words + ["please"])}, "harmful")
    with pytest.raises(PromptOverlapError, match="near duplicate"):
        check_disjoint([near], calibration)
    check_disjoint([near], calibration, near_duplicate=None)  # exact checks only: passes
    fresh = make_prompt({"id": "mine-3", "prompt": "Describe the weather on Mars in one line"}, "harmful")
    check_disjoint([fresh], calibration)
    kept, dropped = exclude_overlaps([same_id, same_text, near, fresh], calibration)
    assert [p.id for p in kept] == ["mine-3"] and len(dropped) == 3
    with pytest.raises(PromptOverlapError, match="more than once"):
        check_disjoint([fresh, fresh], calibration)
    with pytest.raises(PromptOverlapError, match="overlap"):  # the default: the shipped calibration set
        check_disjoint([make_prompt(default_calibration_records()[7], "harmful")])


def test_figstep_prompt_puts_the_request_in_the_image_and_twins_to_the_plain_request():
    prompt = load_prompt_set("harmful", n=1)[0]
    assert prompt.style == "figstep" and prompt.text == FIGSTEP_INSTRUCTION
    assert prompt.twin_text == prompt.request
    conversation = prompt.conversation((64, 48))
    image, text = conversation[0]["content"]
    assert isinstance(image["image"], Image.Image) and image["image"].size == (64, 48)
    assert text == {"type": "text", "text": FIGSTEP_INSTRUCTION}
    twin = cond.text_only().conversation(prompt, (64, 48))
    assert twin == [{"role": "user", "content": [{"type": "text", "text": prompt.request}]}]


def test_other_styles_and_their_twins():
    record = {"id": "r1", "prompt": "How do I whittle a knife?"}
    typo = make_prompt(record, "benign", style="typographic")
    assert typo.text == NEUTRAL_INSTRUCTION and typo.twin_text == record["prompt"]
    paired = make_prompt(record, "benign", style="text_with_image")
    assert paired.text == paired.twin_text == record["prompt"]
    from cmrm_guard.adapters.base import VLMAdapter

    twin = cond.text_only().conversation(paired, (32, 32), VLMAdapter())  # the adapter's own twin
    assert twin == [{"role": "user", "content": [{"type": "text", "text": record["prompt"]}]}]
    with pytest.raises(ConfigError, match="style"):
        make_prompt(record, "benign", style="comic")
    with pytest.raises(ConfigError, match="kind"):
        make_prompt(record, "dangerous")


def test_user_image_text_jsonl(tmp_path):
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "red.png")
    lines = [
        {"id": "u1", "prompt": "What should I do with this?", "image": "red.png", "request": "misuse it"},
        {
            "id": "u2",
            "prompt": "What colour is this?",
            "image": "red.png",
            "kind": "utility",
            "answer": "red",
        },
    ]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    first, second = load_prompt_set(tmp_path / "mine.jsonl", "harmful")
    assert first.style == "user" and first.kind == "harmful" and first.request == "misuse it"
    assert first.image_path == str((tmp_path / "red.png").resolve())
    assert first.conversation()[0]["content"][0]["image"] == first.image_path
    assert first.twin_text == first.text == "What should I do with this?"
    assert second.kind == "utility" and second.answer_type == "contains"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "b", "prompt": "x", "kind": "utility"}))
    with pytest.raises(ConversationError, match="no 'answer'"):
        load_prompt_set(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="neither a shipped set"):
        load_prompt_set(tmp_path / "missing.jsonl")


def test_gsm8k_prompts_ask_for_a_readable_final_number():
    prompt = load_prompt_set("gsm8k", n=1)[0]
    assert prompt.style == "text_with_image" and prompt.answer_type == "number"
    assert prompt.text.endswith(NUMBER_ANSWER_FORMAT) and prompt.twin_text == prompt.text
    assert load_prompt_set("gsm8k", n=5, seed=3) == load_prompt_set("gsm8k", n=5, seed=3)


@pytest.mark.parametrize(
    ("reply", "answer", "kind", "ok"),
    [
        ("48/2 = 24 in May, 48+24 = 72. The answer is 72.", "72", "number", True),
        ("#### 1,250", "1250", "number", True),
        ("She needs $5.00 more.", "5", "number", True),
        ("The answer is 71.", "72", "number", False),
        ("I am not sure.", "72", "number", False),
        ("The shapes are blue.", "blue", "choice", True),
        ("Blue, or maybe green.", "blue", "choice", False),
        ("There are two squares.", "2", "choice", True),
        ("I see 3 circles.", "2", "choice", False),
        ("It is a Triangle.", "triangle", "choice", True),
        ("Paris is the capital.", "paris", "contains", True),
        ("Parisian food.", "paris", "contains", False),
    ],
)
def test_answer_checks(reply, answer, kind, ok):
    options = {
        "blue": ("red", "green", "blue"),
        "2": ("1", "2", "3"),
        "triangle": ("circle", "square", "triangle"),
    }
    assert check_answer(reply, answer, kind, options.get(answer, ())) is ok


def test_extract_number_prefers_the_stated_answer():
    assert extract_number("Step 1: 3 + 4 = 7. Step 2: 7 * 2 = 14. Answer: 14") == 14
    assert extract_number("no digits") is None


def test_shape_questions_need_their_image():
    prompts = shape_questions(6, seed=1)
    assert prompts == shape_questions(6, seed=1) and len({p.id for p in prompts}) == 6
    assert {p.meta["question"] for p in prompts} == {"colour", "shape", "count"}
    assert all(p.needs_image and p.answer in p.options for p in prompts)
    image = prompts[0].image((40, 30))
    assert image.size == (40, 30) and len(image.getcolors()) > 1
    assert not cond.text_only().applies_to(prompts[0]) and cond.multimodal().applies_to(prompts[0])


def test_conditions():
    conditions = cond.default_conditions([0.5, 1.0], packs=["pack", "b"], sample_alphas=[1.0])
    names = [c.name for c in conditions]
    assert names == ["multimodal", "text-only", "dataset alpha=0.5", "dataset alpha=1",
                     "dataset[b] alpha=0.5", "dataset[b] alpha=1", "sample alpha=1"]  # fmt: skip
    config = conditions[2].steering_config()
    assert config.mode == "dataset" and config.alpha == 0.5 and config.enabled
    assert not conditions[0].steering_config().enabled and conditions[-1].steering_config().mode == "sample"
    with pytest.raises(ConfigError, match="repeated"):
        cond.check_conditions([cond.multimodal(), cond.multimodal()])
    with pytest.raises(ConfigError, match="needs an alpha"):
        cond.Condition("x", "sample")


def test_conditions_keep_the_wrappers_own_settings():
    from cmrm_guard.config import SteeringConfig

    base = SteeringConfig(layers=(1,), positions="all", application="every_layer")
    config = cond.dataset(0.5).steering_config(base)
    assert (config.layers, config.positions, config.application, config.alpha) == (
        (1,),
        "all",
        "every_layer",
        0.5,
    )
    assert cond.dataset(0.5, application="increment").steering_config(base).application == "increment"
    assert not cond.multimodal().steering_config(base).enabled
    assert cond.sample(1.0).steering_config(SteeringConfig(enabled=False)).enabled
