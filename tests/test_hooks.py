"""hooks.py: exact arithmetic, positions under KV cache, tuple outputs, cleanup on every exit path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmrm_guard import SteeredVLM, SteeringConfig
from cmrm_guard.errors import LayerIndexError, VectorError
from cmrm_guard.hooks import PromptPositions, count_hooks, record_last_token, steer
from tests.conftest import image_chat, random_vectors, text_chat, tiny


class Observe:
    """Records each layer's output as the next hook sees it (registered before or after ours)."""

    def __init__(self, layers):
        self.layers = layers
        self.seen: dict[int, torch.Tensor] = {}
        self.handles = []

    def attach(self, prepend: bool = False):
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._make(i), prepend=prepend))
        return self

    def _make(self, i):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.seen[i] = hidden.detach().clone()

        return hook

    def detach(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("positions", ["last", "all"])
def test_each_steered_layer_adds_exactly_alpha_v_at_targeted_positions(model_type, positions):
    model, processor = tiny(model_type)
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, svlm_hidden(model, processor)))
    alpha = 0.75
    batch = [
        image_chat("what is in this picture?"),
        image_chat("a much longer question about the picture here", 1),
    ]
    inputs = svlm.encode(batch)
    mask = inputs["attention_mask"]
    assert bool((mask == 0).any()), "the batch must be left-padded for this test"
    config = SteeringConfig(alpha=alpha, application="every_layer", positions=positions, policy="always")
    shifts, _ = svlm.plan(svlm.resolve_config(config), batch, inputs)
    prompt = PromptPositions.from_attention_mask(mask, positions)
    with steer(svlm.layers, shifts, prompt):
        before = Observe(svlm.layers).attach(prepend=True)  # runs before ours: the raw output
        after = Observe(svlm.layers).attach()  # runs after ours: the steered output
        try:
            with torch.no_grad():
                model(**svlm._model_inputs(inputs), use_cache=False)
        finally:
            after.detach()
            before.detach()
    for layer in range(svlm.num_layers):
        raw, steered = before.seen[layer], after.seen[layer]
        expected_mask = mask.bool() if positions == "all" else torch.zeros_like(mask, dtype=torch.bool)
        if positions == "last":
            expected_mask[:, -1] = True  # left padding: every row's last prompt token is the last column
        v = svlm.vectors.shifts[layer] * alpha
        assert torch.equal(steered[expected_mask], raw[expected_mask] + v), f"layer {layer} targeted"
        assert torch.equal(steered[~expected_mask], raw[~expected_mask]), f"layer {layer} elsewhere"
    assert count_hooks(model) == 0


def svlm_hidden(model, processor) -> int:
    return model.config.get_text_config().hidden_size


def test_only_the_steered_layer_changes_and_earlier_layers_are_untouched():
    model, processor = tiny("llava")
    hidden = svlm_hidden(model, processor)
    vector = torch.randn(hidden)
    svlm = SteeredVLM(
        model, processor, vectors={0: vector}, config=SteeringConfig(alpha=0.5, policy="always")
    )
    inputs = svlm.encode([image_chat()])
    with torch.no_grad():
        base = model(**inputs, output_hidden_states=True).hidden_states
        out = svlm.forward(inputs, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output; the last entry is after the final norm, so pin layer 0
    assert torch.equal(out[0], base[0])
    assert torch.equal(out[1][:, -1], base[1][:, -1] + 0.5 * vector)
    assert torch.equal(out[1][:, :-1], base[1][:, :-1])
    assert not torch.equal(out[2], base[2])


class TupleLayer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, hidden, **kwargs):
        return (self.linear(hidden), None)


class TensorLayer(TupleLayer):
    def forward(self, hidden, **kwargs):
        return self.linear(hidden)


@pytest.mark.parametrize("layer_cls", [TupleLayer, TensorLayer])
def test_layers_returning_a_tensor_or_a_tuple(layer_cls):
    torch.manual_seed(0)
    layers = nn.ModuleList([layer_cls(8) for _ in range(3)])
    x = torch.randn(2, 5, 8)

    def run():
        h = x
        outs = []
        for layer in layers:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
            outs.append(h)
        return outs

    base = run()
    shift = torch.randn(8)
    prompt = PromptPositions.from_attention_mask(torch.ones(2, 5, dtype=torch.long))
    with steer(layers, {1: shift}, prompt):
        steered = run()
    assert torch.equal(steered[0], base[0])
    assert torch.equal(steered[1][:, -1], base[1][:, -1] + shift)
    assert torch.equal(steered[1][:, :-1], base[1][:, :-1])
    assert count_hooks(layers) == 0


