"""ChatSteeredVLM on tiny real VLMs: images, streaming, async, concurrency, overrides, strict, tools."""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from cmrm_guard import SteeredVLM, SteeringConfig, SteeringLock, count_hooks
from cmrm_guard.errors import (
    CMRMWarning,
    ConfigError,
    RemoteImageRefusedError,
    SteeringLockedError,
    SteeringUnavailableError,
)
from cmrm_guard.langchain import ChatSteeredVLM
from cmrm_guard.testing import tiny_image
from cmrm_guard.testing.scripted import ScriptedReplies, constant
from tests.conftest import image_chat, random_vectors, tiny


def _b64(seed: int = 0) -> str:
    buffer = io.BytesIO()
    tiny_image(seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image_message(text: str = "what is in this picture?", seed: int = 0) -> HumanMessage:
    return HumanMessage(
        content=[
            {"type": "image", "base64": _b64(seed), "mime_type": "image/png"},
            {"type": "text", "text": text},
        ]
    )


def _llm(model_type: str = "llava", **fields) -> ChatSteeredVLM:
    model, processor = tiny(model_type)
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    return ChatSteeredVLM(steered=steered, **{"max_tokens": 6, **fields})


def _scripted(llm: ChatSteeredVLM, reply: str) -> ChatSteeredVLM:
    tokenizer = llm.steered.processor.tokenizer
    return llm.model_copy(
        update={"generation_kwargs": {"logits_processor": [ScriptedReplies(tokenizer, constant(reply))]}}
    )


def test_invoke_answers_like_steered_vlm_and_reports_steering_and_usage():
    llm = _llm()
    message = llm.invoke([_image_message()])
    direct = llm.steered.generate([image_chat()], max_new_tokens=6, do_sample=False)
    assert message.content == direct.texts[0]
    steering = message.response_metadata["cmrm_steering"]
    assert steering == direct.steering.as_dict() and steering["applied"] is True
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    usage = message.usage_metadata
    assert (
        usage["input_tokens"] == direct.prompt_length and usage["output_tokens"] == direct.new_token_counts[0]
    )
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    text_only = llm.invoke("hello").response_metadata["cmrm_steering"]
    assert text_only["applied"] is False and "no image" in text_only["reason"]
    assert count_hooks(llm.steered.model) == 0


def test_stream_equals_invoke_and_async_equals_sync():
    llm = _llm("qwen2_vl")
    for messages in ([_image_message()], [SystemMessage("be brief"), HumanMessage("hello")]):
        expected = llm.invoke(messages)
        chunks = list(llm.stream(messages))
        full = sum(chunks[1:], chunks[0])
        assert full.content == expected.content and len(chunks) > 2
        assert full.response_metadata["cmrm_steering"] == expected.response_metadata["cmrm_steering"]
        assert full.usage_metadata == expected.usage_metadata
        assert asyncio.run(llm.ainvoke(messages)).content == expected.content

        async def collect(messages=messages):
            return "".join([chunk.content async for chunk in llm.astream(messages)])

        assert asyncio.run(collect()) == expected.content


def test_each_token_reaches_callbacks_once():
    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    llm, handler = _llm(), Tokens()
    chunks = [c.content for c in llm.stream([_image_message()], config={"callbacks": [handler]})]
    assert handler.tokens == chunks


def test_abatch_and_threads_with_mixed_settings_equal_sequential_calls():
    llm = _llm(temperature=0.9, seed=7, lock=SteeringLock.unlocked())  # requests may change anything
    requests = [
        ([_image_message(seed=1)], {"steering": {"alpha": 0.5}}),
        ([_image_message(seed=1)], {"steering": {"enabled": False}}),
        ([_image_message(seed=2)], {"alpha": 2.0, "seed": 3}),
        ([_image_message(seed=2)], {}),
        (["hello"], {"steering": {"policy": "always"}}),
    ]
    sequential = [llm.invoke(m, **kw) for m, kw in requests]
    assert len({m.content for m in sequential}) > 1
    bound = [llm.bind(**kw) for _, kw in requests]

    async def together():
        return await asyncio.gather(*(b.ainvoke(m) for b, (m, _) in zip(bound, requests, strict=True)))

    for results in (
        asyncio.run(together()),
        list(ThreadPoolExecutor(4).map(lambda i: bound[i].invoke(requests[i][0]), range(len(requests)))),
    ):
        assert [r.content for r in results] == [s.content for s in sequential]
        assert [r.response_metadata["cmrm_steering"] for r in results] == [
            s.response_metadata["cmrm_steering"] for s in sequential
        ]
    assert sequential[0].response_metadata["cmrm_steering"]["alpha"] == 0.5
    assert sequential[1].response_metadata["cmrm_steering"]["applied"] is False
    assert sequential[4].response_metadata["cmrm_steering"]["applied"] is True
    assert count_hooks(llm.steered.model) == 0


def test_seeded_sampling_never_touches_the_global_rng():
    llm = _llm(temperature=1.0, max_tokens=8)
    state = torch.random.get_rng_state()
    first = llm.invoke([_image_message()], seed=11).content
    assert torch.equal(state, torch.random.get_rng_state())
    assert llm.invoke([_image_message()], seed=11).content == first
    assert {llm.invoke([_image_message()], seed=s).content for s in range(4)} != {first}


def test_per_call_overrides_through_kwargs_bind_and_config():
    llm = _llm(steering={"alpha": 0.8}, lock=SteeringLock.unlocked())
    alpha = lambda m: m.response_metadata["cmrm_steering"]["alpha"]  # noqa: E731
    assert alpha(llm.invoke([_image_message()])) == 0.8
    assert alpha(llm.invoke([_image_message()], steering={"alpha": 0.3})) == 0.3
    assert alpha(llm.invoke([_image_message()], alpha=0.4)) == 0.4
    assert alpha(llm.bind(steering=SteeringConfig(alpha=0.6)).invoke([_image_message()])) == 0.6
    configured = {"configurable": {"cmrm_steering": {"alpha": 0.2}}}
    assert alpha(llm.invoke([_image_message()], config=configured)) == 0.2
    assert alpha(llm.invoke([_image_message()], config=configured, steering={"alpha": 0.1})) == 0.1
    with llm.steered.steering(alpha=0.7):  # SteeredVLM.steering() blocks apply under the chat model's
        assert alpha(llm.invoke([_image_message()])) == 0.8
    with pytest.raises(ConfigError, match="alpah"):
        llm.invoke("hi", steering={"alpah": 1})
    with pytest.raises(ConfigError, match="unknown call argument"):
        llm.invoke("hi", frequency_penalty=1.0)
    with pytest.raises(ValueError, match="mode='x'"):  # pydantic wraps our ConfigError
        _llm(steering={"mode": "x"})
    with pytest.raises(ValueError, match="instance of SteeredVLM"):
        ChatSteeredVLM(steered="model")


def test_cancelled_async_calls_stop_generation_and_leave_no_hooks():
    llm = _llm("qwen2_vl", max_tokens=4000)
    model = llm.steered.model

    async def cancel_stream():
        seen = []

        async def consume():
            async for chunk in llm.astream([_image_message()]):
                seen.append(chunk)

        task = asyncio.create_task(consume())
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert count_hooks(model) == 0
        task = asyncio.create_task(llm.ainvoke([_image_message()]))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert count_hooks(model) == 0
        return len(seen)

    assert asyncio.run(asyncio.wait_for(cancel_stream(), 60)) >= 2
    stream = llm.stream([_image_message()])
    next(stream)
    stream.close()
    assert count_hooks(model) == 0
    assert llm.invoke([_image_message()], max_tokens=2).content is not None  # the model is free again


def test_closed_streams_return_only_once_their_hooks_are_gone():
    llm = _llm("qwen2_vl", max_tokens=4000)
    model = llm.steered.model

    async def close_early() -> int:
        stream = llm.astream([_image_message()])
        await stream.__anext__()
        await stream.__anext__()
        await stream.aclose()
        return count_hooks(model)  # at once: no waiting for the garbage collector

    assert asyncio.run(asyncio.wait_for(close_early(), 60)) == 0
    stream = llm.stream([_image_message()])
    next(stream)
    next(stream)
    stream.close()
    assert count_hooks(model) == 0
    assert llm.invoke([_image_message()], max_tokens=2).content is not None  # the model is free again


def test_fail_open_unsteered_answers_are_flagged_in_response_metadata():
    model, processor = tiny("llava")
    llm = ChatSteeredVLM(steered=SteeredVLM(model, processor, strict=False), max_tokens=3)
    assert ChatSteeredVLM(steered=SteeredVLM(model, processor), max_tokens=3).steered.strict is True
    with pytest.warns(CMRMWarning, match="fail-open"):
        message = llm.invoke([_image_message()])
    assert message.response_metadata["cmrm_steering"]["applied"] is False
    assert message.response_metadata["cmrm_steering"]["fail_open"] is True
    with pytest.warns(CMRMWarning, match="fail-open"):
        chunks = list(llm.stream([_image_message()]))
    assert sum(chunks[1:], chunks[0]).response_metadata["cmrm_steering"]["fail_open"] is True
    assert llm.invoke("hello").response_metadata["cmrm_steering"]["fail_open"] is False  # nothing to steer


def test_strict_mode_raises_or_refuses_instead_of_answering_unsteered():
    model, processor = tiny("llava")
    unpacked = SteeredVLM(model, processor)  # no vector pack: dataset mode cannot steer
    llm = ChatSteeredVLM(steered=unpacked, strict=True, max_tokens=3)
    with pytest.raises(SteeringUnavailableError, match="no valid vector pack"):
        llm.invoke([_image_message()])
    with pytest.raises(SteeringUnavailableError):
        list(llm.stream([_image_message()]))
    assert llm.invoke("hello").response_metadata["cmrm_steering"]["applied"] is False  # nothing to steer
    refusing = llm.model_copy(update={"on_unsteerable": "refuse"})
    chunks = list(refusing.stream([_image_message()]))
    for message in (
        refusing.invoke([_image_message()]),
        sum(chunks[1:], chunks[0]),
        asyncio.run(refusing.ainvoke([_image_message()])),
    ):
        assert message.content == refusing.refusal_message
        assert message.response_metadata["finish_reason"] == "steering_unavailable"
        assert message.response_metadata["cmrm_steering"]["applied"] is False
    with pytest.raises(SteeringLockedError, match="enabled=False"):  # strict locks steering on
        llm.invoke([_image_message()], steering={"enabled": False})
    opt_out = llm.model_copy(update={"lock": SteeringLock(allow_disable=True)})  # the deployer allows it
    assert opt_out.invoke([_image_message()], steering={"enabled": False}).content is not None
    assert count_hooks(model) == 0


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])  # tools as text / through the template
def test_tool_calls_from_generated_text(model_type):
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = _scripted(_llm(model_type, max_tokens=80), call).bind_tools([add])
    message = llm.invoke([_image_message("add one and two")])
    assert message.content == "" and message.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"a": 1, "b": 2})]
    chunks = list(llm.stream([_image_message("add one and two")]))
    streamed = sum(chunks[1:], chunks[0])
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert streamed.content == ""
    history = [
        _image_message("add one and two"),
        message,
        ToolMessage(
            content=[
                {"type": "text", "text": "3"},
                {"type": "image", "base64": _b64(4), "mime_type": "image/png"},
            ],
            tool_call_id=message.tool_calls[0]["id"],
        ),
    ]
    broken = _scripted(
        _llm(model_type, max_tokens=80), 'Sure.<tool_call>{"name": "add", "arguments": {"a": </tool_call>'
    ).bind_tools([add])
    reply = broken.invoke(history)
    assert reply.content == "Sure." and reply.tool_calls == []
    assert (
        reply.invalid_tool_calls[0]["name"] is None
        and "not valid JSON" in reply.invalid_tool_calls[0]["error"]
    )


