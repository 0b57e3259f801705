"""The scripted "tool user" rule of the standard tests (see ``cmrm_guard.testing.scripted``).

:func:`tool_user`: when tools are offered (Hermes ``<tools>`` block) and the last turn is a user
question, it calls the tool the prompt forces (``Call the function X now.``) or the first tool named
in the question, else the first tool, filling integer arguments with the numbers of the question in
order and string arguments with its first quoted text (else its last word); after a
``<tool_response>`` it answers in text. Qwen chat format.
"""

from __future__ import annotations

import json
import re
from typing import Any


def _offered_tools(prompt: str) -> list[dict[str, Any]]:
    block = re.search(r"<tools>\n(.*?)\n</tools>", prompt, re.S)
    if not block:
        return []
    return [json.loads(line)["function"] for line in block.group(1).splitlines() if line.strip()]


def _value(schema: dict[str, Any], numbers: list[int], text: str) -> Any:
    kind = schema.get("type")
    if kind is None and "anyOf" in schema:
        kind = next((s.get("type") for s in schema["anyOf"] if s.get("type") != "null"), "string")
    if kind in ("integer", "number"):
        return numbers.pop(0) if numbers else 0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    quoted = re.search(r"'([^']+)'|\"([^\"]+)\"", text)
    if quoted:
        return quoted.group(1) or quoted.group(2)
    words = re.findall(r"\w+", text)
    return words[-1] if words else "x"


def tool_user(prompt: str) -> str | None:
    """The rule of the standard tests (Qwen chat format)."""
    tools = _offered_tools(prompt)
    if not tools:
        return None
    turns = prompt.split("<|im_start|>")
    last = turns[-2] if len(turns) >= 2 else ""
    if last.startswith("user\n<tool_response>"):
        result = last.split("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0]
        return f"The tool returned {result}."
    question = last.removeprefix("user\n").removesuffix("<|im_end|>\n")
    forced = re.search(r"Call the function (\S+) now\.", prompt)
    names = [tool["name"] for tool in tools]
    name = forced.group(1) if forced else next((n for n in names if n in question), names[0])
    tool = tools[names.index(name)]
    numbers = [int(n) for n in re.findall(r"-?\d+", question)]
    properties = (tool.get("parameters") or {}).get("properties") or {}
    arguments = {key: _value(schema, numbers, question) for key, schema in properties.items()}
    return (
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )
