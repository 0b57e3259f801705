"""LangChain integration: :class:`ChatSteeredVLM`, a chat model with CMRM steering on every call,
and :class:`CMRMGuardMiddleware`, the same protection for a ``create_agent`` agent as one middleware.

``ChatSteeredVLM`` needs ``langchain-core`` (``pip install "cmrm-guard[langchain]"``);
``CMRMGuardMiddleware`` needs ``langchain>=1.0`` (``pip install "cmrm-guard[agents]"``). Both are
imported lazily, so ``import cmrm_guard`` and ``import cmrm_guard.langchain`` never require them.

Example:
    >>> from cmrm_guard.langchain import ChatSteeredVLM, CMRMGuardMiddleware
    >>> llm = ChatSteeredVLM.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", vectors="org/qwen2-vl-2b-cmrm")
    >>> agent = create_agent(llm, tools, middleware=[CMRMGuardMiddleware(policy="images", alpha=1.0)])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ChatSteeredVLM": "cmrm_guard.langchain.chat_models",
    "CMRMGuardMiddleware": "cmrm_guard.langchain.middleware",
    "CONFIGURABLE_KEY": "cmrm_guard.langchain.overrides",
    "ImageLimits": "cmrm_guard.images",
}

__all__ = ["CONFIGURABLE_KEY", "CMRMGuardMiddleware", "ChatSteeredVLM", "ImageLimits"]

if TYPE_CHECKING:
    from cmrm_guard.images import ImageLimits
    from cmrm_guard.langchain.chat_models import ChatSteeredVLM
    from cmrm_guard.langchain.middleware import CMRMGuardMiddleware
    from cmrm_guard.langchain.overrides import CONFIGURABLE_KEY


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmrm_guard.langchain' has no attribute {name!r}")
    try:
        value = getattr(import_module(module), name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("langchain_core", "langgraph"):
            raise ImportError(
                f"cmrm_guard.langchain.{name} needs langchain-core: pip install 'cmrm-guard[langchain]'"
            ) from error
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
