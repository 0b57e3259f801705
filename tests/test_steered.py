"""SteeredVLM: CMRM's direction, generation with/without cache and batching, cleanup, settings."""

from __future__ import annotations

import json
import logging
import random
import threading
from importlib import import_module

import pytest
import torch

from cmrm_guard import SteeredVLM, SteeringConfig, count_hooks
from cmrm_guard.adapters import corrupted_twin
from cmrm_guard.errors import (
    CMRMWarning,
    ConfigError,
    ConversationError,
    LayerIndexError,
    SteeringUnavailableError,
    VectorError,
)
from tests.conftest import image_chat, random_vectors, text_chat, tiny


def test_sign_steered_state_equals_text_only_twin(model_type):
    """Sample-level CMRM at the last layer, on the corrupted image: h_corrupt + (h_text - h_corrupt)."""
    model, processor = tiny(model_type, torch.float64)
    svlm = SteeredVLM(model, processor)
    last = svlm.num_layers - 1
    chat = image_chat("tell me about this image")
    mean, std = svlm.adapter.pixel_statistics(processor)
    corrupted = corrupted_twin(chat, "blank", mean=mean, std=std)
    config = SteeringConfig(mode="sample", layers=[last], application="every_layer", alpha=1.0)
    steered = svlm.last_token_states([corrupted], [last], config=config)[last]
    text_only = svlm.last_token_states([svlm.adapter.text_only_twin(chat)], [last])[last]
    unsteered = svlm.last_token_states([corrupted], [last])[last]
    assert not torch.allclose(unsteered, text_only, atol=1e-3)  # the gap exists
    torch.testing.assert_close(steered, text_only, atol=1e-6, rtol=1e-6)  # and is closed, in this direction


def _greedy(svlm, batch, **kwargs):
    out = svlm.generate(
        batch, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True, **kwargs
    )
    return out, torch.stack(out.raw.logits, dim=1)


@pytest.mark.parametrize("mode", ["dataset", "sample"])
def test_generation_with_kv_cache_equals_without(model_type, mode):
    model, processor = tiny(model_type, torch.float64)
    vectors = random_vectors(2, model.config.get_text_config().hidden_size, scale=3.0)
    svlm = SteeredVLM(model, processor, vectors=vectors, config=SteeringConfig(mode=mode, alpha=2.0))
    batch = [image_chat("what is in this picture?")]
    cached, cached_logits = _greedy(svlm, batch, use_cache=True)
    fresh, fresh_logits = _greedy(svlm, batch, use_cache=False)
    with svlm.steering(enabled=False):
        plain, plain_logits = _greedy(svlm, batch, use_cache=True)
    assert cached.steering.applied and not plain.steering.applied
    assert torch.equal(cached.sequences, fresh.sequences)
    torch.testing.assert_close(cached_logits, fresh_logits, atol=1e-8, rtol=1e-8)
    assert not torch.allclose(cached_logits, plain_logits, atol=1e-4)  # steering changed something


@pytest.mark.parametrize("mode", ["dataset", "sample"])
def test_batched_left_padded_generation_equals_one_by_one(model_type, mode):
    model, processor = tiny(model_type, torch.float64)
    vectors = random_vectors(2, model.config.get_text_config().hidden_size, scale=3.0)
    svlm = SteeredVLM(model, processor, vectors=vectors, config=SteeringConfig(mode=mode, alpha=2.0))
    batch = [
        image_chat("what is in this picture?"),
        image_chat("and this one, described at much greater length?", 3),
        text_chat(),
    ]
    together, together_logits = _greedy(svlm, batch)
    assert together.steering.rows_steered == (True, True, False)
    for row, chat in enumerate(batch):
        alone, alone_logits = _greedy(svlm, [chat])
        assert together.texts[row] == alone.texts[0]
        torch.testing.assert_close(together_logits[row], alone_logits[0], atol=1e-7, rtol=1e-6)


