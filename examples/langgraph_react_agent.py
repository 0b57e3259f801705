"""A LangGraph ReAct agent on ChatSteeredVLM: image question -> tool call -> tool -> answer, offline.

The agent runs end to end on the embedded tiny Qwen2-VL (random weights, built locally). A random
model cannot decide to call a tool, so :class:`~cmrm_guard.testing.scripted.ScriptedReplies`
forces the reply tokens a small rule picks (call ``get_weather``; after its result, answer). The
rest is the real path: the chat template renders the tool schemas, CMRM hooks steer every model
call, the ``<tool_call>`` text is parsed into ``AIMessage.tool_calls``, LangGraph runs the tool.
With a real model, drop ``generation_kwargs`` and load one with ``ChatSteeredVLM.from_pretrained``.

Needs the ``langgraph`` extra: ``pip install "cmrm-guard[langgraph]"``.
Run: ``python examples/langgraph_react_agent.py``
"""

from __future__ import annotations

import base64
import io
import json
import re
import warnings

import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from cmrm_guard import SteeredVLM, count_hooks
from cmrm_guard.langchain import ChatSteeredVLM
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
        return f"The weather tool says: {response[-1]}"
    city = re.findall(r"weather in (\w+)", prompt)
    call = {"name": "get_weather", "arguments": {"city": city[-1] if city else "Paris"}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def main() -> dict:
    from langgraph.prebuilt import create_react_agent

    model, processor = build_tiny_vlm("qwen2_vl")
    generator = torch.Generator().manual_seed(0)
    vectors = {i: torch.randn(64, generator=generator) for i in range(2)}  # stand-in for a vector pack
    llm = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=vectors),
        max_tokens=160,
        generation_kwargs={"logits_processor": [ScriptedReplies(processor.tokenizer, scripted_agent)]},
    )
    with warnings.catch_warnings():  # langgraph 1.x points to langchain.agents.create_agent
        warnings.simplefilter("ignore")
        agent = create_react_agent(llm, [get_weather])

    buffer = io.BytesIO()
    tiny_image(1).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    question = HumanMessage(
        content=[
            {"type": "image", "base64": b64, "mime_type": "image/png"},
            {"type": "text", "text": "I took this photo. What is the weather in Paris?"},
        ]
    )
    # per-run steering for every model call of this run, through the RunnableConfig (a run may ask
    # for stronger steering; the strict default lock refuses weaker)
    state = agent.invoke({"messages": [question]}, config={"configurable": {"cmrm_steering": {"alpha": 1.5}}})
    for message in state["messages"]:
        steering = message.response_metadata.get("cmrm_steering")
        applied = f"  [steering applied={steering['applied']}, alpha={steering['alpha']}]" if steering else ""
        calls = (
            f" tool_calls={[(c['name'], c['args']) for c in message.tool_calls]}"
            if getattr(message, "tool_calls", None)
            else ""
        )
        print(f"{message.type:>5}: {message.text!r}{calls}{applied}")
    print("hooks left on the model:", count_hooks(model))
    return {"messages": state["messages"], "hooks": count_hooks(model)}


if __name__ == "__main__":
    main()
