"""Forward hooks that add CMRM shifts to, or read last-token states from, decoder layers.

Hooks exist only inside the :func:`steer` and :func:`record_last_token` context managers: every
index and vector is checked before the first hook is registered, an ``ExitStack`` owns the handles
and removes them on every exit path (exception, ``KeyboardInterrupt``, a generator closed early),
and hooks return new tensors instead of writing into the layer's output. All per-call data lives
in the closures of one call, never on the modules.

Which positions are steered. A call knows its prompt: the padded length ``P`` and, per row, the
index of the last real prompt token (from the attention mask, so left and right padding both
work). A pre-hook on the first decoder layer reads how many tokens the KV cache already holds, so
each forward knows the absolute position of its tokens: the prefill (or a ``use_cache=False``
recomputation of the whole sequence) and each decoding step are told apart, and steering with and
without the cache gives the same hidden states.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

from cmrm_guard.errors import LayerIndexError, VectorError

LayerStack: TypeAlias = "nn.ModuleList | nn.Sequential | Sequence[nn.Module]"
"""A decoder's layer stack: what :meth:`VLMAdapter.decoder_layers` returns, or a plain sequence."""


@dataclass(frozen=True)
class PromptPositions:
    """Which token positions of a batch of prompts are steered.

    Attributes:
        prompt_length: padded prompt length ``P`` (positions ``>= P`` are generated tokens).
        last_index: (batch,) index of each row's last real prompt token.
        prompt_mask: (batch, P) bool, real (non-padding) prompt tokens.
        positions: ``"last"`` or ``"all"`` prompt tokens.
        step_scope: ``"all_steps"`` also steers generated tokens; ``"prefill_only"`` does not.
    """

    prompt_length: int
    last_index: Tensor
    prompt_mask: Tensor
    positions: str = "last"
    step_scope: str = "all_steps"

    @classmethod
    def from_attention_mask(
        cls, attention_mask: Tensor, positions: str = "last", step_scope: str = "all_steps"
    ) -> PromptPositions:
        """Positions of a batch from its (batch, P) attention mask."""
        mask = attention_mask.to(torch.bool).cpu()
        if mask.dim() != 2:
            raise VectorError(f"attention_mask must be (batch, length), got shape {tuple(mask.shape)}")
        length = mask.shape[1]
        ar = torch.arange(length).expand_as(mask)
        last = torch.where(mask, ar, torch.full_like(ar, -1)).max(dim=1).values
        if bool((last < 0).any()):
            raise VectorError("a row of the attention mask has no real token")
        return cls(length, last, mask, positions, step_scope)

    def selection(self, offset: int, length: int, batch: int) -> Tensor | bool:
        """Which tokens of a forward over absolute positions ``[offset, offset + length)`` to steer.

        Returns ``True`` (all), ``False`` (none) or a (batch, length) bool tensor.
        """
        steer_generated = self.step_scope == "all_steps"
        if offset >= self.prompt_length:
            return steer_generated
        pos = torch.arange(offset, offset + length)
        in_prompt = pos < self.prompt_length
        rows = self.last_index.shape[0]
        selected = torch.zeros(rows, length, dtype=torch.bool)
        prompt_pos = pos[in_prompt]
        if self.positions == "all":
            selected[:, in_prompt] = self.prompt_mask[:, prompt_pos]
        else:
            selected[:, in_prompt] = prompt_pos.unsqueeze(0) == self.last_index.unsqueeze(1)
        if steer_generated:
            selected[:, ~in_prompt] = True
        if batch != rows:  # generate() expands rows for beams / num_return_sequences
            if batch % rows:
                raise VectorError(f"forward batch {batch} is not a multiple of the prompt batch {rows}")
            selected = selected.repeat_interleave(batch // rows, dim=0)
        if bool(selected.all()):
            return True
        if not bool(selected.any()):
            return False
        return selected


HOOK_MARK = "_cmrm_guard_hook"


def _mark(hook: Any) -> Any:
    setattr(hook, HOOK_MARK, True)
    return hook


def count_hooks(model: nn.Module, *, ours_only: bool = True) -> int:
    """Number of forward and forward-pre hooks on the modules of ``model``.

    Args:
        ours_only: count only hooks cmrm-guard registered (transformers installs permanent
            output-capturing hooks of its own on the first forward of some models).
    """
    total = 0
    for module in model.modules():
        for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()):
            if not ours_only or getattr(hook, HOOK_MARK, False):
                total += 1
    return total


def check_layer_indices(indices: Sequence[int], n_layers: int) -> None:
    """Raise :class:`LayerIndexError` naming every index outside ``[0, n_layers)``."""
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers]
    if bad:
        raise LayerIndexError(
            f"layer {', '.join(map(str, bad))} out of range: the decoder has {n_layers} layers "
            f"(valid indices 0..{n_layers - 1})"
        )


