"""LangChain messages -> a cmrm-guard conversation (the Hugging Face chat format).

Content is read through ``message.content_blocks``: langchain-core's own parser, which turns
strings, standard blocks, OpenAI ``image_url`` / data URLs, the older ``source_type`` blocks and
Anthropic blocks into standard blocks. Roles map to the model's chat template as:

============================  ======================================================================
LangChain                     conversation message
============================  ======================================================================
``SystemMessage``             ``{"role": "system", "content": [...]}``
``HumanMessage``              ``{"role": "user", "content": [text / image items]}``
``AIMessage``                 ``{"role": "assistant", "content": [...], "tool_calls": [...]}``
``ToolMessage``               ``{"role": "tool", "content": [...], "tool_call_id": ..., "name": ...}``
``ChatMessage(role=r)``       ``{"role": r, ...}``
============================  ======================================================================

When the chat template ignores ``tools`` (``tools_as_text=True``), tool calls are written into the
assistant text as ``<tool_call>`` blocks and tool results become user turns wrapped in
``<tool_response>`` tags, the Hermes / Qwen2.5 convention the instructions of
:func:`cmrm_guard.langchain.tools.tool_instructions` describe. Consecutive messages of one role are
merged (several chat templates refuse two user turns in a row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCallChunk

from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.errors import ConversationError, ImageInputError
from cmrm_guard.images import ImageBudget, ImageLimits, load_image_block
from cmrm_guard.langchain.tools import format_tool_call

__all__ = ["add_system_text", "content_items", "to_conversation"]

_SKIPPED_BLOCKS = frozenset({"reasoning", "tool_call", "tool_call_chunk", "invalid_tool_call"})


def content_items(
    message: BaseMessage, limits: ImageLimits, budget: ImageBudget | None = None
) -> list[dict[str, Any]]:
    """The text and image items of one message (images decoded under ``limits`` and ``budget``).

    Raises:
        ConversationError: a block type the model cannot read (audio, video, files), naming it.
        ImageInputError: an image in a ``SystemMessage`` (chat templates do not show it).
    """
    budget = budget if budget is not None else ImageBudget(limits)
    items: list[dict[str, Any]] = []
    for standard_block in message.content_blocks:
        block: Mapping[str, Any] = standard_block  # a union of TypedDicts, read as a mapping
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                items.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            if isinstance(message, SystemMessage) or _role(message) == "system":
                raise ImageInputError(
                    f"{type(message).__name__} holds an image: chat templates do not show images in "
                    "system messages (LLaVA's drops them); send it in a HumanMessage"
                )
            items.append({"type": "image", "image": load_image_block(block, limits, budget)})
        elif kind == "text-plain" and block.get("text"):
            items.append({"type": "text", "text": block["text"]})
        elif kind in _SKIPPED_BLOCKS or (kind == "non_standard" and isinstance(message, AIMessage)):
            continue  # tool calls travel in AIMessage.tool_calls; reasoning is not replayed
        else:
            raise ConversationError(
                f"{type(message).__name__} holds a {kind!r} content block; this model reads text "
                "and images only"
            )
    return items


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage | FunctionMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    raise ConversationError(f"unsupported message type {type(message).__name__}")


def _convert(
    message: BaseMessage, limits: ImageLimits, budget: ImageBudget, tools_as_text: bool
) -> dict[str, Any]:
    role = _role(message)
    items = content_items(message, limits, budget)
    if role == "assistant":
        calls = getattr(message, "tool_calls", None) or []
        if tools_as_text:
            written = "\n".join(format_tool_call(c["name"], c.get("args") or {}) for c in calls)
            if written:
                items.append({"type": "text", "text": ("\n" if items else "") + written})
            return {"role": "assistant", "content": items}
        converted: dict[str, Any] = {"role": "assistant", "content": items}
        if calls:
            converted["tool_calls"] = [
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("args") or {}},
                }
                for call in calls
            ]
        return converted
    if role == "tool":
        if tools_as_text:
            wrapped = [
                {"type": "text", "text": "<tool_response>\n"},
                *items,
                {"type": "text", "text": "\n</tool_response>"},
            ]
            return {"role": "user", "content": wrapped}
        converted = {"role": "tool", "content": items}
        call_id = getattr(message, "tool_call_id", None)
        if call_id is not None:
            converted["tool_call_id"] = call_id
        if message.name:
            converted["name"] = message.name
        return converted
    return {"role": role, "content": items}


def _merge_into(previous: dict[str, Any], message: dict[str, Any]) -> None:
    if previous["content"] and message["content"]:
        previous["content"].append({"type": "text", "text": "\n\n"})
    previous["content"].extend(message["content"])
    if message.get("tool_calls"):
        previous.setdefault("tool_calls", []).extend(message["tool_calls"])


def to_conversation(
    messages: Sequence[BaseMessage],
    limits: ImageLimits | None = None,
    *,
    tools_as_text: bool = False,
) -> Conversation:
    """Convert LangChain messages into a conversation for :class:`~cmrm_guard.SteeredVLM`.

    Args:
        messages: the chat history, oldest first; images may be in any turn.
        limits: image source permissions and size limits (default :class:`ImageLimits()`: inline
            data only); the images of all messages share one request budget (``max_images``,
            ``max_total_pixels``).
        tools_as_text: write tool calls and tool results as text (for templates without tool support).

    Raises:
        ConversationError (and its image subclasses): an unreadable message or image.
    """
    limits = limits or ImageLimits()
    budget = ImageBudget(limits)
    conversation: Conversation = []
    for message in messages:
        converted = _convert(message, limits, budget, tools_as_text)
        previous = conversation[-1] if conversation else None
        if previous is not None and previous["role"] == converted["role"] != "tool":
            _merge_into(previous, converted)
        else:
            conversation.append(converted)
    if not conversation:
        raise ConversationError("no messages to answer: got an empty list")
    return conversation


def add_system_text(conversation: Conversation, text: str) -> Conversation:
    """Copy of ``conversation`` with ``text`` appended to its leading system message (or a new one)."""
    if conversation and conversation[0]["role"] == "system":
        first = dict(conversation[0])
        content = list(first["content"])
        if content:
            content.append({"type": "text", "text": "\n\n"})
        content.append({"type": "text", "text": text})
        first["content"] = content
        return [first, *conversation[1:]]
    return [{"role": "system", "content": [{"type": "text", "text": text}]}, *conversation]


# The two builders below carry the only `type: ignore`s of the LangChain integration: recent
# langchain-core (Python 3.11+ only) imports NotRequired from `typing`, which mypy checking for
# Python 3.10 does not honour, so it reads the optional keys of these TypedDicts as required.


def usage_metadata(input_tokens: int, output_tokens: int) -> UsageMetadata:
    """LangChain's token usage record of one reply (``total_tokens`` is their sum)."""
    # optional *_token_details read as required
    return UsageMetadata(  # type: ignore[typeddict-item]
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )


def tool_call_chunk(name: str | None, args: str | None, id: str | None, index: int | None) -> ToolCallChunk:
    """One streamed tool call: ``args`` is its arguments as JSON text."""
    # optional "type" read as required
    return ToolCallChunk(name=name, args=args, id=id, index=index)  # type: ignore[typeddict-item]
