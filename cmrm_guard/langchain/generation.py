"""Per-call generation pieces: seeded sampling, forced prefixes, stop strings, the stream gate.

Everything a call needs is built for that call and passed as arguments to
:meth:`cmrm_guard.SteeredVLM.generate`; nothing is stored on the model or in global state:

- :class:`SeededSampler` samples inside a ``LogitsProcessor`` from its own ``torch.Generator``
  (``generate`` then runs greedy over the one token left), so ``seed`` never touches torch's
  global RNG and concurrent calls cannot disturb each other's randomness.
- :class:`ForcedPrefix` makes the reply start with given tokens (a forced ``tool_choice``).
- :class:`StreamGate` decides how much of a streamed reply may be shown (held back before stop
  strings and tool calls).

The worker thread and stop flag that streaming and async calls use are in :mod:`cmrm_guard.runtime`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from cmrm_guard.langchain.tools import visible_prefix

__all__ = [
    "ForcedPrefix",
    "SeededSampler",
    "StreamGate",
    "cut_at_stop",
    "stop_hold",
]


class SeededSampler(LogitsProcessor):
    """Temperature / top-k / top-p sampling from a private, seeded generator.

    Returns scores that are ``-inf`` everywhere but the sampled token, so greedy decoding picks it.
    """

    def __init__(self, temperature: float, top_p: float | None, top_k: int | None, seed: int) -> None:
        self.temperature = float(temperature)
        self.top_p = top_p
        self.top_k = top_k
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._generator is None or self._generator.device != scores.device:
            self._generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        logits = scores.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True, dim=-1)
            mass = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = mass - ordered.softmax(dim=-1) > self.top_p  # keep the token that crosses top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        choice = torch.multinomial(logits.softmax(dim=-1), 1, generator=self._generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice, 0.0)


class ForcedPrefix(LogitsProcessor):
    """Force the first ``len(token_ids)`` generated tokens (one instance per call)."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = list(token_ids)
        self._start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        if step >= len(self.token_ids):
            return scores
        out = torch.full_like(scores, float("-inf"))
        out[:, self.token_ids[step]] = 0.0
        return out


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stop_hold(text: str, stops: Sequence[str]) -> int:
    """Length of the tail of ``text`` that may be the start of a stop string (hold it back)."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold


class StreamGate:
    """What of the streamed text may be shown now: held back before stop strings and tool calls."""

    def __init__(self, stops: list[str], tools: bool) -> None:
        self.stops = stops
        self.tools = tools
        self.text = ""
        self.emitted = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The newly showable text after ``piece`` arrived ("" while it is held back)."""
        if self.stopped:
            return ""
        self.text += piece
        text, self.stopped = cut_at_stop(self.text, self.stops)
        if not self.stopped:
            text = text[: len(text) - stop_hold(text, self.stops)]
        visible = visible_prefix(text, tools=self.tools)
        if len(visible) <= len(self.emitted) or not visible.startswith(self.emitted):
            return ""
        delta, self.emitted = visible[len(self.emitted) :], visible
        return delta
