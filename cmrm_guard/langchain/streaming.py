"""Streaming helpers: what part of a partial reply may be shown, and the worker <-> asyncio bridge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from cmrm_guard.langchain.generation import GenerationRun, cut_at_stop, stop_hold
from cmrm_guard.langchain.tools import visible_prefix

__all__ = ["StreamGate", "call_soon", "resolve_future", "text_chunk", "wait_or_stop"]


class StreamGate:
    """What of the streamed text may be shown now: held back before stop strings and tool calls."""

    def __init__(self, stops: list[str], tools: bool) -> None:
        self.stops = stops
        self.tools = tools
        self.text = ""
        self.emitted = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
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


def text_chunk(text: str) -> ChatGenerationChunk:
    """A content chunk."""
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def resolve_future(future: asyncio.Future) -> None:
    """Mark ``future`` done (once)."""
    if not future.done():
        future.set_result(None)


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe`` from a worker thread, a no-op once the loop is closed."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(fn, *args)


async def wait_or_stop(run: GenerationRun, done: asyncio.Future, *, stop_first: bool = False) -> None:
    """Wait for the worker; if this task is cancelled, stop generation and wait for the hooks to go."""
    if stop_first:
        run.stop()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        run.stop()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            run.thread.join()  # cancelled twice: block (one decoding step) rather than leak hooks
        raise
