"""Last-token states of a batch whose prompts share a prefix, with the shared prefix run once.

Calibration's corrupted twins all start alike: the chat template's header and, with the ``blank``
corruption, the same uninformative image, i.e. most of each prompt for real VLMs (576 image tokens of
LLaVA-1.5's ~620). A causal decoder's states over a common prefix are the same for every row, so
the prefix runs once (batch 1, its KV cache kept once and broadcast over the rows per layer), and only
each row's own suffix runs, right-padded, with explicit positions continuing the prefix's. The result is
the state of each row's last token leaving each requested layer, as an unshared forward gives it
(equal up to floating-point summation order).

A prefix is shared only where that is exact: the architecture's adapter allows it
(``shares_prompt_prefix``; positions are passed explicitly, multimodal RoPE offsets included), the
prefix holds every image of every sharing row (suffixes run without pixel inputs), and those images
are pixel-identical across the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from cmrm_guard.adapters import conversation as conv
from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.hooks import LayerStack, record_last_token

if TYPE_CHECKING:
    from cmrm_guard.adapters.base import VLMAdapter

T = TypeVar("T")

FORWARD_COST_TOKENS = 64
"""Fixed cost of one more forward call, in token positions: streaming the weights of a small
decoder once costs about what 64 tokens of compute do (SmolLM2-135M shape on 2 CPU cores: 80 ms vs
~1.3 ms per token). Sharing must save more than that over one plain padded forward."""

ZERO_FILLED_KEYS = ("token_type_ids", "mm_token_type_ids")
"""Per-token processor outputs that are 0 on text tokens: zero-filled for suffixes and text rows."""

PER_TOKEN_KEYS = ("input_ids", "attention_mask", *ZERO_FILLED_KEYS)
"""Processor outputs with one entry per token: sliced to the prefix."""


@dataclass(frozen=True)
class PrefixModel:
    """What the shared-prefix pass uses of a steered model, and nothing more
    (:meth:`cmrm_guard.SteeredVLM.prefix_model` builds one).

    Attributes:
        adapter: the architecture adapter (``shares_prompt_prefix``, image token, RoPE delta).
        model: the model to call (a peft wrapper included).
        layers: its decoder layers (where last-token states are recorded).
        encode: ``encode(conversations, chat_template_kwargs)`` -> left-padded processor outputs.
        model_inputs: processor outputs -> keyword arguments of ``model(...)`` on its device.
        pad_token_id: id used to right-pad suffixes.
        forward_kwargs: extra keyword arguments of every forward (``logits_to_keep=1``).
        cache_kwarg: the name of the forward's KV cache argument.
        run: ``run(fn)`` runs ``fn()`` on the model's thread under its lock and returns its result.
    """

    adapter: VLMAdapter
    model: nn.Module
    layers: LayerStack
    encode: Callable[[Sequence[Conversation], Mapping[str, Any] | None], Any]
    model_inputs: Callable[[Mapping[str, Any]], dict[str, Any]]
    pad_token_id: int
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    cache_kwarg: str = "past_key_values"
    run: Callable[[Callable[[], Any]], Any] = field(default=lambda fn: fn())


class PrefixCache(DynamicCache):
    """A KV cache filled by one prefill, then read without growing by later forwards.

    The prefix is stored once (batch 1); a later forward of any number of rows gets, per layer,
    the prefix broadcast over its rows followed by its own keys and values, which are not kept. At
    most one layer's concatenation exists at a time, so memory does not grow with the batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        prefix_keys: Tensor | None = getattr(layer, "keys", None)
        prefix_values: Tensor | None = getattr(layer, "values", None)
        assert prefix_keys is not None and prefix_values is not None  # the prefill filled every layer
        rows = key_states.shape[0]
        keys = torch.cat([prefix_keys.expand(rows, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([prefix_values.expand(rows, -1, -1, -1), value_states], dim=-2)
        return keys, values


def unpadded_rows(inputs: Mapping[str, Any]) -> list[Tensor]:
    """Each row's token ids without its (left) padding."""
    mask = inputs["attention_mask"].to(torch.bool)
    return [ids[keep] for ids, keep in zip(inputs["input_ids"], mask, strict=True)]


def common_prefix_length(rows: Sequence[Tensor]) -> int:
    """Number of leading tokens all rows share, leaving every row at least one token of its own."""
    shortest = min(len(row) for row in rows)
    if shortest < 2:
        return 0
    stacked = torch.stack([row[: shortest - 1] for row in rows])
    same = (stacked == stacked[:1]).all(dim=0)
    differing = (~same).nonzero()
    return int(differing[0]) if len(differing) else shortest - 1


def image_runs(row: Tensor, image_token: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each maximal run of image placeholder tokens in ``row``."""
    flags = (row == image_token).tolist()
    runs: list[tuple[int, int]] = []
    for index, flag in enumerate(flags):
        if not flag:
            continue
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _image_fingerprints(conversation: Conversation) -> list[tuple[str, tuple[int, int], bytes]]:
    loaded = [conv.load_image(image) for image in conv.images_in(conversation)]
    return [(image.mode, image.size, image.tobytes()) for image in loaded]


def images_identical(conversations: Sequence[Conversation]) -> bool:
    """Whether every conversation holds the same images (pixel for pixel) in the same order."""
    first = _image_fingerprints(conversations[0])
    return all(_image_fingerprints(c) == first for c in conversations[1:])


def image_safe_length(
    length: int, rows: Sequence[Tensor], image_token: int | None, conversations: Sequence[Conversation]
) -> int:
    """``length`` if a prefix of that many tokens can be shared, else 0.

    The suffixes run without images, so the prefix must hold every image of every row (an image
    token at or after ``length`` in any row: 0), and images in the prefix must be pixel-identical
    across the rows' conversations (else 0)."""
    if image_token is None:
        return length
    if any(bool((row[length:] == image_token).any()) for row in rows):
        return 0
    if bool((rows[0][:length] == image_token).any()) and not images_identical(conversations):
        return 0
    return length


def _prefix_inputs(single: Mapping[str, Any], length: int, with_images: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in single.items():
        if key in PER_TOKEN_KEYS:
            out[key] = value[:, :length]
        elif with_images:
            out[key] = value
    return out


def _right_padded(
    rows: Sequence[Tensor], offset: int, pad_id: int, keys: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Right-padded ids of ``rows`` continuing ``offset`` cached tokens (0: none): the attention
    mask covers the cache too, positions start at ``offset``.

    Returns (inputs, (rows, width) positions, last_index)."""
    width = max(len(tokens) for tokens in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), offset + width, dtype=torch.long)
    mask[:, :offset] = 1
    for i, tokens in enumerate(rows):
        ids[i, : len(tokens)] = tokens
        mask[i, offset : offset + len(tokens)] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    for key in keys:
        if key in ZERO_FILLED_KEYS:
            inputs[key] = torch.zeros_like(ids)
    positions = (torch.arange(width) + offset).expand(len(rows), width)
    last_index = torch.tensor([len(tokens) - 1 for tokens in rows])
    return inputs, positions, last_index


def _with_rope_delta(positions: Tensor, delta: Tensor | None) -> Tensor:
    """Multimodal RoPE (Qwen-VL): text after the prefix's image sits at position + delta on all
    three axes."""
    if delta is None:
        return positions
    shifted = positions + delta.reshape(-1)[:1].to(device=positions.device, dtype=positions.dtype)
    return shifted.unsqueeze(0).expand(3, *positions.shape)


def shared_prefix_states(
    target: PrefixModel,
    conversations: Sequence[Conversation],
    inputs: Mapping[str, Any],
    layers: Sequence[int],
    *,
    sharing_rows: Sequence[int],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[int, Tensor] | None:
    """Unsteered last-token states of ``conversations`` (encoded together as ``inputs``), with the
    prefix common to ``sharing_rows`` run once; the other rows (which must hold no image) run in a
    forward of their own, padded only to each other (a text twin is not padded to its image twin).

    Returns ``None`` (run the one plain padded forward instead) when the architecture's adapter
    does not allow sharing, or when sharing would save fewer than :data:`FORWARD_COST_TOKENS` token
    positions per extra forward call.

    Returns:
        layer -> (len(conversations), hidden) float32 CPU tensor.
    """
    if not sharing_rows or not target.adapter.shares_prompt_prefix:
        return None
    rows = unpadded_rows(inputs)
    shared_set = set(sharing_rows)
    fresh_rows = [i for i in range(len(rows)) if i not in shared_set]
    image_token = target.adapter.image_token_id(target.model)
    if image_token is not None and any(bool((rows[i] == image_token).any()) for i in fresh_rows):
        return None
    group = [rows[i] for i in sharing_rows]
    length = common_prefix_length(group)
    length = image_safe_length(length, group, image_token, [conversations[i] for i in sharing_rows])
    if length == 0:
        return None
    plain_tokens = len(rows) * max(len(row) for row in rows)
    shared_tokens = length + len(group) * (max(len(row) for row in group) - length)
    if fresh_rows:
        shared_tokens += len(fresh_rows) * max(len(rows[i]) for i in fresh_rows)
    extra_calls = 2 if fresh_rows else 1
    if plain_tokens - shared_tokens < extra_calls * FORWARD_COST_TOKENS:
        return None
    first = sharing_rows[0]
    single = target.encode([conversations[first]], chat_template_kwargs)
    if not torch.equal(single["input_ids"][0], rows[first]):
        return None  # the processor renders a row alone differently: do not guess
    with_images = image_token is not None and bool((rows[first][:length] == image_token).any())
    prefix = target.model_inputs(_prefix_inputs(single, length, with_images))
    device = prefix["input_ids"].device
    pad_id = target.pad_token_id
    keys = list(single.keys())
    suffix, suffix_positions, suffix_last = _right_padded(
        [row[length:] for row in group], length, pad_id, keys
    )
    fresh = _right_padded([rows[i] for i in fresh_rows], 0, pad_id, keys) if fresh_rows else None
    extra = dict(target.forward_kwargs)
    cache_kwarg = target.cache_kwarg

    def forward(batch, positions, last_index, **kwargs) -> dict[int, Tensor]:
        width = batch["input_ids"].shape[1]
        offset = batch["attention_mask"].shape[1] - width
        with record_last_token(target.layers, layers, last_index) as records:
            target.model(
                **{key: value.to(device) for key, value in batch.items()},
                position_ids=positions.to(device),
                cache_position=torch.arange(offset, offset + width, device=device),
                **kwargs,
                **extra,
            )
        return dict(records)

    def run() -> dict[int, Tensor]:
        with torch.inference_mode():
            fresh_states = forward(*fresh, use_cache=False) if fresh is not None else {}
            cache = PrefixCache()
            target.model(**prefix, **{cache_kwarg: cache}, use_cache=True, **extra)
            cache.frozen = True
            delta = target.adapter.rope_position_delta(target.model)
            positions = _with_rope_delta(suffix_positions, delta)
            shared_states = forward(suffix, positions, suffix_last, **{cache_kwarg: cache}, use_cache=True)
        out: dict[int, Tensor] = {}
        for layer in layers:
            merged = torch.empty(len(rows), shared_states[layer].shape[-1])
            merged[list(sharing_rows)] = shared_states[layer]
            if fresh_rows:
                merged[fresh_rows] = fresh_states[layer]
            out[layer] = merged
        return out

    return target.run(run)
