"""cmrm-guard: Cross-Modality Representation Manipulation (CMRM) for open vision-language models.

Public API (imported lazily, so ``import cmrm_guard`` stays light):

- :class:`SteeredVLM`: wrap a transformers VLM (``SteeredVLM.from_pretrained(model_id, vectors=...)``).
- :class:`SteeringConfig`, :class:`CalibrationConfig`: typed settings; :class:`SteeringLock`: what a
  request may change in them.
- :func:`calibrate`: dataset-level shift vectors from calibration samples -> :class:`VectorPack`.
- :class:`VectorPack`: shift vectors + metadata, saved as safetensors + JSON, pushed to the Hub;
  ``VectorsLike``: what ``vectors=`` accepts (a pack, a pack folder or Hub id, a dict or a tensor).
- :mod:`cmrm_guard.adapters`: the architecture registry (``register_adapter``, ``get_adapter``).
- :class:`ChatSteeredVLM`: the LangChain chat model (``cmrm_guard.langchain``; needs langchain-core).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
"""The version of this cmrm-guard (the wheel's version is read from this line)."""


def package_version() -> str:
    """This cmrm-guard's version: what packs record, the CLI prints and Hub requests send.

    The one place a version is read (``__version__`` above, which the wheel's metadata copies), so
    a source checkout on ``PYTHONPATH`` never reports the version of another installed copy.
    """
    return __version__


_EXPORTS = {
    "SteeredVLM": "cmrm_guard.steered",
    "GenerationOutput": "cmrm_guard.outputs",
    "AppliedSteering": "cmrm_guard.outputs",
    "SteeringConfig": "cmrm_guard.config",
    "CalibrationConfig": "cmrm_guard.config",
    "SteeringLock": "cmrm_guard.config",
    "calibrate": "cmrm_guard.vectors.calibrate",
    "VectorPack": "cmrm_guard.vectors.pack",
    "PackMeta": "cmrm_guard.vectors.pack",
    "VectorsLike": "cmrm_guard.vectors.inputs",
    "count_hooks": "cmrm_guard.hooks",
    "CMRMWarning": "cmrm_guard.errors",
    "ChatSteeredVLM": "cmrm_guard.langchain",  # needs langchain-core (the `langchain` extra)
}

__all__ = [
    "AppliedSteering",
    "CMRMWarning",
    "ChatSteeredVLM",
    "CalibrationConfig",
    "GenerationOutput",
    "PackMeta",
    "SteeredVLM",
    "SteeringConfig",
    "SteeringLock",
    "VectorPack",
    "VectorsLike",
    "__version__",
    "calibrate",
    "count_hooks",
    "package_version",
]

if TYPE_CHECKING:
    from cmrm_guard.config import CalibrationConfig, SteeringConfig, SteeringLock
    from cmrm_guard.errors import CMRMWarning
    from cmrm_guard.hooks import count_hooks
    from cmrm_guard.langchain import ChatSteeredVLM
    from cmrm_guard.outputs import AppliedSteering, GenerationOutput
    from cmrm_guard.steered import SteeredVLM
    from cmrm_guard.vectors.calibrate import calibrate
    from cmrm_guard.vectors.inputs import VectorsLike
    from cmrm_guard.vectors.pack import PackMeta, VectorPack


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmrm_guard' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