def test_tool_choice_forces_the_call_prefix_on_the_real_model():
    def lookup(query: str) -> str:
        """Look something up."""
        return query

    llm = _llm("llava", max_tokens=12)
    forced = llm.bind_tools([lookup], tool_choice="lookup").invoke([_image_message()])
    called = forced.tool_calls + forced.invalid_tool_calls
    assert len(called) == 1 and forced.content == ""  # the random model's arguments are gibberish
    free = llm.bind_tools([lookup], tool_choice="none").invoke([_image_message()])
    assert free.content == llm.invoke([_image_message()]).content  # tools not offered at all
    with pytest.raises(ConfigError, match="tool_choice='nope'"):
        llm.bind_tools([lookup], tool_choice="nope")


def test_structured_output_json_schema_method_and_stop_strings():
    class Answer(BaseModel):
        label: str
        score: int

    llm = _scripted(
        _llm("qwen2_vl", max_tokens=80), '```json\n{"label": "cat", "score": 3}\n``` STOP and more'
    )
    for method in ("json_schema", "json_mode", "function_calling"):
        if method == "function_calling":
            llm_fc = _scripted(
                _llm("qwen2_vl", max_tokens=120),
                '<tool_call>\n{"name": "Answer", "arguments": {"label": "cat", "score": 3}}\n</tool_call>',
            )
            result = llm_fc.with_structured_output(Answer).invoke([_image_message()])
        else:
            result = llm.with_structured_output(Answer, method=method).invoke([_image_message()])
        assert result == Answer(label="cat", score=3)
    raw = llm.with_structured_output(Answer, method="json_schema", include_raw=True).invoke("hi")
    assert raw["parsed"] == Answer(label="cat", score=3) and raw["parsing_error"] is None
    stopped = llm.invoke("hi", stop=["STOP"])
    streamed = "".join(c.content for c in llm.stream("hi", stop=["STOP"]))
    assert stopped.content == streamed == '```json\n{"label": "cat", "score": 3}\n``` '
    assert stopped.response_metadata["finish_reason"] == "stop"


