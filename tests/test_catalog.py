"""The top-level vectors/ catalog: every recipe is a valid, self-consistent calibrate command."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest

from cmrm_guard.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "vectors").glob("*/recipe.json"))


def test_catalog_has_a_recipe_per_registered_architecture_and_the_card_template():
    from cmrm_guard.adapters import registered_model_types

    types = {json.loads(p.read_text())["model_type"] for p in RECIPES}
    assert set(registered_model_types()) <= types
    card = ROOT / "vectors" / "card_template.md"
    assert (
        "$rebuild" in card.read_text()
        and card.resolve() == ROOT / "cmrm_guard" / "vectors" / "card_template.md"
    )


@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_command_parses_and_matches_its_settings(recipe_path):
    recipe = json.loads(recipe_path.read_text())
    argv = shlex.split(recipe["command"])
    assert argv[0] == "cmrm-guard"
    args = build_parser().parse_args(argv[1:])
    settings = recipe["settings"]
    assert args.command == "calibrate" and args.model == recipe["base_model"]
    assert (args.estimator, args.corruption, args.alpha, args.application) == (
        settings["estimator"],
        settings["corruption"],
        settings["alpha"],
        settings["application"],
    )
    assert (
        args.num_samples == settings["num_samples"]
        and args.image_mode == recipe["calibration_data"]["image_mode"]
    )
    data = ROOT / recipe["calibration_data"]["file"]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == recipe["calibration_data"]["sha256"]
    push = build_parser().parse_args(shlex.split(recipe["push"])[1:])
    assert push.repo_id == recipe["expected_repo_id"] and str(push.pack) == str(args.output)