def test_prompt_positions_select_prefill_and_decode_steps():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    last = PromptPositions.from_attention_mask(mask, "last", "all_steps")
    assert last.last_index.tolist() == [3, 3]
    selected = last.selection(0, 4, 2)
    assert selected.tolist() == [[False, False, False, True]] * 2
    assert last.selection(4, 1, 2) is True  # a decoding step
    assert last.selection(0, 6, 2).tolist() == [[False, False, False, True, True, True]] * 2  # no cache
    prefill_only = PromptPositions.from_attention_mask(mask, "last", "prefill_only")
    assert prefill_only.selection(4, 1, 2) is False
    everything = PromptPositions.from_attention_mask(mask, "all", "all_steps")
    assert everything.selection(0, 4, 2).tolist() == [[False, True, True, True], [True] * 4]
    right_padded = PromptPositions.from_attention_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert right_padded.last_index.tolist() == [1, 2]
    assert last.selection(0, 4, 4).shape == (4, 4)  # beams / num_return_sequences expand rows


def test_record_last_token_keeps_only_one_state_per_row_and_layer():
    model, processor = tiny("qwen2_vl")
    svlm = SteeredVLM(model, processor)
    states = svlm.last_token_states([image_chat(), image_chat("short", 2)])
    hidden = svlm.hidden_size
    assert set(states) == set(range(svlm.num_layers))
    for tensor in states.values():
        assert tensor.shape == (2, hidden)
        assert tensor.dtype == torch.float32
    inputs = svlm.encode([image_chat(), image_chat("short", 2)])
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True).hidden_states
    assert torch.allclose(states[0], full[1][:, -1], atol=1e-6)


def test_a_bad_layer_index_raises_before_any_hook_is_registered():
    model, processor = tiny("qwen2_vl")
    svlm = SteeredVLM(model, processor)
    v = torch.zeros(svlm.hidden_size)
    prompt = PromptPositions.from_attention_mask(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(LayerIndexError, match="layer 99"), steer(svlm.layers, {1: v, 99: v}, prompt):
        pass
    assert count_hooks(model) == 0
    with (
        pytest.raises(LayerIndexError, match="layer 99"),
        record_last_token(svlm.layers, [0, 99], torch.tensor([0])),
    ):
        pass
    assert count_hooks(model) == 0


def test_steer_rejects_non_finite_and_misshapen_shifts():
    layers = nn.ModuleList([TensorLayer(4) for _ in range(2)])
    prompt = PromptPositions.from_attention_mask(torch.ones(1, 3, dtype=torch.long))
    for bad in (torch.tensor([float("nan"), 0, 0, 0]), torch.tensor([float("inf"), 0, 0, 0])):
        with pytest.raises(VectorError, match="NaN or inf"), steer(layers, {0: bad}, prompt):
            pass
    with pytest.raises(VectorError, match="shape"), steer(layers, {0: torch.zeros(1, 2, 4)}, prompt):
        pass
    assert count_hooks(layers) == 0


def test_text_only_call_under_images_policy_is_bit_identical_to_unsteered(model_type):
    model, processor = tiny(model_type)
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, svlm_hidden(model, processor), 5.0))
    inputs = svlm.encode([text_chat()])
    with torch.no_grad():
        base = model(**inputs).logits
        steered = svlm.forward([text_chat()]).logits
        image_inputs = svlm.encode([image_chat()])
        image_base = model(**image_inputs).logits
        image_steered = svlm.forward([image_chat()]).logits
    assert torch.equal(base, steered)
    assert not torch.allclose(image_base, image_steered)


class ObserveCalls:
    """Records the last layer's output of every forward call (prefill, then one per decoding step)."""

    def __init__(self, layer):
        self.outputs: list[torch.Tensor] = []
        self.handle = layer.register_forward_hook(self._hook)  # after ours: sees the steered output

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self.outputs.append(hidden.detach().clone())


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_generated_tokens_are_steered_under_all_steps_only(model_type):
    # the hook reads the KV cache length from the layer's kwargs ("cache" since transformers 5.24,
    # "past_key_values" before): if it misses it, decoding steps look like prompt position 0
    model, processor = tiny(model_type)
    svlm = SteeredVLM(model, processor)
    last = svlm.num_layers - 1
    shift = random_vectors(svlm.num_layers, svlm_hidden(model, processor), 3.0)[last]
    svlm.attach({last: shift})  # one steered layer: its input is the same in both runs
    runs = {}
    for scope in ("all_steps", "prefill_only"):
        observe = ObserveCalls(svlm.layers[last])
        try:
            out = svlm.generate([image_chat()], config=SteeringConfig(step_scope=scope), max_new_tokens=3)
        finally:
            observe.handle.remove()
        runs[scope] = (out, observe.outputs)
    (out_all, seen_all), (out_prefill, seen_prefill) = runs["all_steps"], runs["prefill_only"]
    assert len(seen_all) >= 2 and seen_all[1].shape[1] == 1  # prefill, then cached decoding steps
    torch.testing.assert_close(seen_all[0], seen_prefill[0])  # the prompt is steered the same
    first = out_all.prompt_length
    assert torch.equal(out_all.sequences[:, first], out_prefill.sequences[:, first])
    step = seen_all[1] - seen_prefill[1]  # first decoding step: same input token in both runs
    alpha = out_all.steering.as_dict()["alpha"]
    torch.testing.assert_close(step[0, 0], alpha * shift.to(step.dtype), rtol=1e-4, atol=1e-4)
