"""The organism build's stage-2 curriculum (no backbone needed)."""

import pytest

from cmrm_guard.organism import train
from cmrm_guard.organism.data import Example


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
    ],
)
def test_bad_build_settings_are_refused_before_training(override, message):
    from cmrm_guard.organism.build import DEFAULTS, check_settings

    check_settings(dict(DEFAULTS))  # the defaults pass
    with pytest.raises(ValueError, match=message):
        check_settings(DEFAULTS | override)


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
    paired = train.encode(typed, processor, twin=True)
    assert plain.twin_ids is None and paired.ids == plain.ids
    assert (
        paired.twin_ids
        == train.encode(Example("Write a poem about rain."), processor).ids[: len(paired.twin_ids)]
    )
    assert train.encode(other, processor, twin=True).twin_ids is None
    pad = processor.tokenizer.pad_token_id or 0
    group = [paired, train.encode(other, processor)]
    with torch.no_grad():
        base = train.batch_loss(model, group, pad)
        off = train.batch_loss(model, group, pad, align=0.0)
        on = train.batch_loss(model, group, pad, align=1.0, align_layers=(0, 1))
        others_only = train.batch_loss(model, group[1:], pad, align=1.0, align_layers=(0, 1))
    assert torch.equal(base, off) and on > base
    assert torch.equal(others_only, train.batch_loss(model, group[1:], pad))