def _check_shifts(shifts: Mapping[int, Tensor], n_layers: int) -> None:
    check_layer_indices(list(shifts), n_layers)
    widths = set()
    for index, shift in shifts.items():
        if not isinstance(shift, Tensor) or shift.dim() not in (1, 2):
            raise VectorError(
                f"shift for layer {index} must be a tensor of shape (hidden,) or (batch, hidden), "
                f"got {getattr(shift, 'shape', type(shift).__name__)}"
            )
        if not bool(torch.isfinite(shift).all()):
            raise VectorError(f"shift for layer {index} holds NaN or inf values")
        widths.add(shift.shape[-1])
    if len(widths) > 1:
        raise VectorError(f"shifts have different widths {sorted(widths)}")


def _hidden_of(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
"""Names a decoder layer gets its KV cache under: ``cache`` since transformers 5.24, before it
``past_key_values`` (and ``past_key_value`` in 4.x)."""


def _cache_length(kwargs: Mapping[str, Any]) -> int:
    cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


class _ForwardState:
    """What the current forward of one steered call selects; written by the first layer's pre-hook."""

    __slots__ = ("selected", "masks", "owner")

    def __init__(self, owner: int) -> None:
        self.selected: Tensor | bool = False
        self.masks: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.owner = owner

    def mask_for(self, hidden: Tensor) -> Tensor:
        key = (hidden.device, hidden.dtype)
        mask = self.masks.get(key)
        if mask is None:
            selected = self.selected
            assert isinstance(selected, Tensor)  # masks are asked for only where rows are selected
            mask = selected.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
            self.masks[key] = mask
        return mask


def _make_position_hook(state: _ForwardState, prompt: PromptPositions):
    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() != state.owner:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        state.selected = prompt.selection(_cache_length(kwargs), hidden.shape[1], hidden.shape[0])
        state.masks = {}
        return None

    return _mark(pre_hook)


def _make_shift_hook(state: _ForwardState, shift: Tensor):
    cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        selected = state.selected
        if selected is False or threading.get_ident() != state.owner:
            return None
        hidden = _hidden_of(output)
        key = (hidden.device, hidden.dtype)
        delta = cast.get(key)
        if delta is None:
            delta = shift.to(device=hidden.device, dtype=hidden.dtype)
            if delta.dim() == 2:  # one shift per row: (batch, 1, hidden)
                rows = hidden.shape[0]
                if rows != delta.shape[0]:
                    if rows % delta.shape[0]:
                        raise VectorError(
                            f"per-row shift has {delta.shape[0]} rows, forward batch has {rows}"
                        )
                    delta = delta.repeat_interleave(rows // delta.shape[0], dim=0)
                delta = delta.unsqueeze(1)
            cast[key] = delta
        if selected is True:
            return _with_hidden(output, hidden + delta)
        return _with_hidden(output, torch.addcmul(hidden, state.mask_for(hidden), delta))

    return _mark(hook)


@contextmanager
def steer(layers: LayerStack, shifts: Mapping[int, Tensor], prompt: PromptPositions) -> Iterator[None]:
    """Add ``shifts[i]`` to the output of ``layers[i]`` at the positions ``prompt`` selects.

    Args:
        layers: the decoder layer stack.
        shifts: layer index -> shift already scaled by alpha, shape (hidden,) or (batch, hidden).
        prompt: the prompt's positions and the steering scope.

    Only calls made from the thread that entered the context are steered.

    Raises:
        LayerIndexError: an index is out of range (before any hook is registered).
        VectorError: a shift has the wrong shape or non-finite values.
    """
    _check_shifts(shifts, len(layers))
    if not shifts:
        yield
        return
    state = _ForwardState(threading.get_ident())
    with ExitStack() as stack:
        handle = layers[0].register_forward_pre_hook(
            _make_position_hook(state, prompt), with_kwargs=True, prepend=True
        )
        stack.callback(handle.remove)
        for index in sorted(shifts):
            # prepend: run before hooks already there (transformers' output-capturing hooks), so
            # `output_hidden_states` and any observer see the steered state
            handle = layers[index].register_forward_hook(_make_shift_hook(state, shifts[index]), prepend=True)
            stack.callback(handle.remove)
        yield


@contextmanager
def record_last_token(
    layers: LayerStack, indices: Sequence[int], last_index: Tensor
) -> Iterator[dict[int, Tensor]]:
    """Record, per layer, the output hidden state of each row's last prompt token.

    Yields a dict filled during the forward pass: layer index -> (batch, hidden) float32 CPU tensor.
    Only the selected token is kept (memory flat in prompt length).
    """
    check_layer_indices(list(indices), len(layers))
    records: dict[int, Tensor] = {}
    owner = threading.get_ident()

    def make(index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() != owner:
                return
            hidden = _hidden_of(output)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            picked = hidden[rows, last_index.to(hidden.device)]
            records[index] = picked.detach().to(device="cpu", dtype=torch.float32)

        return _mark(hook)

    with ExitStack() as stack:
        for index in indices:
            stack.callback(layers[index].register_forward_hook(make(index)).remove)
        yield records
