"""Per-call generation pieces: seeded sampling, forced prefixes, stop strings, a worker thread.

Everything a call needs is built for that call and passed as arguments to
:meth:`cmrm_guard.SteeredVLM.generate`; nothing is stored on the model or in global state:

- :class:`SeededSampler` samples inside a ``LogitsProcessor`` from its own ``torch.Generator``
  (``generate`` then runs greedy over the one token left), so ``seed`` never touches torch's
  global RNG and concurrent calls cannot disturb each other's randomness.
- :class:`ForcedPrefix` makes the reply start with given tokens (a forced ``tool_choice``).
- :class:`CancelFlag` is a ``StoppingCriteria`` a consumer sets to stop generation.
- :class:`GenerationRun` runs one generation in a worker thread and hands its text pieces to a
  sink (a queue, or an asyncio loop), for streaming and for cancellable async calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

__all__ = [
    "CancelFlag",
    "ForcedPrefix",
    "GenerationRun",
    "SeededSampler",
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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        if step >= len(self.token_ids):
            return scores
        out = torch.full_like(scores, float("-inf"))
        out[:, self.token_ids[step]] = 0.0
        return out


class CancelFlag(StoppingCriteria):
    """Stops generation after the current step once :meth:`set` was called (from any thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


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


class _SinkStreamer(BaseStreamer):
    """Hands the reply's new text to a callable token by token (held while a character is split).

    Decodes the whole reply so far at each token, so the concatenated pieces equal the final
    ``batch_decode`` of the reply exactly.
    """

    def __init__(self, tokenizer: Any, sink: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.sink = sink
        self.tokens: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt
            self.prompt_seen = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return
        self._send(text)

    def end(self) -> None:
        self._send(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            piece, self.sent = text[self.sent :], len(text)
            self.sink(piece)


class GenerationRun:
    """One :meth:`SteeredVLM.generate` call in a worker thread.

    Args:
        target: runs the generation; receives the streamer (or ``None``) and the cancel flag and
            returns the :class:`~cmrm_guard.GenerationOutput`.
        tokenizer: decodes the streamed tokens (``None``: no streaming).
        on_piece: called from the worker with each decoded text piece.
        on_done: called from the worker once, after the generation ended (hooks already removed).
    """

    def __init__(
        self,
        target: Callable[[Any, CancelFlag], Any],
        tokenizer: Any = None,
        on_piece: Callable[[str], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.cancel = CancelFlag()
        self.output: Any = None
        self.error: BaseException | None = None
        self._target = target
        self._streamer = _SinkStreamer(tokenizer, on_piece) if tokenizer is not None and on_piece else None
        self._on_done = on_done
        self.thread = threading.Thread(target=self._work, name="cmrm-guard-langchain", daemon=True)

    def start(self) -> GenerationRun:
        self.thread.start()
        return self

    def _work(self) -> None:
        try:
            self.output = self._target(self._streamer, self.cancel)
        except BaseException as error:  # re-raised by the consumer
            self.error = error
        finally:
            if self._on_done is not None:
                self._on_done()

    def stop(self) -> None:
        """Ask the generation to stop after its current step."""
        self.cancel.set()
