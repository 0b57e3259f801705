"""One model's runtime: its thread, its lock, the stop flag and the generation worker.

- **Model thread.** torch on CPU parallelises with OpenMP, whose thread team belongs to the thread
  that runs the op. When two threads of one process both run torch work (the caller and a streaming
  worker, or asyncio's executor threads), two teams exist; libgomp stops spinning once its threads
  outnumber the cores, and on a 2-core machine generation then runs about 1.7x slower. Every hooked
  call on a model therefore runs on one dedicated thread of that model (:func:`run_on_model_thread`),
  under the model's lock (:func:`model_lock`), with the caller's grad / inference mode.
- **Stop flag.** :class:`StopFlag` is a ``StoppingCriteria`` any thread sets to stop a generation
  after its current step.
- **Generation worker.** :class:`GenerationWorker` runs one generation in a thread and hands its
  decoded text pieces to a sink (a queue for iterators, an asyncio loop for async callers).

Waiting for the model is never cut short: an interrupted wait (Ctrl-C, once or repeatedly, or a
cancelled asyncio task) stops the generation and still waits for it, so a call never returns or
raises while its steering hooks are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

__all__ = [
    "THREAD_PREFIX",
    "GenerationWorker",
    "StopFlag",
    "call_soon",
    "model_lock",
    "on_model_thread",
    "resolve_future",
    "run_on_model_thread",
    "wait_or_stop",
]

T = TypeVar("T")
THREAD_PREFIX = "cmrm-guard-model"

_EXECUTORS: weakref.WeakKeyDictionary[nn.Module, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()
_DONE = object()


# ------------------------------------------------------------------------------ model thread
def model_lock(model: nn.Module) -> threading.RLock:
    """The lock serialising hooked calls on ``model`` (shared by every wrapper of that model)."""
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _executor(model: nn.Module) -> ThreadPoolExecutor:
    with _GUARD:
        executor = _EXECUTORS.get(model)
        if executor is None:
            executor = _EXECUTORS[model] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)
        return executor


def on_model_thread() -> bool:
    """Whether the current thread is a model thread (calls made there run inline)."""
    return threading.current_thread().name.startswith(THREAD_PREFIX)


def run_on_model_thread(
    model: nn.Module, fn: Callable[[], T], *, on_interrupt: Callable[[], None] | None = None
) -> T:
    """Run ``fn()`` on ``model``'s thread under :func:`model_lock` and return its result.

    ``fn`` runs with the caller's grad mode and inference mode (``torch.no_grad()`` and
    ``torch.inference_mode()`` around the call apply inside it). Its exception is re-raised here.
    If the waiting thread is interrupted (``KeyboardInterrupt``, any number of times),
    ``on_interrupt`` is called (e.g. to stop a generation) and the call is still waited for, so its
    hooks are gone when the first interrupt is re-raised.
    """
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def call() -> T:
        with model_lock(model), torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn()

    if on_model_thread():
        return call()
    future = _executor(model).submit(call)
    _wait_through_interrupts(lambda: wait([future]), on_interrupt)
    return future.result()


def _wait_through_interrupts(block: Callable[[], Any], on_interrupt: Callable[[], None] | None) -> None:
    """Call ``block()`` until it returns; re-raise the first ``KeyboardInterrupt`` afterwards."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            block()
        except KeyboardInterrupt as interrupt:
            interrupted = interrupted or interrupt
            if on_interrupt is not None:
                on_interrupt()
            continue
        break
    if interrupted is not None:
        raise interrupted


# ---------------------------------------------------------------------------------- stop flag
class StopFlag(StoppingCriteria):
    """Stops generation after the current step once :meth:`set` was called (from any thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        # transformers types StoppingCriteria.__call__ as returning the legacy torch.BoolTensor,
        # which no torch function is typed to return (torch.full returns a Tensor of dtype bool)
        return torch.full(  # type: ignore[return-value]
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


# -------------------------------------------------------------------------- generation worker
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


class GenerationWorker:
    """One generation in a worker thread, stopped and joined when its consumer goes away.

    Args:
        target: runs the generation; receives the streamer (or ``None``) and the stop flag and
            returns the generation's result (a :class:`~cmrm_guard.GenerationOutput`).
        tokenizer: decodes the streamed tokens (``None``: no streaming).
        on_piece: called from the worker with each decoded text piece.
        on_done: called from the worker once, after the generation ended (hooks already removed).
    """

    def __init__(
        self,
        target: Callable[[Any, StopFlag], Any],
        tokenizer: Any = None,
        on_piece: Callable[[str], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.stop_flag = StopFlag()
        self.output: Any = None
        self.error: BaseException | None = None
        self._target = target
        self._streamer = _SinkStreamer(tokenizer, on_piece) if tokenizer is not None and on_piece else None
        self._on_done = on_done
        self.thread = threading.Thread(target=self._work, name="cmrm-guard-generation", daemon=True)

    @classmethod
    def iterate(
        cls, target: Callable[[Any, StopFlag], Any], tokenizer: Any
    ) -> tuple[GenerationWorker, Generator[str, None, None]]:
        """A started worker and an iterator of its text pieces.

        Closing the iterator early (or an exception in its consumer) stops the generation and joins
        the worker before it returns. The worker's error or output is on the worker once the
        iterator is exhausted.
        """
        pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
        worker = cls(target, tokenizer, on_piece=pieces.put, on_done=lambda: pieces.put(_DONE)).start()

        def read() -> Generator[str, None, None]:
            try:
                while (piece := pieces.get()) is not _DONE:
                    yield piece
            finally:
                worker.stop()
                worker.join()

        return worker, read()

    def start(self) -> GenerationWorker:
        self.thread.start()
        return self

    def _work(self) -> None:
        try:
            self.output = self._target(self._streamer, self.stop_flag)
        except BaseException as error:  # re-raised by the consumer
            self.error = error
        finally:
            if self._on_done is not None:
                self._on_done()

    def stop(self) -> None:
        """Ask the generation to stop after its current step."""
        self.stop_flag.set()

    def join(self) -> None:
        """Wait for the worker to end (its hooks are then gone), through any ``KeyboardInterrupt``.

        An interrupt stops the generation; the first one is re-raised once the worker ended.
        """
        if self.thread.ident is not None:
            _wait_through_interrupts(self.thread.join, self.stop)

    def result(self) -> Any:
        """The generation's output, or its exception raised (call after the worker ended)."""
        if self.error is not None:
            raise self.error
        return self.output


# ----------------------------------------------------------------------- worker <-> asyncio
def resolve_future(future: asyncio.Future) -> None:
    """Mark ``future`` done (once)."""
    if not future.done():
        future.set_result(None)


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe`` from a worker thread, a no-op once the loop is closed."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(fn, *args)


async def wait_or_stop(worker: GenerationWorker, done: asyncio.Future, *, stop_first: bool = False) -> None:
    """Wait for ``worker`` (``done`` resolves when it ended); if this task is cancelled, stop the
    generation and still wait for its hooks to go."""
    if stop_first:
        worker.stop()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        worker.stop()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            worker.join()  # cancelled twice: block (one decoding step) rather than leak hooks
        raise
