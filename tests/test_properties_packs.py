"""Property tests over pack folders: any folder loads as a valid pack or raises a named error.

Each case writes a pack folder (a valid pack, then mutations of ``pack_config.json``, of the tensors in
``shifts.safetensors``, of the file bytes and of the folder layout) and loads it three ways:
``VectorPack.from_pretrained(folder)``, ``SteeredVLM(model, processor, vectors=folder)`` and
``svlm.attach(folder)`` on a wrapper that already holds a pack. Every outcome is a
:class:`~cmrm_guard.errors.CMRMError` or a pack that is valid and fits; a refused attach keeps the previous
pack; no hook is left and the model's weights are unchanged. Outcomes are reported as hypothesis events
(``pytest --hypothesis-show-statistics``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

import torch  # noqa: E402
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save as save_safetensors  # noqa: E402

from cmrm_guard import SteeredVLM, count_hooks  # noqa: E402
from cmrm_guard.errors import CMRMError  # noqa: E402
from cmrm_guard.vectors import VectorPack  # noqa: E402
from cmrm_guard.vectors.pack import SHIFT_DTYPES  # noqa: E402
from tests.conftest import random_vectors, tiny  # noqa: E402
from tests.hypothesis_profiles import cases  # noqa: E402

HIDDEN, LAYERS = 64, 2  # the tiny LLaVA's language decoder


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.cache
def _valid_pack() -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes]:
    """The config (as JSON data), tensors and ``shifts.safetensors`` bytes of a valid pack for the tiny LLaVA."""
    model, processor = tiny("llava")
    pack = SteeredVLM(model, processor, vectors=random_vectors(LAYERS, HIDDEN, 1.0)).vectors
    assert pack is not None
    with tempfile.TemporaryDirectory() as folder:
        pack.save_pretrained(folder)
        config = json.loads(Path(folder, "pack_config.json").read_text())
        saved = Path(folder, "shifts.safetensors").read_bytes()
    return config, {f"layers.{i}.shift": t.clone() for i, t in pack.shifts.items()}, saved


@functools.cache
def _holder() -> tuple[SteeredVLM, str]:
    """A wrapper holding a pack (the one every refused attach must leave in place), and its weights."""
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(LAYERS, HIDDEN, 2.0, seed=7))
    return svlm, weights_digest(model)


# ------------------------------------------------------------------------------------ strategies
_ODD_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([64, 2, 0, -1, 1, 10**30, 2**63, 64.0, 1e308, float("nan"), float("inf"), -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["64", "2", "1.0", "llava", "mean", "NaN", "", " 64"]),
    st.lists(st.integers(-2, 3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(1, 40).map(lambda depth: functools.reduce(lambda inner, _: [inner], range(depth), 0)),
    st.integers(1, 40).map(lambda depth: functools.reduce(lambda inner, _: {"k": inner}, range(depth), 1)),
)
_KEY_VALUES: dict[str, Any] = {
    "format_version": st.sampled_from(["1.0", "1.1", "1.99", "2.0", "10.0", "1", "v1", "01.0", "1.0.0", ""]),
    "model_type": st.sampled_from(["llava", "qwen2_vl", "LLAVA", "", "llava ", "gemma3"]),
    "hidden_size": st.sampled_from([64, 63, 65, 128, 0, -64, 10**30]),
    "num_layers": st.sampled_from([2, 1, 3, 0, -2, 10**30]),
    "layer_indices": st.sampled_from([[0, 1], [0], [1], [1, 0], [0, 0], [0, 2], [], [-1, 0], [0, 1, 2]]),
    "alpha": st.sampled_from([1.0, 0.0, 0.5, -1.0, 3, 1e308]),
    "estimator": st.sampled_from(["mean", "pc1", "median"]),
    "application": st.sampled_from(["increment", "every_layer", "all"]),
    "positions": st.sampled_from(["last", "all", "first"]),
    "step_scope": st.sampled_from(["all_steps", "prefill_only", "never"]),
    "dtype": st.sampled_from(["float32", "float8_e4m3fn", "int8"]),
    "shifts_sha256": st.sampled_from(["UPPER", "0" * 64, "zz" * 32, "abc"]),
}
_EXTRA_KEYS = st.sampled_from(
    ["repo_id", "revision", "future_field", "__proto__", "evaluation", "base_model"]
)
_edit = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(sorted(_KEY_VALUES)), st.data()),
    st.tuples(st.just("odd"), st.sampled_from(sorted(_KEY_VALUES)), _ODD_JSON),
    st.tuples(st.just("delete"), st.sampled_from(sorted(_KEY_VALUES)), st.none()),
    st.tuples(st.just("extra"), _EXTRA_KEYS, _ODD_JSON),
)
_WHOLE_CONFIG = st.one_of(  # None: the (edited) valid config, in about 3 cases of 4
    st.none(),
    st.none(),
    st.none(),
    st.sampled_from(
        [b"[]", b"1", b'"x"', b"null", b"{", b"\xff\xfe{}", b"", b"{}", b'{"a": NaN}', b"\xef\xbb\xbf{}"]
    ),
)
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.bool,
           torch.float8_e4m3fn, torch.uint8]  # fmt: skip
_tensor = st.tuples(
    st.sampled_from(_DTYPES),
    st.sampled_from([(HIDDEN,), (HIDDEN - 1,), (HIDDEN, 1), (), (2, HIDDEN), (0,)]),
    st.sampled_from([None, "nan", "inf", "-inf", "huge"]),
    st.integers(0, 3),
)
_TENSOR_NAMES = ["layers.0.shift", "layers.1.shift", "layers.01.shift", "layers.2.shift",
                 "layers.\u0661.shift", "layers.-1.shift", "layers.0.shift.bias", "weight"]  # fmt: skip
_tensors = st.one_of(
    st.none(),  # the valid tensors
    st.dictionaries(st.sampled_from(_TENSOR_NAMES), _tensor, max_size=3),
    st.tuples(st.sampled_from(["layers.0.shift", "layers.1.shift"]), _tensor).map(lambda kv: {kv[0]: kv[1]}),
)
_shift_bytes = st.sampled_from(["safetensors", "safetensors", "safetensors", "garbage", "pickle", "truncated",
                                "empty", "huge_header"])  # fmt: skip
_LAYOUTS = ["plain", "plain", "plain", "config_link_out", "shifts_link_out", "link_inside", "dangling_link",
            "shifts_is_dir", "foreign_file", "foreign_dir", "gitattributes", "no_card", "no_config"]  # fmt: skip


def _make_tensor(spec: tuple[torch.dtype, tuple[int, ...], str | None, int]) -> torch.Tensor:
    dtype, shape, special, seed = spec
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if special and values.numel():
        values.view(-1)[0] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e38}[special]
    return values.to(dtype)


def _mutated_config(base: dict[str, Any], edits: list[tuple[str, str, Any]]) -> dict[str, Any]:
    config = dict(base)
    for kind, key, value in edits:
        if kind == "set":
            value = value.draw(_KEY_VALUES[key])
            if key == "shifts_sha256" and value == "UPPER":
                value = str(config.get("shifts_sha256", "")).upper()
            config[key] = value
        elif kind in ("odd", "extra"):
            config[key] = value
        else:
            config.pop(key, None)
    return config


def _write_folder(folder: Path, config_bytes: bytes, shifts_bytes: bytes, layout: str, outside: Path) -> None:
    folder.mkdir()
    (folder / "README.md").write_text("# a pack\n")
    targets = {"pack_config.json": config_bytes, "shifts.safetensors": shifts_bytes}
    for name, data in targets.items():
        if layout == {"pack_config.json": "config_link_out", "shifts.safetensors": "shifts_link_out"}[name]:
            (outside / name).write_bytes(data)
            (folder / name).symlink_to(outside / name)
        else:
            (folder / name).write_bytes(data)
    if layout == "link_inside":  # the card is a link to the config inside the folder: allowed
        (folder / "README.md").unlink()
        (folder / "README.md").symlink_to(folder / "pack_config.json")
    elif (
        layout == "dangling_link"
    ):  # a card linking to a missing file inside the folder: the card is not read
        (folder / "README.md").unlink()
        (folder / "README.md").symlink_to(folder / "missing")
    elif layout == "shifts_is_dir":
        (folder / "shifts.safetensors").unlink()
        (folder / "shifts.safetensors").mkdir()
    elif layout == "foreign_file":
        (folder / "modeling_evil.py").write_text("raise SystemExit\n")
    elif layout == "foreign_dir":
        (folder / "sub").mkdir()
    elif layout == "gitattributes":
        (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    elif layout == "no_card":
        (folder / "README.md").unlink()
    elif layout == "no_config":
        (folder / "pack_config.json").unlink()


PACK_CASES = {
    "edits": st.lists(_edit, max_size=3),
    "whole_config": _WHOLE_CONFIG,
    "tensors": _tensors,
    "shift_bytes": _shift_bytes,
    "garbage": st.binary(max_size=64),
    "rehash": st.booleans(),
    "layout": st.sampled_from(_LAYOUTS),
}


@settings(max_examples=cases(300))
@given(**PACK_CASES)
def test_any_pack_folder_is_a_valid_pack_or_a_named_error(
    edits, whole_config, tensors, shift_bytes, garbage, rehash, layout
):
    base_config, base_tensors, base_bytes = _valid_pack()
    written = base_tensors if tensors is None else {k: _make_tensor(v) for k, v in tensors.items()}
    data = base_bytes if tensors is None else save_safetensors(written)
    buffer = io.BytesIO()
    torch.save(written, buffer)
    shifts_bytes = {
        "safetensors": data,
        "garbage": garbage,
        "pickle": buffer.getvalue(),
        "truncated": data[: max(len(data) // 2, 1)],
        "empty": b"",
        "huge_header": (2**62).to_bytes(8, "little") + data[8:],
    }[shift_bytes]
    config = _mutated_config(base_config, edits)
    if rehash and "shifts_sha256" not in dict((k, None) for _, k, _ in edits):
        config["shifts_sha256"] = hashlib.sha256(shifts_bytes).hexdigest()
    config_bytes = whole_config if whole_config is not None else json.dumps(config).encode()

    untouched = (
        not edits
        and whole_config is None
        and tensors is None
        and shift_bytes == "safetensors"
        and layout in ("plain", "gitattributes", "no_card", "link_inside")
    )
    must_refuse = (
        layout
        in (
            "config_link_out",
            "shifts_link_out",
            "shifts_is_dir",
            "foreign_file",
            "foreign_dir",
            "no_config",
        )  # fmt: skip
        or shift_bytes in ("pickle", "empty", "truncated", "huge_header")
        or whole_config is not None  # none of them is a complete config
        or any(  # any NaN / inf in a tensor
            t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.float()).all())
            for t in written.values()
        )
        or (not rehash and shifts_bytes != base_bytes)  # the recorded sha256 no longer matches
    )

    svlm, weights = _holder()
    previous = svlm.vectors
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        folder, outside = Path(tmp, "pack"), Path(tmp, "outside")
        outside.mkdir()
        _write_folder(folder, config_bytes, shifts_bytes, layout, outside)
        warnings.simplefilter("ignore")  # unknown keys and claimed provenance warn; not under test here
        outcomes = [_outcome(lambda: VectorPack.from_pretrained(folder))]
        model, processor = tiny("llava")
        outcomes.append(_outcome(lambda: SteeredVLM(model, processor, vectors=str(folder)).vectors))
        try:
            outcomes.append(_outcome(lambda: (svlm.attach(folder), svlm.vectors)[1]))
            attached = svlm.vectors
        finally:
            svlm.attach(previous)  # restore the holder's pack for the next case
        loaded, wrapped, attach = outcomes
        event(f"from_pretrained: {_label(loaded)}")

        if isinstance(attach, CMRMError):
            assert attached is previous, "a refused attach replaced the previous pack"
        if untouched:
            assert isinstance(loaded, VectorPack), f"an unchanged valid pack was refused: {loaded}"
        if must_refuse:
            assert isinstance(loaded, CMRMError), (
                f"a broken pack loaded (layout {layout}, bytes {shift_bytes})"
            )
        if isinstance(loaded, VectorPack):
            _check_valid(loaded, folder)
            fits = (loaded.model_type, loaded.hidden_size, loaded.num_layers) == ("llava", HIDDEN, LAYERS)
            assert isinstance(wrapped, VectorPack) == fits, f"fits={fits} but SteeredVLM gave {wrapped!r}"
            assert isinstance(attach, VectorPack) == fits, f"fits={fits} but attach gave {attach!r}"
        else:
            assert isinstance(wrapped, CMRMError) and isinstance(attach, CMRMError)
    assert svlm.vectors is previous
    assert count_hooks(model) == 0
    assert weights_digest(model) == weights


def _outcome(load: Any) -> VectorPack | CMRMError:
    """The pack ``load()`` returns, or the named error it raises (any other exception propagates)."""
    try:
        pack = load()
    except CMRMError as error:
        assert str(error), f"{type(error).__name__} without a message"
        return error
    assert isinstance(pack, VectorPack)
    return pack


def _label(outcome: VectorPack | CMRMError) -> str:
    return "valid pack" if isinstance(outcome, VectorPack) else f"named error {type(outcome).__name__}"


def _check_valid(pack: VectorPack, folder: Path) -> None:
    """A loaded pack is what its files say, with strict types, finite values and consistent layers."""
    meta = pack.meta
    for field in ("hidden_size", "num_layers", "num_samples"):
        assert type(getattr(meta, field)) is int
    assert type(meta.alpha) in (float, int) and math.isfinite(meta.alpha)
    assert meta.layer_indices == sorted(set(meta.layer_indices)) == pack.layer_indices
    assert all(0 <= i < meta.num_layers for i in meta.layer_indices)
    assert int(meta.format_version.split(".")[0]) <= 1
    assert pack.provenance == "local path" and meta.repo_id is None and meta.revision is None
    from safetensors.torch import load_file

    on_disk = load_file(os.path.join(folder, "shifts.safetensors"))
    for layer in meta.layer_indices:
        shift = pack[layer]
        assert shift.dtype in SHIFT_DTYPES and tuple(shift.shape) == (meta.hidden_size,)
        assert bool(torch.isfinite(shift).all())
        assert torch.equal(shift, on_disk[f"layers.{layer}.shift"])
