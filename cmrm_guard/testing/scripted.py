"""Scripted replies: test an agent pipeline offline on a tiny random model (which emits gibberish).

:class:`ScriptedReplies` is a ``LogitsProcessor`` passed through ``ChatSteeredVLM(generation_kwargs=
{"logits_processor": [...]})``: at each step it forces the next token of the reply a rule picks
from the decoded prompt, then EOS. Everything else is the real path: chat template, CMRM hooks,
``generate``, streaming, decoding, tool-call parsing, LangChain/LangGraph plumbing. A rule returning
``None`` leaves the model's own logits alone (for ``free_tokens`` tokens, then EOS, when that is set:
short free replies under a ``max_tokens`` long enough for scripted tool calls).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from transformers import LogitsProcessor


class ScriptedReplies(LogitsProcessor):
    """Force ``rule(prompt_text)`` (then EOS) as the reply; calls on one model are serialised."""

    def __init__(
        self, tokenizer: Any, rule: Callable[[str], str | None], free_tokens: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.rule = rule
        self.free_tokens = free_tokens
        self.eos = tokenizer.eos_token_id
        self._prompt: list[int] | None = None
        self._last = -1
        self._target: list[int] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ids = input_ids[0].tolist()
        prompt = self._prompt
        if prompt is None or len(ids) != self._last + 1 or ids[: len(prompt)] != prompt:
            self._prompt = prompt = ids  # a new call: its first step sees the bare prompt
            reply = self.rule(self.tokenizer.decode(ids, skip_special_tokens=False))
            self._target = None if reply is None else self.tokenizer.encode(reply, add_special_tokens=False)
        self._last = len(ids)
        step = len(ids) - len(prompt)
        if self._target is None:
            if self.free_tokens is None or step < self.free_tokens:
                return scores
            out = torch.full_like(scores, float("-inf"))
            out[:, self.eos] = 0.0
            return cast(torch.FloatTensor, out)
        token = self._target[step] if step < len(self._target) else self.eos
        out = torch.full_like(scores, float("-inf"))
        out[:, token] = 0.0
        return cast(torch.FloatTensor, out)


def constant(reply: str) -> Callable[[str], str]:
    """A rule that always answers ``reply``."""
    return lambda prompt: reply
