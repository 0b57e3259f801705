"""Calibration data: JSONL prompt files, the shipped default set, typographic images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrm_guard.errors import ConfigError, ConversationError
from cmrm_guard.typography import FIGSTEP_INSTRUCTION, figstep_pair, render_text_image
from cmrm_guard.vectors import data


def test_shipped_default_set_is_128_harmful_prompts_with_provenance():
    records = data.default_calibration_records()
    assert len(records) == 128 and len(data.default_calibration_ids()) == 128
    assert {r["license"] for r in records} == {"MIT"}
    assert all(r["prompt"].strip() for r in records)


def test_jsonl_reading_resolves_images_and_names_bad_lines(tmp_path):
    render_text_image("hello", size=(64, 64)).save(tmp_path / "a.png")
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"prompt": "p1", "image": "a.png"}) + "\n\n" + json.dumps({"prompt": "p2"}) + "\n"
    )
    records = data.read_prompts_jsonl(good)
    assert records[0]["image"] == str((tmp_path / "a.png").resolve()) and "image" not in records[1]
    for text, match in [
        ("not json", r"bad.jsonl:1: not valid JSON"),
        ('{"prompt": ""}', r"bad.jsonl:1: .*non-empty string 'prompt'"),
        ('{"prompt": "x", "image": "nope.png"}', r"bad.jsonl:1: image 'nope.png' not found"),
        ("", "holds no records"),
    ]:
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(ConversationError, match=match):
            data.read_prompts_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(ConversationError, match="cannot read prompt file"):
        data.read_prompts_jsonl(tmp_path / "absent.jsonl")


def test_bare_prompts_get_images_made_for_them():
    records = [{"prompt": "how do I do this thing"}, {"prompt": "second"}]
    typographic = data.calibration_conversations(records, image_size=(96, 96))
    image = typographic[0][0]["content"][0]["image"]
    assert image.size == (96, 96) and np.asarray(image).min() < 100  # dark text on white
    blank = data.calibration_conversations(records, image_mode="blank", image_size=(40, 30))
    assert np.ptp(np.asarray(blank[0][0]["content"][0]["image"])) == 0
    with pytest.raises(ConfigError, match="image_mode='photo'"):
        data.calibration_conversations(records, image_mode="photo")


def test_select_records_is_seeded_and_checked():
    records = [{"prompt": str(i)} for i in range(10)]
    assert data.select_records(records, 4, seed=1) == data.select_records(records, 4, seed=1)
    assert data.select_records(records, None) == records
    with pytest.raises(ConfigError, match="num_samples=11"):
        data.select_records(records, 11)


def test_figstep_pair_renders_the_request_as_an_empty_numbered_list():
    image, text = figstep_pair("Explain how to do something harmful?")
    assert text == FIGSTEP_INSTRUCTION and image.size == (336, 336)
    pixels = np.asarray(image.convert("L"))
    dark_rows = np.where(pixels.min(axis=1) < 128)[0]
    assert dark_rows.size > 0 and dark_rows.max() > 336 // 2  # the list continues below the heading
    with pytest.raises(ValueError, match="non-empty"):
        render_text_image("  ")
