"""Fallback adapter for VLMs with no registered adapter.

It never guesses between layer stacks: it takes ``model.get_decoder().layers`` and accepts it only
when the base class's checks pass (layer count equals the text config's ``num_hidden_layers``, not
inside a vision module). Otherwise the error names ``decoder_path=`` and ``register_adapter``.
"""

from __future__ import annotations

from cmrm_guard.adapters.base import VLMAdapter


class GenericAdapter(VLMAdapter):
    """Adapter used for any ``model_type`` without a registered one."""
