"""Streaming generation in a worker thread, stopped and joined when the consumer goes away."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor


class StopEvent:
    """A ``StoppingCriteria`` that stops generation once its event is set."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def stream_text(
    run: Callable[[Any, Any], None], tokenizer: Any, stopping_criteria: Sequence[Any] | None = None
) -> Iterator[str]:
    """Yield decoded text pieces while ``run(streamer, stopping_criteria)`` generates in a thread.

    Closing the iterator early (or an exception in the consumer) sets a stop criterion and joins
    the worker before returning, so the generation and its hooks are gone when this returns. An
    exception in the worker is re-raised in the consumer.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
    stop = StopEvent()
    criteria = StoppingCriteriaList(list(stopping_criteria or []))
    criteria.append(stop)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run(streamer, criteria)
        except BaseException as error:  # re-raised in the consumer
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=work, name="cmrm-guard-stream", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        stop.event.set()
        worker.join()
    if failure:
        raise failure[0]
