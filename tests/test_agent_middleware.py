"""CMRMGuardMiddleware in LangChain v1 agents (create_agent) on a tiny real Qwen2-VL.

Replies are scripted (:class:`ScriptedReplies`): the first model call of a run is forced to call
the ``weather`` tool, the answer after the tool result is the model's own (a few free tokens), so
steering shows in the text as well as in ``response_metadata``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("langchain.agents.middleware")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from cmrm_guard import SteeredVLM, SteeringLock, count_hooks  # noqa: E402
from cmrm_guard.errors import (  # noqa: E402
    ConfigError,
    LayerIndexError,
    NotSteerableModelError,
    PackMismatchError,
    SteeringLockedError,
)
from cmrm_guard.langchain import ChatSteeredVLM, CMRMGuardMiddleware  # noqa: E402
from cmrm_guard.testing import tiny_image  # noqa: E402
from cmrm_guard.testing.scripted import ScriptedReplies  # noqa: E402
from cmrm_guard.vectors.pack import PackMeta, VectorPack  # noqa: E402
from tests.conftest import random_vectors, tiny  # noqa: E402

CALL = '<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call>'


@tool
def weather() -> str:
    """Today's weather."""
    return "sunny"


class Rule:
    """Call ``weather`` when tools are offered and no tool answered yet; else answer freely."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str | None:
        self.prompts.append(prompt)
        return CALL if "<tools>" in prompt and "<tool_response>" not in prompt else None


def _llm(vectors=True, **fields) -> tuple[ChatSteeredVLM, Rule]:
    model, processor = tiny("qwen2_vl")
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 1.0) if vectors else None)
    rule = Rule()
    replies = ScriptedReplies(processor.tokenizer, rule, free_tokens=5)
    llm = ChatSteeredVLM(steered=steered, max_tokens=64, generation_kwargs={"logits_processor": [replies]})
    return llm.model_copy(update=fields), rule


def _photo_question(text: str = "What is the weather like here?") -> HumanMessage:
    buffer = io.BytesIO()
    tiny_image(0).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    return HumanMessage(
        content=[{"type": "image", "base64": b64, "mime_type": "image/png"}, {"type": "text", "text": text}]
    )


def _run(agent, question) -> list:
    return agent.invoke({"messages": [question]})["messages"]


def _view(messages: list) -> list:
    """What must match between two runs (tool call ids are random)."""
    return [
        (m.type, m.content, [(c["name"], c["args"]) for c in getattr(m, "tool_calls", None) or []],
         m.response_metadata)
        for m in messages
    ]  # fmt: skip


def test_agent_tool_loop_is_steered_on_image_turns_only():
    llm, rule = _llm()
    guard = CMRMGuardMiddleware(policy="images", alpha=1.0)
    agent = create_agent(llm, tools=[weather], middleware=[guard])

    human, call, result, answer = _run(agent, _photo_question())
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("weather", {})]
    assert result.content == "sunny" and answer.content
    for reply in (call, answer):
        steering = reply.response_metadata["cmrm_steering"]
        assert steering["applied"] is True and steering["alpha"] == 1.0 and steering["policy"] == "images"
        assert reply.response_metadata["cmrm_guard"] == {
            "middleware": "CMRMGuardMiddleware",
            "policy": "images",
            "steering": {"policy": "images", "enabled": True, "alpha": 1.0},
            "pack": None,
            "strict": False,
            "lock": None,
        }

    text_run = _run(agent, HumanMessage("What is the weather like today?"))
    assert [m.type for m in text_run] == ["human", "ai", "tool", "ai"]
    for reply in (text_run[1], text_run[3]):
        steering = reply.response_metadata["cmrm_steering"]
        assert steering["applied"] is False and "no image" in steering["reason"]
        assert reply.response_metadata["cmrm_guard"]["policy"] == "images"
    assert len(rule.prompts) == 4  # two model calls per run, nothing else ran the model
    assert count_hooks(llm.steered.model) == 0
    assert llm.steering is None and llm.steered.config.alpha is None  # the shared model is untouched


def test_policy_text_only_equals_unsteered_and_image_turns_differ():
    llm, _ = _llm()
    agents = {
        name: create_agent(llm, middleware=[guard])  # no tools: one model call per run
        for name, guard in {
            "images": CMRMGuardMiddleware(policy="images"),
            "always": CMRMGuardMiddleware(policy="always"),
            "never": CMRMGuardMiddleware(policy="never"),
            "off": CMRMGuardMiddleware(enabled=False),
        }.items()
    }
    text = {
        name: _run(agent, HumanMessage("What is the weather like today?")) for name, agent in agents.items()
    }
    assert text["images"][-1].content == text["off"][-1].content == text["never"][-1].content
    assert text["always"][-1].content != text["off"][-1].content
    assert text["always"][-1].response_metadata["cmrm_steering"]["applied"] is True
    assert text["never"][-1].response_metadata["cmrm_steering"]["reason"] == "policy 'never'"

    image = {name: _run(agent, _photo_question()) for name, agent in agents.items() if name != "always"}
    assert image["images"][-1].response_metadata["cmrm_steering"]["applied"] is True
    assert image["images"][-1].content != image["off"][-1].content == image["never"][-1].content


def test_async_agent_equals_sync():
    llm, _ = _llm()
    agent = create_agent(llm, tools=[weather], middleware=[CMRMGuardMiddleware(alpha=0.7)])
    question = _photo_question()
    expected = _view(_run(agent, question))

    async def both():
        state = await agent.ainvoke({"messages": [question]})
        last = None
        async for chunk in agent.astream({"messages": [question]}, stream_mode="values"):
            last = chunk
        return state["messages"], last["messages"]

    from_ainvoke, from_astream = asyncio.run(both())
    assert _view(from_ainvoke) == expected and _view(from_astream) == expected
    assert expected[-1][3]["cmrm_steering"]["alpha"] == 0.7
    assert count_hooks(llm.steered.model) == 0


def test_agents_with_different_settings_share_one_model_concurrently():
    llm, _ = _llm()
    other_pack = random_vectors(2, 64, 1.0, seed=7)
    guards = [
        CMRMGuardMiddleware(alpha=1.0),
        CMRMGuardMiddleware(alpha=0.5, pack=other_pack),
        CMRMGuardMiddleware(policy="never"),
    ]
    agents = [create_agent(llm, middleware=[guard]) for guard in guards]  # no tools: one call each
    question = _photo_question("Describe this picture.")
    alone = [_view(_run(agent, question)) for agent in agents]
    answers = [view[-1][1] for view in alone]
    assert len(set(answers)) == 3, answers  # the settings matter for the text
    assert alone[1][-1][3]["cmrm_guard"]["pack"] == "in-memory vectors"

    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(lambda agent: _view(_run(agent, question)), agents * 2))
    assert threaded == alone * 2

    async def gathered():
        states = await asyncio.gather(*(agent.ainvoke({"messages": [question]}) for agent in agents * 2))
        return [_view(state["messages"]) for state in states]

    assert asyncio.run(gathered()) == alone * 2
    assert count_hooks(llm.steered.model) == 0


def test_model_settings_from_other_middleware_are_kept_and_the_guard_wins():
    from langchain.agents.middleware import AgentMiddleware

    class Earlier(AgentMiddleware):
        def wrap_model_call(self, request, handler):
            settings = {**request.model_settings, "steering": {"alpha": 0.1, "layers": [1]}}
            return handler(request.override(model_settings=settings))

    locked, _ = _llm()  # strict by default: its implied lock takes the guard's settings as the deployer's
    with pytest.raises(SteeringLockedError, match="alpha=0.1 is below the deployer's alpha 0.9"):
        _run(create_agent(locked, middleware=[CMRMGuardMiddleware(alpha=0.9), Earlier()]), _photo_question())
    llm, _ = _llm(lock=SteeringLock.unlocked())  # a deployer who lets later middleware decide
    agent = create_agent(llm, middleware=[CMRMGuardMiddleware(alpha=0.9), Earlier()])
    outer = create_agent(llm, middleware=[Earlier(), CMRMGuardMiddleware(alpha=0.9)])
    steering = _run(agent, _photo_question())[-1].response_metadata["cmrm_steering"]
    assert steering["alpha"] == 0.1 and steering["layers"] == [1]  # the inner middleware decides
    steering = _run(outer, _photo_question())[-1].response_metadata["cmrm_steering"]
    assert steering["alpha"] == 0.9 and steering["layers"] == [1]  # the guard's own settings win
    run_config = {"configurable": {"cmrm_steering": {"alpha": 0.2, "layers": [0]}}}
    state = create_agent(llm, middleware=[CMRMGuardMiddleware(alpha=0.9)]).invoke(
        {"messages": [_photo_question()]}, config=run_config
    )
    steering = state["messages"][-1].response_metadata["cmrm_steering"]
    assert steering["alpha"] == 0.9 and steering["layers"] == [0]  # over a run's configurable too


def test_bound_models_are_recognised_and_keep_their_bindings():
    llm, _ = _llm(lock=SteeringLock.unlocked())  # a guard adding nothing hands the model on as it is
    bound = llm.bind_tools([weather]).bind(max_tokens=3)
    assert CMRMGuardMiddleware().check_model(bound) is llm
    guard = CMRMGuardMiddleware(pack=random_vectors(2, 64, seed=3))
    variant = guard.check_model(bound)
    assert variant is not llm and variant.steered.model is llm.steered.model
    assert variant.steered.vectors is not llm.steered.vectors and guard.check_model(llm) is variant
    from cmrm_guard.langchain.middleware import _with_chat_model

    rebound = _with_chat_model(bound, variant)
    assert rebound.kwargs == bound.kwargs and rebound.kwargs["max_tokens"] == 3
    assert rebound.bound is variant and bound.bound is llm


# --------------------------------------------------------------------------- misconfiguration
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "sometimes"}, "policy='sometimes'"),
        ({"alpha": float("nan")}, "alpha=nan"),
        ({"mode": "batch"}, "mode='batch'"),
        ({"layers": [-1]}, "layer indices must be >= 0"),
        ({"on_unsteerable": "ignore"}, "on_unsteerable='ignore'"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CMRMGuardMiddleware(**kwargs)


def _fake_model() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage("unguarded answer")]))


def test_a_model_that_cannot_be_steered_raises_before_it_runs():
    fake = _fake_model()
    guard = CMRMGuardMiddleware()
    agent = create_agent(fake, middleware=[guard])
    with pytest.raises(NotSteerableModelError, match="ChatSteeredVLM.from_pretrained") as caught:
        _run(agent, HumanMessage("hello"))
    assert isinstance(caught.value, TypeError) and "GenericFakeChatModel" in str(caught.value)
    with pytest.raises(NotSteerableModelError):
        asyncio.run(agent.ainvoke({"messages": [HumanMessage("hello")]}))
    with pytest.raises(NotSteerableModelError):
        guard.check_model(fake)  # the same check, at construction time
    assert next(fake.messages).content == "unguarded answer"  # the model never ran


def test_refuse_fails_closed_without_running_the_model():
    fake = _fake_model()
    guard = CMRMGuardMiddleware(on_unsteerable="refuse", refusal_message="Refused.")
    reply = _run(create_agent(fake, middleware=[guard]), HumanMessage("hello"))[-1]
    assert reply.content == "Refused."
    assert reply.response_metadata["finish_reason"] == "steering_unavailable"
    assert reply.response_metadata["cmrm_steering"]["applied"] is False
    assert "ChatSteeredVLM" in reply.response_metadata["cmrm_steering"]["reason"]
    assert reply.response_metadata["cmrm_guard"]["middleware"] == "CMRMGuardMiddleware"
    assert next(fake.messages).content == "unguarded answer"


def test_pack_for_another_model_and_bad_layers_fail_before_any_model_call():
    llm, rule = _llm()
    foreign = VectorPack(
        {0: torch.zeros(32), 1: torch.zeros(32)},
        PackMeta(
            base_model="org/llava-tiny",
            model_type="llava",
            hidden_size=32,
            num_layers=2,
            layer_indices=[0, 1],
        ),
    )
    guard = CMRMGuardMiddleware(pack=foreign)
    with pytest.raises(PackMismatchError, match="'org/llava-tiny' does not fit"):
        guard.check_model(llm)
    with pytest.raises(PackMismatchError):
        _run(create_agent(llm, tools=[weather], middleware=[guard]), _photo_question())
    with pytest.raises(LayerIndexError):
        _run(create_agent(llm, middleware=[CMRMGuardMiddleware(layers=[7])]), _photo_question())
    assert rule.prompts == [] and count_hooks(llm.steered.model) == 0


def test_strict_guard_refuses_image_turns_it_cannot_steer():
    llm, _ = _llm(vectors=False)  # no pack: dataset mode cannot steer
    guard = CMRMGuardMiddleware(
        strict=True, on_unsteerable="refuse", refusal_message="No steering, no answer."
    )
    agent = create_agent(llm, middleware=[guard])
    refused = _run(agent, _photo_question())[-1]
    assert refused.content == "No steering, no answer."
    assert refused.response_metadata["finish_reason"] == "steering_unavailable"
    assert "no valid vector pack" in refused.response_metadata["cmrm_steering"]["reason"]
    assert refused.response_metadata["cmrm_guard"]["policy"] == "images"
    answered = _run(agent, HumanMessage("hello"))[-1]  # nothing to steer: answered as usual
    assert answered.response_metadata["finish_reason"] != "steering_unavailable"
    assert llm.strict is None  # the strict variant is the guard's own copy


def test_importing_the_package_does_not_need_langchain(monkeypatch):
    import cmrm_guard.langchain as package

    monkeypatch.delattr(package, "CMRMGuardMiddleware", raising=False)
    for name in [m for m in sys.modules if m == "langchain" or m.startswith(("langchain.", "cmrm_guard.langchain.middleware"))]:  # fmt: skip
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain", None)  # as if langchain were not installed
    assert package.ChatSteeredVLM is ChatSteeredVLM
    with pytest.raises(ImportError, match=r"cmrm-guard\[agents\]"):
        package.CMRMGuardMiddleware  # noqa: B018


# ------------------------------------------------------------------------------------ locks
@pytest.mark.parametrize(
    ("request_steering", "error", "message"),
    [
        ({"alpha": 0.0}, SteeringLockedError, "alpha=0.0 is below the deployer's alpha 1.0"),
        ({"alpha": -1.0}, ConfigError, "must be >= 0"),
        ({"layers": [0]}, SteeringLockedError, r"leave out required layers \[1\]"),
        ({"application": "every_layer"}, SteeringLockedError, "application='every_layer' differs"),
    ],
)
def test_a_strict_guard_is_not_weakened_by_a_runs_configurable(request_steering, error, message):
    llm, rule = _llm()
    agent = create_agent(llm, middleware=[CMRMGuardMiddleware(strict=True)])
    run = {"configurable": {"cmrm_steering": request_steering}}
    with pytest.raises(error, match=message):
        agent.invoke({"messages": [_photo_question()]}, config=run)
    with pytest.raises(error, match=message):
        asyncio.run(agent.ainvoke({"messages": [_photo_question()]}, config=run))
    assert rule.prompts == [] and count_hooks(llm.steered.model) == 0  # the model never ran
    stronger = {"configurable": {"cmrm_steering": {"alpha": 3.0}}}
    reply = agent.invoke({"messages": [_photo_question()]}, config=stronger)["messages"][-1]
    assert reply.response_metadata["cmrm_steering"]["alpha"] == 3.0
    lock = reply.response_metadata["cmrm_guard"]["lock"]  # the default lock of a strict guard, on record
    assert lock == {
        "min_alpha": None,
        "layers": None,
        "exact_layers": False,
        "allow_disable": False,
        "allow_changes": [],
    }


def test_a_locked_guard_holds_later_middleware_to_its_settings_and_its_own_settings_are_the_deployers():
    from langchain.agents.middleware import AgentMiddleware

    class Weaker(AgentMiddleware):
        def wrap_model_call(self, request, handler):
            settings = {**request.model_settings, "steering": {"alpha": 0.1}}
            return handler(request.override(model_settings=settings))

    llm, rule = _llm()
    guard = CMRMGuardMiddleware(alpha=0.9, lock=SteeringLock(allow_changes={"step_scope"}))
    with pytest.raises(SteeringLockedError, match="alpha=0.1 is below the deployer's alpha 0.9"):
        _run(create_agent(llm, middleware=[guard, Weaker()]), _photo_question())
    assert rule.prompts == []
    # the guard's own settings are the deployer's: a strict guard below the pack's alpha, or a
    # guard that turns steering off, is not refused by its own lock
    low = _run(
        create_agent(_llm()[0], middleware=[CMRMGuardMiddleware(alpha=0.5, strict=True)]), _photo_question()
    )
    assert low[-1].response_metadata["cmrm_steering"]["alpha"] == 0.5
    off = _run(
        create_agent(_llm()[0], middleware=[CMRMGuardMiddleware(enabled=False, strict=True)]),
        _photo_question(),
    )
    assert off[-1].response_metadata["cmrm_steering"]["applied"] is False
    # a lock given to the model still holds under a guard: it refuses a guard that asks for less
    # than the model's settings (the lock a strict model only implies takes the guard's settings)
    strict_llm, _ = _llm(lock=SteeringLock())
    with pytest.raises(SteeringLockedError, match="alpha=0.5 is below the deployer's alpha 1.0"):
        CMRMGuardMiddleware(alpha=0.5, pack=random_vectors(2, 64, seed=3)).check_model(strict_llm)
    with pytest.raises(SteeringLockedError, match="alpha=0.5 is below the deployer's alpha 1.0"):
        _run(create_agent(strict_llm, middleware=[CMRMGuardMiddleware(alpha=0.5)]), _photo_question())
    with pytest.raises(ConfigError, match="lock must be a SteeringLock"):
        CMRMGuardMiddleware(lock={"min_alpha": 1.0})
