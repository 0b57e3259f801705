"""Property tests over chat messages and content blocks, end to end on a tiny model.

Generated LangChain message lists go through ``ChatSteeredVLM.invoke`` and generated Hugging Face
conversations through ``SteeredVLM.generate`` (one new token each). Every case either raises a named
:class:`~cmrm_guard.errors.CMRMError` or answers with a truthful steering record: under policy
``"images"`` a reply is steered iff its rendered prompt holds an image token. After every case no hook
is left, the weights are unchanged and a following plain call gives exactly the logits it gives alone.
Outcomes are hypothesis events (``pytest --hypothesis-show-statistics``).
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

import torch  # noqa: E402
from hypothesis import event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402

from cmrm_guard import SteeredVLM, count_hooks  # noqa: E402
from cmrm_guard.errors import CMRMError, ConversationError  # noqa: E402
from cmrm_guard.langchain import ChatSteeredVLM  # noqa: E402
from cmrm_guard.langchain.messages import to_conversation  # noqa: E402
from cmrm_guard.testing import tiny_image  # noqa: E402
from tests.conftest import image_chat, random_vectors, tiny  # noqa: E402
from tests.hypothesis_profiles import cases  # noqa: E402
from tests.test_properties_packs import weights_digest  # noqa: E402


def _encoded(fmt: str = "PNG", seed: int = 0, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    tiny_image(seed, size).save(buffer, format=fmt)
    return buffer.getvalue()


PNG, JPEG = _encoded("PNG"), _encoded("JPEG", 1)
PNG64, JPEG64 = base64.b64encode(PNG).decode(), base64.b64encode(JPEG).decode()


@functools.cache
def _setup() -> tuple[ChatSteeredVLM, str, torch.Tensor]:
    """A strict chat model with a pack, its weights' digest, and the plain call's reference logits."""
    model, processor = tiny("llava")
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    llm = ChatSteeredVLM(steered=steered, max_tokens=1)
    return llm, weights_digest(model), _plain_logits(steered)


def _plain_logits(steered: SteeredVLM) -> torch.Tensor:
    with torch.no_grad():
        return steered.forward([image_chat()]).logits[:, -1].clone()


def _image_in_prompt(steered: SteeredVLM, conversation: Any) -> bool:
    """Whether the rendered prompt holds the model's image token (what steering must follow)."""
    inputs = steered.encode([conversation])
    return bool(steered.adapter.rows_with_images(steered.model, inputs["input_ids"]).any())


def _check_after(steered: SteeredVLM, weights: str, reference: torch.Tensor) -> None:
    assert count_hooks(steered.model) == 0
    assert weights_digest(steered.model) == weights
    assert torch.equal(_plain_logits(steered), reference), "steering state leaked into a later call"


