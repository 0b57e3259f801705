"""Adapter registry keyed by ``config.model_type``.

A family file registers itself with ``@register_adapter("llava", "llava_next")``; importing
:mod:`cmrm_guard.adapters` imports the built-in families. A duplicate registration is an error
unless ``replace=True`` is passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from cmrm_guard.adapters.base import VLMAdapter, unwrap_model
from cmrm_guard.errors import AdapterRegistrationError

AdapterT = TypeVar("AdapterT", bound=type[VLMAdapter])

_ADAPTERS: dict[str, type[VLMAdapter]] = {}


def register_adapter(*model_types: str, replace: bool = False) -> Callable[[AdapterT], AdapterT]:
    """Class decorator registering a :class:`VLMAdapter` for one or more ``model_type`` values.

    Example:
        >>> @register_adapter("my_vlm")
        ... class MyVLMAdapter(VLMAdapter):
        ...     decoder_path = "model.text_model.layers"

    Raises:
        AdapterRegistrationError: when no model type is given, or one is taken and not ``replace``.
    """
    if not model_types or not all(isinstance(t, str) and t for t in model_types):
        raise AdapterRegistrationError(
            f"register_adapter needs one or more non-empty model_type strings, got {model_types!r}"
        )

    def decorate(cls: AdapterT) -> AdapterT:
        if not (isinstance(cls, type) and issubclass(cls, VLMAdapter)):
            raise AdapterRegistrationError(f"{cls!r} is not a VLMAdapter subclass")
        for model_type in model_types:
            taken = _ADAPTERS.get(model_type)
            if taken is not None and taken is not cls and not replace:
                raise AdapterRegistrationError(
                    f"model_type {model_type!r} already has adapter {taken.__name__}; pass "
                    "replace=True to override it"
                )
        for model_type in model_types:
            _ADAPTERS[model_type] = cls
        cls.model_types = tuple(dict.fromkeys((*cls.model_types, *model_types)))
        return cls

    return decorate


def unregister_adapter(model_type: str) -> None:
    """Remove the adapter registered for ``model_type`` (no error if none is)."""
    _ADAPTERS.pop(model_type, None)


def registered_model_types() -> tuple[str, ...]:
    """Model types with a registered adapter, sorted."""
    return tuple(sorted(_ADAPTERS))


def get_adapter(model_or_type: nn.Module | str, *, decoder_path: str | None = None) -> VLMAdapter:
    """The adapter for a model (or a ``model_type`` string).

    Models whose ``model_type`` has no registered adapter get :class:`GenericAdapter`, which
    accepts the model only if it can prove it found the language decoder.
    """
    from cmrm_guard.adapters.generic import GenericAdapter

    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(unwrap_model(model_or_type), "config", None), "model_type", "")
    cls = _ADAPTERS.get(model_type, GenericAdapter)
    return cls(decoder_path=decoder_path)
