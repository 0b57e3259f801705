"""Vector packs: the value object, its files, and every way a pack folder is refused."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from cmrm_guard.errors import CMRMError, LayerIndexError, PackError, PackMismatchError, VectorError
from cmrm_guard.vectors.pack import FORMAT_VERSION, PackMeta, VectorPack

HIDDEN = 8


def make_pack(layers: tuple[int, ...] = (0, 1, 3), seed: int = 0, **meta: object) -> VectorPack:
    generator = torch.Generator().manual_seed(seed)
    shifts = {i: torch.randn(HIDDEN, generator=generator) for i in layers}
    fields = {"model_type": "llava", "hidden_size": HIDDEN, "num_layers": 4, "layer_indices": list(layers)}
    return VectorPack(shifts, PackMeta(**{**fields, "base_model": "org/tiny-llava", **meta}))


def write_raw_pack(folder: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    """A pack folder written by hand (bypassing VectorPack's checks), with a correct checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "shifts.safetensors"), metadata={"format": "pt"})
    digest = hashlib.sha256((folder / "shifts.safetensors").read_bytes()).hexdigest()
    fields = {"model_type": "llava", "hidden_size": HIDDEN, "num_layers": 4, "layer_indices": [0, 1]}
    (folder / "pack_config.json").write_text(json.dumps({**fields, "shifts_sha256": digest, **config}))
    return folder


def set_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "pack_config.json").read_text())
    (folder / "pack_config.json").write_text(json.dumps({**config, **changes}))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return make_pack().save_pretrained(tmp_path / "pack")


# -- round trip -----------------------------------------------------------------------------------------
def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    pack = make_pack(evaluation="| alpha | refused |\n|---|---|\n| 0.5 | 98% |")
    folder = pack.save_pretrained(tmp_path / "pack")
    loaded = VectorPack.from_pretrained(folder)

    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "pack_config.json", "shifts.safetensors"]
    assert loaded.layer_indices == [0, 1, 3]
    for layer in pack.layer_indices:
        assert torch.equal(loaded.shifts[layer], pack.shifts[layer])
    digest = hashlib.sha256((folder / "shifts.safetensors").read_bytes()).hexdigest()
    assert loaded.meta == pack.meta.model_copy(update={"shifts_sha256": digest})
    assert pack.meta.shifts_sha256 is None  # saving does not change the pack itself


