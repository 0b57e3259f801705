"""langchain-tests' standard suites for ChatSteeredVLM, on a tiny random Qwen2-VL, offline.

Capability flags are set to what ChatSteeredVLM does. Replies come from the real tiny model, except
when tools are offered: a random model cannot pick a tool, so :func:`tests.langchain_rules.tool_user`
scripts the reply tokens (see that module); templating, steering hooks, generation, streaming,
decoding and tool-call parsing all run for real.

Standard tests skipped, and why:

- ``test_image_inputs``, ``test_image_tool_message`` (integration): they download an image with
  httpx; this suite runs offline. Image inputs (standard base64 blocks, data URLs, OpenAI
  ``image_url``, the older ``source_type`` blocks, images in earlier turns and in tool messages)
  are covered by ``tests/test_langchain_chat.py`` and ``tests/test_langchain_messages.py``.
- ``test_json_mode`` (``supports_json_mode=False``): there is no constrained JSON decoding; the
  ``json_mode`` / ``json_schema`` methods only ask for JSON in the prompt and parse it (own test:
  ``test_structured_output_json_schema_method``).
- ``test_image_urls`` path inside ``test_image_inputs`` (``supports_image_urls=False``): remote image
  URLs are refused unless ``allow_remote_images=True`` (own tests: refusal and opt-in).
- ``test_pdf_inputs``, ``test_pdf_tool_message``, ``test_audio_inputs`` (flags ``False``): a VLM
  reads text and images only; such blocks raise ``ConversationError`` (own test).
- ``test_anthropic_inputs`` (``supports_anthropic_inputs=False``): not claimed (Anthropic
  ``thinking`` blocks are not replayed).
- ``test_*_with_model_override`` (``supports_model_override=False``): one ChatSteeredVLM serves one
  loaded model; ``model=`` naming another raises ``ConfigError``.
- ``test_stream_time`` (``enable_vcr_tests=False``): VCR cassettes record HTTP; there is none.
- ``test_init_from_env`` (unit; no ``init_from_env_params``): a local model reads no environment
  variables or API keys.
- ``test_serdes`` (unit): not LangChain-serialisable, the model holds a live torch module.
"""

from __future__ import annotations

import functools

import pytest
import torch
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from cmrm_guard import SteeredVLM
from cmrm_guard.langchain import ChatSteeredVLM
from cmrm_guard.testing.scripted import ScriptedReplies
from tests.conftest import random_vectors, tiny
from tests.langchain_rules import tool_user


@functools.cache
def _steered() -> SteeredVLM:
    model, processor = tiny("qwen2_vl")
    return SteeredVLM(model, processor, vectors=random_vectors(2, 64, 2.0))


class _Flags:
    @property
    def chat_model_class(self) -> type[ChatSteeredVLM]:
        return ChatSteeredVLM

    @property
    def chat_model_params(self) -> dict:
        steered = _steered()
        scripted = ScriptedReplies(steered.processor.tokenizer, tool_user, free_tokens=8)
        return {"steered": steered, "generation_kwargs": {"logits_processor": [scripted]}}

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatSteeredVLMUnit(_Flags, ChatModelUnitTests):
    """Construction, standard params, bind_tools and with_structured_output signatures."""


class TestChatSteeredVLMIntegration(_Flags, ChatModelIntegrationTests):
    """invoke / stream / batch / async / tools / structured output, end to end on the tiny model."""

    @property
    def standard_chat_model_params(self) -> dict:
        return {"max_tokens": 160}  # room for scripted tool calls; free replies end after 8 tokens

    @pytest.fixture(autouse=True)
    def _offline(self, request: pytest.FixtureRequest) -> None:
        if request.node.originalname in _DOWNLOADING:
            pytest.skip("downloads an image (offline suite); see tests/test_langchain_chat.py")


_DOWNLOADING = {"test_image_inputs", "test_image_tool_message"}


torch.set_num_threads(min(2, torch.get_num_threads()))