def test_remote_images_are_refused_through_invoke():
    message = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])
    with pytest.raises(RemoteImageRefusedError):
        _llm().invoke([message])


def test_from_pretrained_splits_chat_fields_from_loading_arguments(tmp_path):
    from cmrm_guard.testing import save_tiny_vlm

    save_tiny_vlm("llava", tmp_path)
    llm = ChatSteeredVLM.from_pretrained(
        str(tmp_path), vectors=random_vectors(2, 64), max_tokens=3, temperature=0.0, steering={"alpha": 0.5}
    )
    assert llm.model_name == tmp_path.name and llm.max_tokens == 3  # the folder's name, not its path
    message = llm.invoke([_image_message()])
    assert message.response_metadata["cmrm_steering"]["alpha"] == 0.5
    assert message.response_metadata["model_name"] == tmp_path.name
    assert str(tmp_path) not in repr(message.response_metadata) and str(tmp_path) not in repr(
        llm._identifying_params
    )
    model, processor = tiny("llava")  # a config whose _name_or_path is a local path
    model_copy = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=random_vectors(2, 64), model_id=str(tmp_path))
    )
    assert model_copy.model_name == tmp_path.name
    hub = ChatSteeredVLM(
        steered=SteeredVLM(model, processor, vectors=random_vectors(2, 64), model_id="org/vlm")
    )
    assert hub.model_name == "org/vlm"  # a Hub id is shown as it is


