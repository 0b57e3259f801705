"""Per-call steering overrides: the ``steering=`` argument and ``configurable["cmrm_steering"]``.

A call's steering is, from weakest to strongest: ``SteeredVLM.config``, ``SteeredVLM.steering()``
blocks around the call, the chat model's ``steering`` field, ``RunnableConfig(configurable=
{"cmrm_steering": {...}})``, then the call's ``steering={...}`` / shorthand ``alpha=``... arguments
(``bind(...)`` arguments count as call arguments). This is the path a ``create_agent`` middleware uses.
A ``SteeringConfig`` contributes only the fields that were set in it. Every one of these is a
request-level setting that a :class:`~cmrm_guard.SteeringLock` (``SteeredVLM(lock=...)``,
``ChatSteeredVLM(lock=...)``, ``CMRMGuardMiddleware(lock=...)``, or the default lock of a strict
chat model or guard) holds to what the deployer allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config

from cmrm_guard.config import SteeringConfig
from cmrm_guard.errors import ConfigError

__all__ = ["CONFIGURABLE_KEY", "STEERING_FIELDS", "steering_dict", "with_configurable"]

#: ``RunnableConfig(configurable={CONFIGURABLE_KEY: {...}})`` carries per-run steering settings.
CONFIGURABLE_KEY = "cmrm_steering"
#: Names a call may pass directly as shorthand (``invoke(msgs, alpha=0.5)``).
STEERING_FIELDS = frozenset(SteeringConfig.model_fields)


def steering_dict(value: Any, where: str) -> dict[str, Any]:
    """``value`` (a SteeringConfig, a dict of its fields or None) as a checked dict of changes."""
    if value is None:
        return {}
    if isinstance(value, SteeringConfig):
        return value.model_dump(exclude_unset=True)  # only what was set, as SteeredVLM merges
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - STEERING_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown steering setting(s) {unknown}; valid: {', '.join(sorted(STEERING_FIELDS))}"
            )
        return dict(value)
    raise ConfigError(f"{where} must be a SteeringConfig or a dict of its fields, got {type(value).__name__}")


def with_configurable(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move ``configurable["cmrm_steering"]`` into the call's ``steering`` (call kwargs win)."""
    configurable = ensure_config(config).get("configurable") or {}
    from_config = configurable.get(CONFIGURABLE_KEY)
    if from_config is None:
        return kwargs
    merged = {**steering_dict(from_config, f"configurable[{CONFIGURABLE_KEY!r}]")}
    merged.update(steering_dict(kwargs.get("steering"), "steering"))
    return {**kwargs, "steering": merged}
