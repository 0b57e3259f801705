"""A LangChain v1 agent (``create_agent``) guarded by ``CMRMGuardMiddleware``, offline.

The agent has one tool and is asked two questions: one with a photo (every model call of that run
is CMRM-steered) and one text-only (policy ``"images"``: left exactly as the backbone answers).
Each reply's ``response_metadata`` says what was applied (``cmrm_steering``) and by which guard
(``cmrm_guard``).

It runs on the embedded tiny Qwen2-VL (random weights, built locally, nothing downloaded). A random
model cannot decide to call a tool, so :class:`~cmrm_guard.testing.scripted.ScriptedReplies`
forces the reply tokens a small rule picks (call ``get_weather``; after its result, answer). The
rest is the real path: the middleware, the chat template, the CMRM hooks, tool-call parsing, the
agent loop. With a real model, drop ``generation_kwargs`` and load one with
``ChatSteeredVLM.from_pretrained(model_id, vectors="org/pack")``.

Needs the ``agents`` extra: ``pip install "cmrm-guard[agents]"``.
Run: ``python examples/agent_middleware.py``
"""

from __future__ import annotations

import base64
import io
import json
import re

import torch
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from cmrm_guard import SteeredVLM, count_hooks
from cmrm_guard.langchain import ChatSteeredVLM, CMRMGuardMiddleware
from cmrm_guard.testing import build_tiny_vlm, tiny_image
from cmrm_guard.testing.scripted import ScriptedReplies


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"It is sunny in {city}."


def scripted_agent(prompt: str) -> str | None:
    """Call get_weather for the city in the question; after the tool answered, repeat its answer."""
    response = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", prompt, re.S)
    if response:
        return f"Tool: {response[-1]}"
    city = re.findall(r"weather in (\w+)", prompt)
    call = {"name": "get_weather", "arguments": {"city": city[-1] if city else "Paris"}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def show(title: str, messages: list) -> None:
    print(f"--- {title}")
    for message in messages:
        steering = message.response_metadata.get("cmrm_steering")
        applied = ""
        if steering:
            applied = f"  [steered={steering['applied']}, alpha={steering['alpha']}"
            applied += f", {steering['reason']}]" if steering["reason"] else "]"
        calls = [(c["name"], c["args"]) for c in getattr(message, "tool_calls", None) or []]
        print(f"{message.type:>5}: {message.text!r}" + (f" tool_calls={calls}" if calls else "") + applied)


def main() -> dict:
    model, processor = build_tiny_vlm("qwen2_vl")
    generator = torch.Generator().manual_seed(0)
    vectors = {i: torch.randn(64, generator=generator) for i in range(2)}  # stand-in for a vector pack
    llm = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=vectors),
        max_tokens=80,
        generation_kwargs={"logits_processor": [ScriptedReplies(processor.tokenizer, scripted_agent)]},
    )
    # the one change to a create_agent agent: the middleware (and a ChatSteeredVLM as its model)
    guard = CMRMGuardMiddleware(policy="images", alpha=1.0)
    agent = create_agent(llm, tools=[get_weather], middleware=[guard])

    buffer = io.BytesIO()
    tiny_image(1).save(buffer, format="PNG")
    photo = {
        "type": "image",
        "base64": base64.b64encode(buffer.getvalue()).decode(),
        "mime_type": "image/png",
    }
    with_image = HumanMessage(
        content=[photo, {"type": "text", "text": "Here is my photo. The weather in Paris?"}]
    )
    text_only = HumanMessage("What is the weather in Rome?")

    image_run = agent.invoke({"messages": [with_image]})["messages"]
    show("question with an image: every model call steered", image_run)
    text_run = agent.invoke({"messages": [text_only]})["messages"]
    show("text-only question: left to the backbone (policy 'images')", text_run)
    print("guard on the last reply:", text_run[-1].response_metadata["cmrm_guard"])
    print("hooks left on the model:", count_hooks(model))
    return {"image": image_run, "text": text_run, "hooks": count_hooks(model)}


if __name__ == "__main__":
    main()