def test_zero_hooks_after_200_randomized_failing_calls():
    model, processor = tiny("qwen2_vl")
    hidden = model.config.get_text_config().hidden_size
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, hidden))
    rng = random.Random(0)
    mlp = svlm.layers[1].mlp
    failures = 0
    for attempt in range(200):
        kind = rng.choice(
            ["bad_layer", "raise_in_layer", "interrupt_in_layer", "stream_closed", "bad_vector"]
        )
        try:
            if kind == "bad_layer":
                with pytest.raises(LayerIndexError):
                    svlm.generate(
                        [image_chat()],
                        config=SteeringConfig(layers=[rng.choice([2, 7, 99])]),
                        max_new_tokens=2,
                    )
            elif kind in ("raise_in_layer", "interrupt_in_layer"):
                error = RuntimeError if kind == "raise_in_layer" else KeyboardInterrupt
                countdown = [rng.randrange(1, 4)]

                def explode(module, args, output, countdown=countdown, error=error):
                    countdown[0] -= 1
                    if countdown[0] <= 0:
                        raise error("boom inside a layer")

                handle = mlp.register_forward_hook(explode)
                try:
                    with pytest.raises(error):
                        svlm.generate([image_chat()], max_new_tokens=4, do_sample=False)
                finally:
                    handle.remove()
            elif kind == "stream_closed":
                stream = svlm.stream(image_chat(), max_new_tokens=8)
                next(stream, None)
                stream.close()
            else:
                with pytest.raises(VectorError):
                    svlm.attach({0: torch.full((hidden,), float("nan"))})
            failures += 1
        finally:
            assert count_hooks(model) == 0, f"hook left after attempt {attempt} ({kind})"
    assert failures == 200


def test_streaming_yields_the_same_text_as_chat():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    chat = image_chat()
    assert "".join(svlm.stream(chat, max_new_tokens=8)) == svlm.chat(chat, max_new_tokens=8)
    assert count_hooks(model) == 0


def test_wrapped_model_is_never_mutated(model_type):
    model, processor = tiny(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, model.config.get_text_config().hidden_size))
    svlm.generate([image_chat(), text_chat()], max_new_tokens=3)
    svlm.generate([image_chat()], config=SteeringConfig(mode="sample"), max_new_tokens=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert count_hooks(model) == 0


def test_steering_context_overrides_only_this_thread():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    seen = {}
    with svlm.steering(enabled=False) as settings:
        assert settings.enabled is False
        worker = threading.Thread(target=lambda: seen.update(config=svlm.resolve_config()))
        worker.start()
        worker.join()
        disabled = svlm.forward([image_chat()]).logits
    assert seen["config"].enabled is True
    with torch.no_grad():
        plain = model(**svlm.encode([image_chat()])).logits
    assert torch.equal(disabled, plain)
    with pytest.raises(ConfigError, match="mode='x'"), svlm.steering(mode="x"):
        pass


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_gets_the_shift_in_its_own_dtype(dtype):
    model, processor = tiny("llava", dtype)
    vector = torch.randn(64, dtype=torch.float32)
    svlm = SteeredVLM(model, processor, vectors={0: vector}, config=SteeringConfig(alpha=1.0))
    inputs = svlm.encode([image_chat()])
    with torch.no_grad():
        base = model(**inputs, output_hidden_states=True).hidden_states[1]
        out = svlm.forward(inputs, output_hidden_states=True).hidden_states[1]
    assert out.dtype == dtype
    assert torch.equal(out[:, -1], base[:, -1] + vector.to(dtype))
    text = svlm.chat(image_chat(), max_new_tokens=3)
    assert isinstance(text, str)


def test_strict_is_the_default_and_fails_closed_without_a_pack():
    model, processor = tiny("llava")
    default = SteeredVLM(model, processor)
    assert default.strict is True
    with pytest.raises(SteeringUnavailableError, match="no valid vector pack"):
        default.chat(image_chat(), max_new_tokens=2)
    assert default.chat(text_chat(), max_new_tokens=2) is not None  # text-only: nothing to steer
    sample = SteeredVLM(model, processor, config=SteeringConfig(mode="sample"))
    assert sample.generate([image_chat()], max_new_tokens=2).steering.applied
    assert count_hooks(model) == 0


def test_fail_open_answers_are_flagged_warned_and_logged_without_the_prompt(caplog):
    model, processor = tiny("llava")
    lenient = SteeredVLM(model, processor, strict=False, model_id="/srv/models/secret-llava")
    prompt = "a very private prompt about my neighbour"
    caplog.set_level(logging.WARNING, logger="cmrm_guard")
    for _ in range(2):  # every unsteered answer, not only the first
        with pytest.warns(CMRMWarning, match="answering unsteered.*no valid vector pack"):
            output = lenient.generate([image_chat(prompt)], max_new_tokens=2)
        assert output.steering.applied is False and output.steering.fail_open is True
        assert output.steering.as_dict()["fail_open"] is True
    records = [r for r in caplog.records if r.name == "cmrm_guard" and "fail-open" in r.getMessage()]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    assert all(prompt not in r.getMessage() and "/srv/models" not in r.getMessage() for r in records)
    assert records[0].cmrm_fail_open is True
    intended = lenient.generate([image_chat()], config=SteeringConfig(enabled=False), max_new_tokens=2)
    assert intended.steering.applied is False and intended.steering.fail_open is False
    assert import_module("cmrm_guard").CMRMWarning is CMRMWarning and issubclass(CMRMWarning, UserWarning)


def test_bad_inputs_name_the_value_and_what_was_expected():
    model, processor = tiny("llava")
    with pytest.raises(VectorError, match=r"shape \(64,\).*got \(32,\)"):
        SteeredVLM(model, processor, vectors={0: torch.zeros(32)})
    with pytest.raises(VectorError, match=r"\(num_layers, hidden\) = \(2, 64\), got \(3, 64\)"):
        SteeredVLM(model, processor, vectors=torch.zeros(3, 64))
    with pytest.raises(LayerIndexError, match="layer 5 out of range.*2 layers"):
        SteeredVLM(model, processor, vectors={5: torch.zeros(64)})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(VectorError, match="(?i)nan|inf|finite"):
            SteeredVLM(model, processor, vectors={0: torch.full((64,), bad)}, strict=True)
    with pytest.raises(ConfigError, match="alpha=inf.*finite"):
        SteeringConfig(alpha=float("inf"))
    with pytest.raises(ConfigError, match="mode='both'.*'dataset' or 'sample'"):
        SteeringConfig(mode="both")
    with pytest.raises(LayerIndexError, match="layer 9"):
        SteeredVLM(model, processor, config=SteeringConfig(layers=[9]))
    svlm = SteeredVLM(model, processor)
    with pytest.raises(ConversationError, match="image on a text-only prompt path"):
        svlm.encode_text_only([image_chat()])
    with pytest.raises(ConversationError, match="image placeholder token"):
        svlm.encode_text_only([text_chat("look <image> here")])
    with pytest.raises(ConversationError, match="list of messages"):
        svlm.chat({"role": "user", "content": "hi"})
    with pytest.raises(ConversationError, match="sample-level CMRM"):
        svlm.generate(svlm.encode([image_chat()]), config=SteeringConfig(mode="sample"))
    with pytest.raises(ConfigError, match="SteeringConfig"):
        SteeredVLM(model, processor, config={"alpha": 1.0})
    assert count_hooks(model) == 0


@pytest.mark.parametrize("strict", [True, False])
def test_a_named_pack_that_fails_validation_raises_whatever_strict_says(tmp_path, strict):
    from cmrm_guard import PackMeta, VectorPack
    from cmrm_guard.errors import PackError, PackMismatchError

    model, processor = tiny("llava")
    meta = PackMeta(model_type="qwen2_vl", hidden_size=64, num_layers=2, layer_indices=[0, 1])
    foreign = VectorPack({0: torch.ones(64), 1: torch.ones(64)}, meta)
    with pytest.raises(PackMismatchError, match="qwen2_vl"):
        SteeredVLM(model, processor, vectors=foreign, strict=strict)
    good = VectorPack(
        random_vectors(2, 64),
        PackMeta(model_type="llava", hidden_size=64, num_layers=2, layer_indices=[0, 1]),
    )
    folder = tmp_path / "pack"
    good.save_pretrained(folder)
    (folder / "shifts.safetensors").write_bytes(b"not safetensors at all")  # a damaged folder
    with pytest.raises(PackError):
        SteeredVLM(model, processor, vectors=folder, strict=strict)
    with pytest.raises(PackError):
        SteeredVLM(model, processor, vectors=str(folder), strict=strict)
    for field, value in (("shifts_sha256", "0" * 64), ("format_version", "99.0")):
        edited = tmp_path / f"pack-{field}"
        good.save_pretrained(edited)
        config = json.loads((edited / "pack_config.json").read_text())
        config[field] = value  # a checksum mismatch, a future major version
        (edited / "pack_config.json").write_text(json.dumps(config))
        with pytest.raises(PackError):
            SteeredVLM(model, processor, vectors=edited, strict=strict)
    with pytest.raises(VectorError):
        SteeredVLM(model, processor, vectors={0: torch.full((64,), float("nan"))}, strict=strict)
    assert count_hooks(model) == 0


# ------------------------------------------------------------------ provenance and trust checks
def test_the_steering_record_reports_verified_provenance_not_what_a_folder_claims(tmp_path):
    from cmrm_guard import CMRMWarning

    model, processor = tiny("llava")
    pack = SteeredVLM(model, processor, vectors=random_vectors(2, 64)).vectors
    pack.save_pretrained(tmp_path)
    config_file = tmp_path / "pack_config.json"
    claimed = json.loads(config_file.read_text())
    claimed |= {"repo_id": "evil/forged-pack", "revision": "f" * 40}
    config_file.write_text(json.dumps(claimed))
    with pytest.warns(CMRMWarning, match="claims repo_id, revision; ignored"):
        svlm = SteeredVLM(model, processor, vectors=tmp_path)
    record = svlm.generate([image_chat()], max_new_tokens=1).steering
    assert record.applied and record.pack_provenance == "local path"
    assert record.pack_sha256 == svlm.vectors.meta.shifts_sha256 and len(record.pack_sha256) == 64
    assert "forged" not in json.dumps(record.as_dict()) and "f" * 40 not in json.dumps(record.as_dict())


def test_a_pack_file_with_a_negative_default_alpha_is_refused_on_load(tmp_path):
    from cmrm_guard.errors import PackError
    from cmrm_guard.vectors.pack import VectorPack

    model, processor = tiny("llava")
    SteeredVLM(model, processor, vectors=random_vectors(2, 64)).vectors.save_pretrained(tmp_path)
    config_file = tmp_path / "pack_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"alpha": -1.0}))
    with pytest.raises(PackError, match="alpha must be a finite number >= 0, got -1.0"):
        VectorPack.from_pretrained(tmp_path)


def test_a_lock_naming_layers_the_model_lacks_fails_at_construction():
    from cmrm_guard import SteeringLock
    from cmrm_guard.errors import LayerIndexError

    model, processor = tiny("llava")
    with pytest.raises(LayerIndexError, match="layer 7 out of range"):
        SteeredVLM(model, processor, vectors=random_vectors(2, 64), lock=SteeringLock(layers=(0, 7)))


def test_a_bad_calibration_sample_error_never_quotes_its_content():
    from cmrm_guard import calibrate
    from cmrm_guard.errors import ConversationError

    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, strict=False)
    with pytest.raises(ConversationError, match="sample 0 needs a non-empty 'prompt'") as caught:
        calibrate(svlm, [{"prompt": "", "note": "my password is hunter2"}])
    assert "hunter2" not in str(caught.value)


def test_effective_config_defaults_to_the_wrappers_config_and_names_a_bad_argument():
    from cmrm_guard.errors import ConfigError

    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64))
    effective = svlm.effective_config()
    assert effective.alpha == 1.0 and effective.layers == (0, 1)
    with pytest.raises(ConfigError, match="takes a SteeringConfig or None, got dict"):
        svlm.effective_config({"alpha": 0.5})