# ------------------------------------------------------------------------------------ strategies
_TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "what is this?",
            "<image>",
            "<|image_pad|>",
            "<|vision_start|>",
            "<|im_start|>user",
            "<tool_call>{}</tool_call>",
            "{{ messages }}",
            "{% if %}",
            "\x00",
            "\u202e",
            "🙂" * 3,
        ]
    ),  # fmt: skip
)
_GOOD_IMAGES = st.sampled_from(
    [
        {"type": "image", "base64": PNG64, "mime_type": "image/png"},
        {"type": "image", "base64": JPEG64, "mime_type": "image/jpeg"},
        {"type": "image", "url": f"data:image/png;base64,{PNG64}"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG64}"}},
        {"type": "image", "source_type": "base64", "data": PNG64, "mime_type": "image/png"},
    ]
)
_BAD_IMAGES = st.one_of(
    st.sampled_from(
        [
            {"type": "image", "base64": PNG64, "mime_type": "image/jpeg"},  # declared type is not the content
            {"type": "image", "base64": PNG64[:40], "mime_type": "image/png"},  # truncated
            {"type": "image", "base64": "not base64!", "mime_type": "image/png"},
            {"type": "image", "base64": "", "mime_type": "image/png"},
            {"type": "image", "url": "data:image/svg+xml;base64,PHN2Zy8+"},
            {"type": "image", "url": "data:text/plain,hello"},
            {"type": "image", "url": "http://127.0.0.1:9/cat.png?sig=secret"},  # remote images are off
            {"type": "image", "url": "file:///dev/zero"},
            {"type": "image", "url": "/etc/hostname"},  # local images are off
            {"type": "image_url", "image_url": {"url": "ftp://example.invalid/x.png"}},
            {"type": "image"},
        ]
    ),
    st.binary(max_size=40).map(
        lambda data: {
            "type": "image",
            "base64": base64.b64encode(PNG[:16] + data).decode(),
            "mime_type": "image/png",
        }
    ),
)
_OTHER_BLOCKS = st.sampled_from(
    [
        {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"},
        {"type": "video", "url": "https://example.invalid/v.mp4"},
        {"type": "file", "base64": "AAAA", "mime_type": "application/pdf"},
        {"type": "made_up", "x": 1},
        {"type": "reasoning", "reasoning": "hidden"},
        {"type": "text-plain", "text": "plain", "mime_type": "text/plain"},
        {"type": "text"},
        {"type": "text", "text": ""},
    ]
)
_block = st.one_of(
    _TEXTS.map(lambda text: {"type": "text", "text": text}),
    _TEXTS,  # a bare string in a content list
    _GOOD_IMAGES,
    _GOOD_IMAGES,
    _GOOD_IMAGES,
    _BAD_IMAGES,
    _OTHER_BLOCKS,
)
_content = st.one_of(_TEXTS, st.lists(_block, max_size=4))
_text_content = st.one_of(
    _TEXTS, st.lists(_TEXTS.map(lambda text: {"type": "text", "text": text}), max_size=2)
)
_message = st.one_of(
    _content.map(lambda content: HumanMessage(content=content)),
    st.lists(_block, min_size=1, max_size=3).map(lambda content: HumanMessage(content=content)),
    st.lists(_block, min_size=1, max_size=3).map(lambda content: HumanMessage(content=content)),
    _content.map(lambda content: AIMessage(content=content)),
    _text_content.map(lambda content: SystemMessage(content=content)),
    st.lists(st.one_of(_GOOD_IMAGES, _TEXTS.map(lambda t: {"type": "text", "text": t})), max_size=2).map(
        lambda content: SystemMessage(content=content)
    ),
    _content.map(lambda content: ToolMessage(content=content, tool_call_id="call_1")),
    st.tuples(
        st.sampled_from(["user", "assistant", "human", "ai", "system", "weird", "tool", ""]), _content
    ).map(lambda pair: ChatMessage(role=pair[0], content=pair[1])),
)


@settings(max_examples=cases(120))
@given(messages=st.lists(_message, max_size=4))  # [] included: a named error
def test_any_message_list_is_a_truthful_reply_or_a_named_error(messages):
    llm, weights, reference = _setup()
    try:
        reply = llm.invoke(messages)
    except CMRMError as error:
        assert str(error)
        event(f"invoke: named error {type(error).__name__}")
    else:
        steering = reply.response_metadata["cmrm_steering"]
        conversation = to_conversation(messages, llm._image_limits())
        in_prompt = _image_in_prompt(llm.steered, conversation)
        event(f"invoke: reply, {'steered' if steering['applied'] else 'unsteered'}")
        assert steering["applied"] is in_prompt, (
            f"steering record {steering} but image in prompt: {in_prompt}"
        )
        assert steering["fail_open"] is False and steering["policy"] == "images"
        if in_prompt:
            assert steering["layers"] == [0, 1] and steering["alpha"] == 1.0
        assert isinstance(reply.content, str)
    _check_after(llm.steered, weights, reference)


# ------------------------------------------------------------------------ SteeredVLM conversations
_GOOD_CORE_IMAGES = st.sampled_from([tiny_image(0, 16), tiny_image(1, 8), f"data:image/png;base64,{PNG64}"])
_BAD_CORE_IMAGES = st.sampled_from(
    [
        f"data:image/jpeg;base64,{PNG64}",  # declared type is not the content
        "data:image/png;base64,!!",
        "/nonexistent/cat.png",
        "/dev/zero",
        "file:///dev/null",
        "http://127.0.0.1:9/cat.png",
        PNG,
        None,
        42,
    ]
)
_core_item = st.one_of(
    _TEXTS.map(lambda text: {"type": "text", "text": text}),
    _GOOD_CORE_IMAGES.map(lambda image: {"type": "image", "image": image}),
    _GOOD_CORE_IMAGES.map(lambda image: {"type": "image", "image": image}),
    _GOOD_CORE_IMAGES.map(lambda image: {"type": "image", "url": image}),
    _BAD_CORE_IMAGES.map(lambda image: {"type": "image", "image": image}),
    _BAD_CORE_IMAGES.map(lambda image: {"type": "image", "url": image}),
    st.sampled_from(
        [{"type": "image"}, {"type": "audio", "audio": "x"}, {"type": "text"}, {"text": "no type"}, "bare"]
    ),
)
_core_message = st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(_core_item, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(_core_item, min_size=1, max_size=3)}),
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "weird", "", 3]),
            "content": st.one_of(_TEXTS, st.lists(_core_item, max_size=3), st.none(), st.integers()),
        }
    ),
    st.sampled_from([{"role": "user"}, {"content": "hi"}, "hello", None, []]),
)


@pytest.mark.parametrize(
    "item", [{"type": "audio", "audio": "x"}, {"type": "video", "video": "x"}, {"type": "x"}]
)
def test_an_item_neither_text_nor_image_is_a_named_error_not_a_processor_error(item):
    steered = _setup()[0].steered
    with pytest.raises(ConversationError, match="reads text and image items only"):
        steered.generate(
            [[{"role": "user", "content": [item, {"type": "text", "text": "hi"}]}]], max_new_tokens=1
        )
    assert count_hooks(steered.model) == 0


@settings(max_examples=cases(80))
@given(conversation=st.lists(_core_message, max_size=3))
def test_any_conversation_generates_truthfully_or_raises_a_named_error(conversation):
    llm, weights, reference = _setup()
    steered = llm.steered
    try:
        output = steered.generate([conversation], max_new_tokens=1, do_sample=False)
    except CMRMError as error:
        assert str(error)
        event(f"generate: named error {type(error).__name__}")
    else:
        in_prompt = _image_in_prompt(steered, conversation)
        event(f"generate: reply, {'steered' if output.steering.applied else 'unsteered'}")
        assert output.steering.applied is in_prompt, f"{output.steering} but image in prompt: {in_prompt}"
        assert output.steering.rows_steered == ((True,) if in_prompt else ())
        assert len(output.texts) == 1 and output.new_token_counts[0] <= 1
    _check_after(steered, weights, reference)
