"""Architecture adapters: where the decoder layers are, how to build CMRM's twins, the chat format.

Built-in families register themselves on import; third parties add one with
:func:`register_adapter` in a small file of their own.
"""

from cmrm_guard.adapters import internvl, llava, qwen_vl  # noqa: F401  (registration)
from cmrm_guard.adapters.base import VLMAdapter
from cmrm_guard.adapters.conversation import (
    Conversation,
    corrupted_twin,
    has_image,
    text_only_twin,
)
from cmrm_guard.adapters.generic import GenericAdapter
from cmrm_guard.adapters.registry import (
    get_adapter,
    register_adapter,
    registered_model_types,
    unregister_adapter,
)

__all__ = [
    "Conversation",
    "GenericAdapter",
    "VLMAdapter",
    "corrupted_twin",
    "get_adapter",
    "has_image",
    "register_adapter",
    "registered_model_types",
    "text_only_twin",
    "unregister_adapter",
]