def test_shifts_file_layout(saved: Path) -> None:
    with safe_open(str(saved / "shifts.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["layers.0.shift", "layers.1.shift", "layers.3.shift"]
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("layers.3.shift").shape == (HIDDEN,)
    config = json.loads((saved / "pack_config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert "repo_id" not in config and "revision" not in config


def test_model_card(tmp_path: Path) -> None:
    pack = make_pack(num_samples=64, calibration_hash="ab" * 32, evaluation="| a | b |\n|---|---|\n| 1 | 2 |")
    card = (pack.save_pretrained(tmp_path / "pack") / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    data = yaml.safe_load(front)
    assert data["library_name"] == "cmrm-guard"
    assert data["tags"] == ["cmrm", "activation-steering", "vlm-safety"]
    assert data["base_model"] == "org/tiny-llava"
    assert 'SteeredVLM.from_pretrained("org/tiny-llava", vectors=' in body
    assert "cmrm-guard pull" in body and "cmrm-guard calibrate org/tiny-llava" in body
    assert "## Evaluation" in body and "| 1 | 2 |" in body
    assert "0-1, 3" in body and "64" in body and "ab" * 32 in body


def test_card_without_base_model_or_evaluation(tmp_path: Path) -> None:
    card = (make_pack(base_model=None).save_pretrained(tmp_path / "p") / "README.md").read_text()
    assert "base_model" not in yaml.safe_load(card.split("---\n", 2)[1])
    assert "## Evaluation" not in card


def test_save_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match=r"notes\.txt"):
        make_pack().save_pretrained(tmp_path)


def test_save_over_an_older_pack(saved: Path) -> None:
    make_pack(seed=1).save_pretrained(saved)
    assert torch.equal(VectorPack.from_pretrained(saved).shifts[0], make_pack(seed=1).shifts[0])


# -- loading refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pack_config.json", "shifts.safetensors"])
def test_missing_file_refused(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(PackError, match=f"no {name}"):
        VectorPack.from_pretrained(saved)


@pytest.mark.parametrize("extra", ["model.bin", "shifts.pt", "sub/"])
def test_extra_file_refused(saved: Path, extra: str) -> None:
    if extra.endswith("/"):
        (saved / extra).mkdir()
    else:
        (saved / extra).write_bytes(b"x")
    with pytest.raises(PackError, match=f"unexpected files: {extra}"):
        VectorPack.from_pretrained(saved)


def test_hub_leftovers_tolerated(saved: Path) -> None:
    (saved / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (saved / ".cache" / "huggingface").mkdir(parents=True)
    (saved / "README.md").unlink()  # the card is optional
    assert VectorPack.from_pretrained(saved).layer_indices == [0, 1, 3]


def test_checksum_mismatch_refused(saved: Path) -> None:
    other = make_pack(seed=7)  # a valid safetensors file, but not the one the config hashed
    save_file({f"layers.{i}.shift": t for i, t in other.shifts.items()}, str(saved / "shifts.safetensors"))
    with pytest.raises(PackError, match="sha256"):
        VectorPack.from_pretrained(saved)


class _Trap:
    """Unpickling this creates a marker file: proof that nobody unpickled the pack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("fix_checksum", [False, True])
def test_pickle_renamed_to_safetensors_refused(saved: Path, tmp_path: Path, fix_checksum: bool) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"layers.0.shift": _Trap(marker), "layers.1.shift": [0.0] * HIDDEN})
    (saved / "shifts.safetensors").write_bytes(payload)
    if fix_checksum:  # as an attacker would: the checksum alone does not stop it, safetensors does
        set_config(saved, shifts_sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(PackError, match="not a valid safetensors" if fix_checksum else "sha256"):
        VectorPack.from_pretrained(saved)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "word"), [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")]
)
def test_non_finite_tensor_refused(tmp_path: Path, value: float, word: str) -> None:
    bad = torch.zeros(HIDDEN)
    bad[2] = value
    folder = write_raw_pack(tmp_path / "p", {"layers.0.shift": torch.zeros(HIDDEN), "layers.1.shift": bad})
    with pytest.raises(PackError, match=f"layer 1: shift has .*{word}"):
        VectorPack.from_pretrained(folder)


def test_wrong_shape_refused(tmp_path: Path) -> None:
    tensors = {"layers.0.shift": torch.zeros(HIDDEN), "layers.1.shift": torch.zeros(HIDDEN + 1)}
    with pytest.raises(PackError, match=r"layer 1: shift has shape \(9,\), expected \(8,\)"):
        VectorPack.from_pretrained(write_raw_pack(tmp_path / "p", tensors))


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (["layers.0.shift"], r"layers \[0\] but .* layer_indices \[0, 1\]"),
        (["layers.0.shift", "layers.1.shift", "layers.2.shift"], r"layers \[0, 1, 2\] but"),
        (["layers.0.shift", "layers.1.weight"], "unexpected tensor 'layers.1.weight'"),
    ],
)
def test_tensor_keys_must_match_layer_indices(tmp_path: Path, keys: list[str], match: str) -> None:
    folder = write_raw_pack(tmp_path / "p", {k: torch.zeros(HIDDEN) for k in keys})
    with pytest.raises(PackError, match=match):
        VectorPack.from_pretrained(folder)


def test_newer_major_version_refused(saved: Path) -> None:
    set_config(saved, format_version="2.0", hidden_size=None, brand_new_layout=True)
    with pytest.raises(PackError, match=r"format_version '2.0' is newer.*upgrade cmrm-guard"):
        VectorPack.from_pretrained(saved)


def test_newer_minor_version_loads_with_a_warning(saved: Path) -> None:
    set_config(saved, format_version="1.9", steer_vision_tower=False, norm_cap=3.0)
    with pytest.warns(UserWarning, match=r"does not know: norm_cap, steer_vision_tower"):
        pack = VectorPack.from_pretrained(saved)
    assert pack.meta.model_extra == {"steer_vision_tower": False, "norm_cap": 3.0}
    assert pack.layer_indices == [0, 1, 3]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"layer_indices": [0, 1, 4]}, r"layer_indices \[4\] outside \[0, 4\)"),
        ({"estimator": "median"}, "estimator"),
        ({"format_version": "one"}, "not 'major.minor'"),
    ],
)
def test_invalid_config_refused(saved: Path, changes: dict, match: str) -> None:
    set_config(saved, **changes)
    with pytest.raises(PackError, match=match):
        VectorPack.from_pretrained(saved)


def test_malformed_json_refused(saved: Path) -> None:
    (saved / "pack_config.json").write_text("{not json")
    with pytest.raises(PackError, match="not valid JSON"):
        VectorPack.from_pretrained(saved)


def test_a_file_is_not_a_pack(saved: Path) -> None:
    with pytest.raises(PackError, match="is a file"):
        VectorPack.from_pretrained(saved / "pack_config.json")


def test_errors_are_value_errors(saved: Path) -> None:
    (saved / "shifts.safetensors").unlink()
    with pytest.raises(ValueError) as info:
        VectorPack.from_pretrained(saved)
    assert isinstance(info.value, CMRMError)


# -- construction ---------------------------------------------------------------------------------------
def _meta(**changes: object) -> PackMeta:
    fields = {"model_type": "llava", "hidden_size": HIDDEN, "num_layers": 4, "layer_indices": [0, 1]}
    return PackMeta(**{**fields, **changes})


@pytest.mark.parametrize(
    ("shifts", "match"),
    [
        ({0: torch.zeros(HIDDEN)}, r"missing \[1\]"),
        ({0: torch.zeros(HIDDEN), 1: torch.zeros(HIDDEN), 2: torch.zeros(HIDDEN)}, r"unexpected \[2\]"),
        ({0: torch.zeros(HIDDEN), 1: torch.zeros(HIDDEN, 1)}, r"layer 1: shift has shape \(8, 1\)"),
        ({0: torch.zeros(HIDDEN), 1: torch.full((HIDDEN,), float("nan"))}, "layer 1: shift has 8 NaN"),
        ({0: torch.zeros(HIDDEN), 1: torch.zeros(HIDDEN, dtype=torch.long)}, "floating dtype"),
        ({0: torch.zeros(HIDDEN), 1: torch.full((HIDDEN,), 1e300, dtype=torch.float64)}, "inf"),
    ],
)
def test_constructor_checks_shifts(shifts: dict, match: str) -> None:
    with pytest.raises(VectorError, match=match):
        VectorPack(shifts, _meta())


def test_constructor_stores_float32_cpu_copies() -> None:
    source = torch.arange(HIDDEN, dtype=torch.float64)
    pack = VectorPack({0: source, 1: source}, _meta(dtype="float64"))
    source += 1
    assert pack.shifts[0].dtype == torch.float32 and pack.shifts[0].device.type == "cpu"
    assert torch.equal(pack.shifts[0], torch.arange(HIDDEN, dtype=torch.float32))
    assert pack.meta.dtype == "float32"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"layer_indices": [1, 0]}, "sorted"),
        ({"layer_indices": [1, 1]}, "duplicates"),
        ({"layer_indices": [0, 4]}, "outside"),
        ({"layer_indices": []}, "at least 1"),
        ({"alpha": float("nan")}, "finite"),
        ({"hidden_size": 0}, "greater than 0"),
        ({"format_version": "2.0"}, "upgrade cmrm-guard"),
    ],
)
def test_meta_validation(changes: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        _meta(**changes)


def test_validate_for_accepts_its_model() -> None:
    make_pack().validate_for(model_type="llava", hidden_size=HIDDEN, num_layers=4, model_id="org/tiny-llava")


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"model_type": "qwen2_vl"}, r"model_type 'llava' \(model has 'qwen2_vl'\)"),
        ({"hidden_size": 16}, r"hidden_size 8 \(model has 16\)"),
        ({"num_layers": 28}, r"4 decoder layers \(num_layers; model has 28\)"),
    ],
)
def test_validate_for_names_the_mismatch(model: dict, match: str) -> None:
    kwargs = {"model_type": "llava", "hidden_size": HIDDEN, "num_layers": 4, **model}
    with pytest.raises(PackMismatchError, match=match) as info:
        make_pack().validate_for(**kwargs, model_id="org/other")
    assert "cmrm-guard calibrate org/other" in str(info.value)
    assert isinstance(info.value, ValueError)


# -- value operations -----------------------------------------------------------------------------------
def test_scaling_negation_and_sum() -> None:
    pack, other = make_pack(), make_pack(seed=1)
    for scaled in (pack * 0.5, 0.5 * pack):
        assert torch.equal(scaled.shifts[3], pack.shifts[3] * 0.5)
    assert torch.equal((-pack).shifts[1], -pack.shifts[1])
    assert torch.equal((pack + other).shifts[0], pack.shifts[0] + other.shifts[0])
    assert torch.equal((pack - other).shifts[0], pack.shifts[0] - other.shifts[0])
    half = pack * 0.5
    assert half is not pack and half.meta.shifts_sha256 is None
    assert torch.equal(pack.shifts[3], make_pack().shifts[3])  # the original is untouched


def test_arithmetic_refuses_what_does_not_fit() -> None:
    pack = make_pack()
    with pytest.raises(VectorError, match="different layers"):
        pack + make_pack(layers=(0, 1))
    with pytest.raises(PackMismatchError, match="different models"):
        pack + make_pack(model_type="qwen2_vl")
    with pytest.raises(VectorError, match="finite"):
        pack * float("inf")
    with pytest.raises(TypeError):
        pack * "2"


def test_to_returns_a_copy_and_saves_in_its_dtype(tmp_path: Path) -> None:
    pack = make_pack()
    half = pack.to(torch.float16)
    assert half.shifts[0].dtype == torch.float16 and half.meta.dtype == "float16"
    assert pack.shifts[0].dtype == torch.float32
    same = pack.to()
    assert same.shifts[0] is not pack.shifts[0] and torch.equal(same.shifts[0], pack.shifts[0])
    folder = half.save_pretrained(tmp_path / "half")
    assert json.loads((folder / "pack_config.json").read_text())["dtype"] == "float16"
    loaded = VectorPack.from_pretrained(folder)
    assert torch.equal(loaded.shifts[0], half.shifts[0].float())
    with pytest.raises(VectorError, match="floating"):
        pack.to(torch.int32)


def test_views() -> None:
    pack = make_pack()
    assert (pack.hidden_size, pack.num_layers, pack.model_type) == (HIDDEN, 4, "llava")
    assert pack.layer_indices == [0, 1, 3]
    norms = pack.layer_norms()
    assert norms[3] == pytest.approx(float(pack.shifts[3].norm()))
    assert torch.equal(pack[1], pack.shifts[1])
    with pytest.raises(LayerIndexError, match="layer 2"):
        pack[2]
    text = repr(pack)
    assert "model_type='llava'" in text and "layers=[0, 1, 3]" in text and "hidden_size=8" in text


def test_numpy_integer_layer_keys_are_accepted() -> None:
    import numpy as np

    pack = VectorPack({np.int64(0): torch.zeros(HIDDEN), np.int64(1): torch.ones(HIDDEN)}, _meta())
    assert list(pack.shifts) == [0, 1] and all(type(k) is int for k in pack.shifts)


# -- validation gaps (issue 21 point 9, point 10) -----------------------------------------------------------
@pytest.mark.parametrize("name", ["shifts.safetensors", "pack_config.json"])
def test_a_symlink_out_of_the_folder_is_refused(saved: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    outside.write_bytes((saved / name).read_bytes())
    (saved / name).unlink()
    (saved / name).symlink_to(outside)
    with pytest.raises(PackError, match=f"{name} is a symbolic link to .*outside the pack folder"):
        VectorPack.from_pretrained(saved)


def test_a_symlink_inside_the_folder_is_followed(saved: Path) -> None:
    (saved / "README.md").unlink()
    (saved / "README.md").symlink_to(saved / "pack_config.json")
    assert VectorPack.from_pretrained(saved).layer_indices == [0, 1, 3]


@pytest.mark.parametrize(
    "keys",
    [
        ["layers.0.shift", "layers.1.shift", "layers.01.shift"],  # 01 would overwrite 1
        ["layers.0.shift", "layers.\u0661.shift"],  # ARABIC-INDIC DIGIT ONE
        ["layers.0.shift", "layers.\uff11.shift"],  # FULLWIDTH DIGIT ONE
        ["layers.00.shift", "layers.1.shift"],
    ],
)
def test_layer_names_are_strict_ascii_without_leading_zeros(tmp_path: Path, keys: list[str]) -> None:
    folder = write_raw_pack(tmp_path / "p", {k: torch.zeros(HIDDEN) for k in keys})
    with pytest.raises(PackError, match="unexpected tensor .*no leading zeros"):
        VectorPack.from_pretrained(folder)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"hidden_size": "8"}, "hidden_size"),
        ({"hidden_size": 8.0}, "hidden_size"),
        ({"num_layers": True}, "num_layers"),
        ({"layer_indices": ["0", 1]}, "layer_indices.0"),
        ({"alpha": "1.0"}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"num_samples": 3.0}, "num_samples"),
        ({"model_type": 7}, "model_type"),
        ({"shifts_sha256": "not-a-digest"}, "shifts_sha256"),
    ],
)
def test_config_values_are_not_coerced(saved: Path, changes: dict, field: str) -> None:
    set_config(saved, **changes)
    with pytest.raises(PackError, match=f"invalid pack_config.json: {re.escape(field)}"):
        VectorPack.from_pretrained(saved)


def test_a_pack_without_a_checksum_is_refused(saved: Path) -> None:
    config = json.loads((saved / "pack_config.json").read_text())
    del config["shifts_sha256"]
    (saved / "pack_config.json").write_text(json.dumps(config))
    with pytest.raises(PackError, match="no shifts_sha256"):
        VectorPack.from_pretrained(saved)


def test_save_replaces_a_symlinked_card_instead_of_writing_through_it(saved: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (saved / "README.md").unlink()
    (saved / "README.md").symlink_to(victim)

    make_pack(seed=2).save_pretrained(saved)

    assert victim.read_text() == "precious"
    assert not (saved / "README.md").is_symlink() and "cmrm-guard" in (saved / "README.md").read_text()
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "pack_config.json", "shifts.safetensors"]


@pytest.mark.parametrize("depth", [20, 100_000])
def test_a_deeply_nested_config_is_refused(saved: Path, depth: int) -> None:
    config = (saved / "pack_config.json").read_text().rstrip().removesuffix("}")
    (saved / "pack_config.json").write_text(config + ', "nested": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(PackError, match="nested too deeply"):
        VectorPack.from_pretrained(saved)


def test_an_oversized_config_is_refused(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmrm_guard.vectors import hub

    monkeypatch.setitem(hub.MAX_FILE_BYTES, "pack_config.json", 100)
    with pytest.raises(PackError, match=r"pack_config\.json is \d+ bytes, over its limit of 100 bytes"):
        VectorPack.from_pretrained(saved)


def test_a_float8_pack_is_refused_by_name(tmp_path: Path) -> None:
    tensors = {f"layers.{i}.shift": torch.zeros(HIDDEN, dtype=torch.float8_e4m3fn) for i in (0, 1)}
    with pytest.raises(PackError, match="dtype float8_e4m3fn, which packs do not support"):
        VectorPack.from_pretrained(write_raw_pack(tmp_path / "p", tensors))
    with pytest.raises(VectorError, match="float8_e5m2"):
        VectorPack({i: torch.zeros(HIDDEN, dtype=torch.float8_e5m2) for i in (0, 1)}, _meta())
