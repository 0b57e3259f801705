"""A hand-built LangGraph ``StateGraph`` with ChatSteeredVLM as its model node, offline.

Graph: ``START -> model -> (tool calls?) -> tools -> model -> ... -> END``. The only change to a
graph you already have is the model the node calls: a ``ChatSteeredVLM``. Its steering settings for
this graph are bound once (``bind_tools(..., steering={...})``); a run can also set them through
``config={"configurable": {"cmrm_steering": {...}}}``. Each reply's ``response_metadata
["cmrm_steering"]`` says what was applied.

It runs on the embedded tiny Qwen2-VL (random weights, built locally, nothing downloaded), with
:class:`~cmrm_guard.testing.scripted.ScriptedReplies` forcing the replies a small rule picks (a
random model cannot decide to call a tool); the rest is the real path. With a real model, drop
``generation_kwargs`` and use ``ChatSteeredVLM.from_pretrained(model_id, vectors="org/pack")``.

Needs the ``langgraph`` extra: ``pip install "cmrm-guard[langgraph]"``.
Run: ``python examples/langgraph_graph.py``
"""

from __future__ import annotations

import base64
import io
import json
import re

import torch
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

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
        return f"Tool: {response[-1]}"
    city = re.findall(r"weather in (\w+)", prompt)
    call = {"name": "get_weather", "arguments": {"city": city[-1] if city else "Paris"}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def build_graph(llm: ChatSteeredVLM):
    """The graph you would write for any chat model; ``llm`` is the only CMRM-specific part."""
    model = llm.bind_tools([get_weather], steering={"policy": "images", "alpha": 1.0})

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile()


def main() -> dict:
    model, processor = build_tiny_vlm("qwen2_vl")
    generator = torch.Generator().manual_seed(0)
    vectors = {i: torch.randn(64, generator=generator) for i in range(2)}  # stand-in for a vector pack
    llm = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=vectors),
        max_tokens=80,
        generation_kwargs={"logits_processor": [ScriptedReplies(processor.tokenizer, scripted_agent)]},
    )
    app = build_graph(llm)

    buffer = io.BytesIO()
    tiny_image(2).save(buffer, format="PNG")
    photo = {
        "type": "image",
        "base64": base64.b64encode(buffer.getvalue()).decode(),
        "mime_type": "image/png",
    }
    question = HumanMessage(content=[photo, {"type": "text", "text": "Look at this. The weather in Oslo?"}])
    state = app.invoke({"messages": [question]})
    for message in state["messages"]:
        steering = message.response_metadata.get("cmrm_steering")
        applied = f"  [steered={steering['applied']}, alpha={steering['alpha']}]" if steering else ""
        calls = [(c["name"], c["args"]) for c in getattr(message, "tool_calls", None) or []]
        print(f"{message.type:>5}: {message.text!r}" + (f" tool_calls={calls}" if calls else "") + applied)
    print("hooks left on the model:", count_hooks(model))
    return {"messages": state["messages"], "hooks": count_hooks(model)}


if __name__ == "__main__":
    main()
