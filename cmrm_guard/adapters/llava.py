"""LLaVA family: ``llava`` (LLaVA-1.5) and ``llava_next`` (LLaVA-1.6 / NeXT).

Decoder: ``model.language_model.layers`` (``LlavaModel.language_model``). Image placeholder:
``<image>`` expanded by the processor to the image's feature count.
"""

from __future__ import annotations

from cmrm_guard.adapters.base import VLMAdapter
from cmrm_guard.adapters.registry import register_adapter

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
    "{{ ' ' }}{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ ' ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@register_adapter("llava", "llava_next")
class LlavaAdapter(VLMAdapter):
    """LLaVA-1.5 / NeXT (transformers-native ``llava-hf`` checkpoints)."""

    decoder_path = "model.language_model.layers"
    shares_prompt_prefix = True
    fallback_chat_template = LLAVA_CHAT_TEMPLATE
