"""Tool calls in generated text: the Hermes / Qwen format, parsed into LangChain tool calls.

Qwen-family chat templates (and the tiny Qwen template of :mod:`cmrm_guard.testing`) ask the model to
answer a tool call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. This module:

- :func:`tool_instructions` writes the same instructions as text, for chat templates that ignore
  ``tools`` (we then put them in the system message ourselves);
- :func:`parse_reply` splits a finished reply into content, ``tool_calls`` and
  ``invalid_tool_calls``; a reply that is only a bare JSON object ``{"name": <bound tool>,
  "arguments": {...}}`` (optionally in a ```json fence) is read as a tool call too;
- :func:`visible_prefix` tells a stream how much of a partial reply is surely content, so streamed
  text never shows the tool-call markup and always agrees with the final parse.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmrm_guard.errors import ConfigError

__all__ = [
    "OPEN_TAG",
    "ParsedReply",
    "json_instruction",
    "parse_reply",
    "resolve_tool_choice",
    "tool_instructions",
    "visible_prefix",
]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.S)
MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays read in a tool call; deeper ones are invalid tool calls."""


@dataclass
class ParsedReply:
    """A reply split into its parts (``tool_calls`` / ``invalid_tool_calls`` as LangChain dicts)."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)


def tool_instructions(tools: Sequence[Mapping[str, Any]]) -> str:
    """Hermes-style instructions listing ``tools`` (OpenAI tool dicts), as Qwen2.5 renders them."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One tool call written the way the model is asked to write it."""
    payload = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{payload}\n{CLOSE_TAG}"


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def json_depth(text: str) -> int:
    """Deepest nesting of ``{`` / ``[`` in JSON text, outside strings (no parsing, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def _loads(text: str) -> tuple[Any, str]:
    """(value, error) of JSON text nested at most :data:`MAX_JSON_DEPTH` deep."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        return None, f"JSON is nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}"
    try:
        return json.loads(text), ""
    except (json.JSONDecodeError, RecursionError) as error:
        return None, f"not valid JSON: {error}"


def _read_call(body: str) -> tuple[dict[str, Any] | None, str | None, str]:
    """(tool call, name if known, error); the call is None when the body is not a valid call."""
    value, error = _loads(body)
    if error:
        return None, None, f"tool call is {error}" if error.startswith("not") else f"tool call {error}"
    if not isinstance(value, dict):
        return None, None, f"tool call must be a JSON object, got {type(value).__name__}"
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None, None, "tool call has no 'name' string"
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
        arguments, error = _loads(arguments) if arguments.strip() else ({}, "")
        if error:
            return None, name, f"arguments of {name!r}: {error}"
    if not isinstance(arguments, dict):
        return None, name, f"arguments of {name!r} must be a JSON object, got {type(arguments).__name__}"
    return {"name": name, "args": arguments, "id": _new_id(), "type": "tool_call"}, name, ""


def _invalid(body: str, name: str | None, error: str) -> dict[str, Any]:
    return {"name": name, "args": body, "id": _new_id(), "error": error, "type": "invalid_tool_call"}


def parse_reply(text: str, tool_names: Sequence[str]) -> ParsedReply:
    """Split a reply into content and tool calls.

    Args:
        text: the generated text (after stop sequences were applied).
        tool_names: names of the bound tools (a bare JSON object is a tool call only if it names one).

    Returns:
        content (stripped, markup removed), valid ``tool_calls`` and ``invalid_tool_calls``
        (malformed JSON, missing name, unterminated block).
    """
    reply = ParsedReply(content="")
    if OPEN_TAG in text:
        for match in _BLOCK.finditer(text):
            body = match.group(1).strip()
            if not match.group(0).endswith(CLOSE_TAG):
                reply.invalid_tool_calls.append(_invalid(body, None, "unterminated <tool_call> block"))
                continue
            call, name, error = _read_call(body)
            if call is None:
                reply.invalid_tool_calls.append(_invalid(body, name, error))
            else:
                reply.tool_calls.append(call)
        reply.content = _BLOCK.sub("", text).strip()
        return reply
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    candidate = fenced.group(1) if fenced else stripped
    if tool_names and candidate.startswith("{"):
        call, name, _ = _read_call(candidate)
        if call is not None and name in tool_names:
            reply.tool_calls.append(call)
            return reply
    reply.content = stripped
    return reply


def visible_prefix(text: str, *, tools: bool) -> str:
    """The part of a partial reply that is surely content and can be streamed now.

    Without tools, all of it. With tools: nothing while the reply may be a bare JSON tool call
    (it starts with ``{`` or a code fence), otherwise up to the first ``<tool_call>`` (or a partial
    one at the end), leading and trailing whitespace held back, as :func:`parse_reply` strips it.
    """
    if not tools:
        return text
    body = text.lstrip()
    if not body or body.startswith(("{", "`")):
        return ""
    cut = body.find(OPEN_TAG)
    if cut < 0:
        cut = len(body)
        for size in range(min(len(OPEN_TAG) - 1, len(body)), 0, -1):
            if body.endswith(OPEN_TAG[:size]):
                cut = len(body) - size
                break
    return body[:cut].rstrip()


def resolve_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(forced tool name, tools to offer) for a ``tool_choice`` value.

    Raises:
        ConfigError: a name that is not a bound tool, or an unknown choice.
    """
    names = [t["function"]["name"] for t in tools]
    if choice is None or choice is True or choice in ("auto", "any", "required"):
        return None, tools
    if choice is False or choice == "none":
        return None, []
    name = choice
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
    if not isinstance(name, str) or name not in names:
        raise ConfigError(
            f"tool_choice={choice!r}: expected 'auto', 'none', 'any', 'required' or one of the bound "
            f"tools {names}"
        )
    return name, tools


def json_instruction(response_format: Any) -> str:
    """The system instruction for a ``response_format`` (JSON object, optionally with a schema)."""
    schema = response_format.get("schema") if isinstance(response_format, Mapping) else None
    if schema:
        return (
            "Respond with only a JSON object that matches this JSON schema, and nothing else:\n"
            + json.dumps(schema, ensure_ascii=False)
        )
    return "Respond with only a JSON object, and nothing else."
