"""The agent examples run end to end offline (tiny embedded Qwen2-VL, scripted tool calls)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _calls(message) -> list:
    return [(c["name"], c["args"]) for c in message.tool_calls]


def test_agent_middleware_example():
    pytest.importorskip("langchain.agents.middleware")
    result = runpy.run_path(str(EXAMPLES / "agent_middleware.py"), run_name="example")["main"]()
    for run, city, steered in ((result["image"], "Paris", True), (result["text"], "Rome", False)):
        human, call, tool, answer = run
        assert _calls(call) == [("get_weather", {"city": city})]
        assert tool.content == f"It is sunny in {city}."
        assert answer.content == f"Tool: It is sunny in {city}."
        for reply in (call, answer):
            assert reply.response_metadata["cmrm_steering"]["applied"] is steered
            assert reply.response_metadata["cmrm_guard"]["steering"]["alpha"] == 1.0
    assert result["hooks"] == 0


def test_langgraph_graph_example():
    pytest.importorskip("langgraph")
    result = runpy.run_path(str(EXAMPLES / "langgraph_graph.py"), run_name="example")["main"]()
    human, call, tool, answer = result["messages"]
    assert _calls(call) == [("get_weather", {"city": "Oslo"})]
    assert answer.content == "Tool: It is sunny in Oslo."
    for reply in (call, answer):
        steering = reply.response_metadata["cmrm_steering"]
        assert steering["applied"] is True and steering["alpha"] == 1.0
    assert result["hooks"] == 0