def test_importing_cmrm_guard_does_not_import_langchain():
    import subprocess
    import sys

    code = "import sys, cmrm_guard, cmrm_guard.langchain; print('langchain_core' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


# ------------------------------------------------------------------------- settings and locks
def test_an_empty_layer_list_from_a_call_or_a_run_cannot_poison_later_calls():
    llm = _llm()
    expected = llm.invoke([_image_message()])
    with pytest.raises(ConfigError, match="at least one layer"):
        llm.invoke([_image_message()], layers=[])
    with pytest.raises(ConfigError, match="at least one layer"):
        llm.invoke([_image_message()], config={"configurable": {"cmrm_steering": {"layers": []}}})
    later = llm.invoke([_image_message()])
    assert later.response_metadata["cmrm_steering"]["layers"] == [0, 1]
    assert later.content == expected.content


def test_a_steering_config_argument_carries_only_the_fields_set_in_it():
    llm = _llm(steering={"alpha": 0.6}, lock=SteeringLock.unlocked())
    message = llm.invoke([_image_message()], steering=SteeringConfig(step_scope="prefill_only"))
    assert message.response_metadata["cmrm_steering"]["alpha"] == 0.6


@pytest.mark.parametrize(
    ("request_steering", "error", "message"),
    [
        ({"enabled": False}, SteeringLockedError, "enabled=False turns steering off"),
        ({"policy": "never"}, SteeringLockedError, "policy='never' turns steering off"),
        ({"alpha": 0.0}, SteeringLockedError, "alpha=0.0 is below the deployer's alpha 1.0"),
        ({"layers": [1]}, SteeringLockedError, r"leave out required layers \[0\]"),
        ({"alpha": -1.0}, ConfigError, "must be >= 0"),
    ],
)
def test_a_strict_chat_model_cannot_be_weakened_by_a_request(request_steering, error, message):
    llm = _llm(strict=True)
    run = {"configurable": {"cmrm_steering": request_steering}}
    for call in (
        lambda: llm.invoke([_image_message()], config=run),
        lambda: list(llm.stream([_image_message()], config=run)),
        lambda: asyncio.run(llm.ainvoke([_image_message()], config=run)),
        lambda: llm.bind(steering=request_steering).invoke([_image_message()]),
        lambda: llm.invoke([_image_message()], **request_steering),
    ):
        with pytest.raises(error, match=message):
            call()
    with pytest.raises(error), llm.steered.steering(**request_steering):
        llm.invoke([_image_message()])
    assert count_hooks(llm.steered.model) == 0
    stronger = llm.invoke([_image_message()], config={"configurable": {"cmrm_steering": {"alpha": 2.0}}})
    assert stronger.response_metadata["cmrm_steering"]["alpha"] == 2.0


def test_a_chat_model_lock_sets_a_floor_without_strict():
    llm = _llm(lock=SteeringLock(min_alpha=0.5), steering={"alpha": 0.8})
    with pytest.raises(SteeringLockedError, match="alpha=0.4 is below min_alpha 0.5"):
        llm.invoke([_image_message()], alpha=0.4)
    assert llm.invoke([_image_message()], alpha=0.6).response_metadata["cmrm_steering"]["alpha"] == 0.6
    with pytest.raises(SteeringLockedError, match="enabled=False turns steering off"):
        _llm().invoke([_image_message()], config={"configurable": {"cmrm_steering": {"enabled": False}}})
    unlocked = _llm(
        lock=SteeringLock.unlocked()
    )  # the deployer's explicit opt-out of the strict default lock
    off = unlocked.invoke([_image_message()], config={"configurable": {"cmrm_steering": {"enabled": False}}})
    assert off.response_metadata["cmrm_steering"]["applied"] is False
