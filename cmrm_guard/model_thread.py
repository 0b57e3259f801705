"""One long-lived thread per model for every hooked call on it.

torch on CPU parallelises with OpenMP, whose thread team belongs to the thread that runs the op.
When two threads of one process both run torch work (the caller and a streaming worker, or asyncio's
executor threads), two teams exist; libgomp stops spinning once its threads outnumber the cores, and
on a 2-core machine generation then runs about 1.7x slower. Running every model call of a model on
one dedicated thread keeps one team (and serialises the calls, which the hooks need anyway).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from torch import nn

T = TypeVar("T")
THREAD_PREFIX = "cmrm-guard-model"

_EXECUTORS: weakref.WeakKeyDictionary[nn.Module, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


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
    """Run ``fn()`` on ``model``'s thread and return its result (or raise its exception).

    If the waiting thread is interrupted (``KeyboardInterrupt``), ``on_interrupt`` is called (e.g.
    to stop a generation) and the call is waited for, so its hooks are gone when this raises.
    """
    if on_model_thread():
        return fn()
    future = _executor(model).submit(fn)
    try:
        return future.result()
    except KeyboardInterrupt:
        if not future.done():
            if on_interrupt is not None:
                on_interrupt()
            wait([future])
        raise
