"""The LangChain examples run end to end offline (tiny embedded models)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_invoke_stream_example():
    result = runpy.run_path(str(EXAMPLES / "langchain_invoke_stream.py"), run_name="example")["main"](
        max_tokens=4
    )
    assert result["invoke"] == result["stream"] and result["hooks"] == 0


def test_langgraph_react_agent_example():
    pytest.importorskip("langgraph")
    result = runpy.run_path(str(EXAMPLES / "langgraph_react_agent.py"), run_name="example")["main"]()
    human, call, tool, answer = result["messages"]
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert tool.content == "It is sunny in Paris."
    assert answer.content == "The weather tool says: It is sunny in Paris."
    assert all(m.response_metadata["cmrm_steering"]["applied"] for m in (call, answer))
    assert result["hooks"] == 0
