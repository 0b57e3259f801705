"""Message conversion, image loading with limits, and tool-call parsing, each alone (no model)."""

from __future__ import annotations

import base64
import io
import json
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from cmrm_guard.errors import (
    ConversationError,
    CorruptImageError,
    ImageTooLargeError,
    LocalImageRefusedError,
    RemoteImageRefusedError,
)
from cmrm_guard.images import ImageLimits, load_image_block
from cmrm_guard.langchain.messages import add_system_text, to_conversation
from cmrm_guard.langchain.tools import parse_reply, visible_prefix
from cmrm_guard.testing import tiny_image


def _png(seed: int = 0, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    tiny_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


B64 = base64.b64encode(_png()).decode()
IMAGE_FORMS = {
    "standard base64": {"type": "image", "base64": B64, "mime_type": "image/png"},
    "standard data URL": {"type": "image", "url": f"data:image/png;base64,{B64}"},
    "OpenAI image_url": {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
    "v0 source_type": {"type": "image", "source_type": "base64", "data": B64, "mime_type": "image/png"},
}


@pytest.mark.parametrize("form", IMAGE_FORMS)
def test_every_image_block_form_decodes_to_the_same_pixels(form):
    message = HumanMessage(content=[IMAGE_FORMS[form], {"type": "text", "text": "what is this?"}])
    (converted,) = to_conversation([message])
    image, text = converted["content"]
    assert converted["role"] == "user" and text == {"type": "text", "text": "what is this?"}
    assert image["image"].tobytes() == tiny_image(0).tobytes()


def test_roles_tool_calls_and_images_in_earlier_turns():
    messages = [
        SystemMessage("be brief"),
        HumanMessage(content=[IMAGE_FORMS["standard base64"], {"type": "text", "text": "first"}]),
        AIMessage("", tool_calls=[{"name": "look", "args": {"x": 1}, "id": "c1"}]),
        ToolMessage("seen", tool_call_id="c1", name="look"),
        HumanMessage("and now?"),
        HumanMessage("really?"),  # merged into the previous user turn
    ]
    conversation = to_conversation(messages)
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "tool", "user"]
    assert conversation[1]["content"][0]["type"] == "image"  # image in an earlier turn is kept
    assert conversation[2]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "look", "arguments": {"x": 1}}}
    ]
    assert conversation[3] == {
        "role": "tool",
        "content": [{"type": "text", "text": "seen"}],
        "tool_call_id": "c1",
        "name": "look",
    }
    assert [i["text"] for i in conversation[4]["content"]] == ["and now?", "\n\n", "really?"]


def test_tools_as_text_writes_hermes_calls_and_responses():
    messages = [
        HumanMessage("hi"),
        AIMessage("let me look", tool_calls=[{"name": "look", "args": {"q": "你好"}, "id": "c1"}]),
        ToolMessage("done", tool_call_id="c1"),
    ]
    user, assistant, tool = to_conversation(messages, tools_as_text=True)
    written = "".join(i["text"] for i in assistant["content"])
    assert written == 'let me look\n<tool_call>\n{"name": "look", "arguments": {"q": "你好"}}\n</tool_call>'
    assert tool["role"] == "user"
    assert "".join(i["text"] for i in tool["content"]) == "<tool_response>\ndone\n</tool_response>"
    merged = add_system_text([user], "rules")
    assert merged[0] == {"role": "system", "content": [{"type": "text", "text": "rules"}]}


def test_blocks_the_model_cannot_read_are_named():
    pdf = {"type": "file", "base64": B64, "mime_type": "application/pdf"}
    with pytest.raises(ConversationError, match="'file' content block"):
        to_conversation([HumanMessage(content=[pdf])])
    with pytest.raises(ConversationError, match="file id"):
        to_conversation([HumanMessage(content=[{"type": "image", "file_id": "f-1"}])])


def test_remote_and_local_sources_are_refused_unless_enabled(tmp_path):
    with pytest.raises(RemoteImageRefusedError, match="allow_remote_images"):
        to_conversation([HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(RemoteImageRefusedError):
        load_image_block({"type": "image_url", "url": "http://127.0.0.1:1/a.png"}, ImageLimits())
    path = tmp_path / "a.png"
    path.write_bytes(_png(3))
    for block in ({"type": "image", "url": str(path)}, {"type": "image", "url": f"file://{path}"}):
        with pytest.raises(LocalImageRefusedError, match="allow_local_images"):
            load_image_block(block, ImageLimits())
        image = load_image_block(block, ImageLimits(allow_local_files=True))
        assert image.tobytes() == tiny_image(3).tobytes()


def test_remote_fetch_when_enabled(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(5))
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/a.png"
        image = load_image_block({"type": "image", "url": url}, ImageLimits(allow_remote=True))
        assert image.tobytes() == tiny_image(5).tobytes()
        with pytest.raises(ImageTooLargeError):
            load_image_block({"type": "image", "url": url}, ImageLimits(allow_remote=True, max_bytes=100))
    finally:
        server.shutdown()
        server.server_close()


def test_size_limits_and_corrupt_data_give_named_errors():
    block = {"type": "image", "base64": B64, "mime_type": "image/png"}
    with pytest.raises(ImageTooLargeError, match="max_image_bytes"):
        load_image_block(block, ImageLimits(max_bytes=64))
    with pytest.raises(ImageTooLargeError, match="32x32 = 1024 pixels"):
        load_image_block(block, ImageLimits(max_pixels=1000))
    with pytest.raises(CorruptImageError, match="not valid base64"):
        load_image_block({"type": "image", "base64": "not*base64!"}, ImageLimits())
    garbage = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50).decode()
    with pytest.raises(CorruptImageError, match="cannot be decoded|corrupt"):
        load_image_block({"type": "image", "base64": garbage}, ImageLimits())
    truncated = base64.b64encode(_png()[:80]).decode()
    with pytest.raises(CorruptImageError):
        load_image_block({"type": "image", "base64": truncated}, ImageLimits())
    with pytest.raises(CorruptImageError, match="base64 data URL"):
        load_image_block({"type": "image", "url": "data:image/png,abc"}, ImageLimits())
    big = io.BytesIO()
    Image.new("RGB", (300, 300)).save(big, format="PNG")
    bomb = {"type": "image", "base64": base64.b64encode(big.getvalue()).decode()}
    with pytest.raises(ImageTooLargeError):  # pixel limit checked from the header, before decoding
        load_image_block(bomb, ImageLimits(max_pixels=256 * 256))


def test_tool_calls_are_parsed_and_malformed_ones_are_invalid():
    text = (
        'Checking.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 3}"}\n</tool_call>\n'
        "<tool_call>\n{not json}\n</tool_call>\n<tool_call>\n[1, 2]\n</tool_call>\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": '
    )
    reply = parse_reply(text, ["add"])
    assert reply.content == "Checking."
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("add", {"a": 3}),
    ]
    assert all(c["id"] and c["type"] == "tool_call" for c in reply.tool_calls)
    errors = [c["error"] for c in reply.invalid_tool_calls]
    assert len(errors) == 3
    assert "not valid JSON" in errors[0] and "JSON object" in errors[1] and "unterminated" in errors[2]
    assert reply.invalid_tool_calls[0]["args"] == "{not json}"


def test_bare_json_fallback_only_names_a_bound_tool():
    call = json.dumps({"name": "add", "arguments": {"a": 1}})
    assert parse_reply(call, ["add"]).tool_calls[0]["args"] == {"a": 1}
    assert parse_reply(f"```json\n{call}\n```", ["add"]).tool_calls[0]["name"] == "add"
    assert parse_reply(call, ["other"]).tool_calls == []
    assert parse_reply(call, ["other"]).content == call
    assert parse_reply('{"answer": 42}', ["add"]).content == '{"answer": 42}'


def test_visible_prefix_never_shows_tool_markup():
    assert visible_prefix("Hello <tool", tools=True) == "Hello"
    assert visible_prefix("Hello <tool_call>\n{", tools=True) == "Hello"
    assert visible_prefix('  {"name"', tools=True) == ""
    assert visible_prefix("Hi there  ", tools=True) == "Hi there"
    assert visible_prefix("Hi <tool", tools=False) == "Hi <tool"


def _deep_reply_llm(monkeypatch, reply: str):
    """A tool-bound chat model on the tiny LLaVA whose generated text is ``reply`` (one real step)."""
    import dataclasses

    from cmrm_guard import SteeredVLM
    from cmrm_guard.langchain import ChatSteeredVLM
    from tests.conftest import random_vectors, tiny

    real_run = ChatSteeredVLM._run

    def run(self, call, streamer=None, cancel=None):
        call.generate_kwargs["max_new_tokens"] = 1
        output = real_run(self, call, streamer, cancel)
        return dataclasses.replace(output, texts=[reply])

    monkeypatch.setattr(ChatSteeredVLM, "_run", run)
    model, processor = tiny("llava")
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return ChatSteeredVLM(steered=steered, max_tokens=4).bind_tools([add])


@pytest.mark.parametrize("depth", [100, 1000])
def test_deeply_nested_tool_calls_are_invalid_in_invoke_and_stream(monkeypatch, depth):
    body = '{"name": "add", "arguments": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    llm = _deep_reply_llm(monkeypatch, f"<tool_call>{body}</tool_call>")
    message = llm.invoke([HumanMessage("add")])
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    assert f"nested {depth + 1} levels deep" in message.invalid_tool_calls[0]["error"]
    chunks = list(llm.stream([HumanMessage("add")]))
    streamed = sum(chunks[1:], chunks[0])
    assert streamed.tool_calls == [] and len(streamed.invalid_tool_calls) == 1


def test_an_unterminated_tool_call_stays_invalid_when_streamed(monkeypatch):
    llm = _deep_reply_llm(monkeypatch, 'Sure.<tool_call>{"name": "add", "arguments": {"a": ')
    assert llm.invoke([HumanMessage("add")]).tool_calls == []
    chunks = list(llm.stream([HumanMessage("add")]))
    streamed = sum(chunks[1:], chunks[0])
    assert streamed.tool_calls == [] and len(streamed.invalid_tool_calls) == 1


def test_chat_model_image_settings_reach_the_loader():
    from cmrm_guard import SteeredVLM
    from cmrm_guard.errors import ImageInputError
    from cmrm_guard.langchain import ChatSteeredVLM
    from tests.conftest import random_vectors, tiny

    model, processor = tiny("llava")
    steered = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    with pytest.raises(ValueError, match="ImageLimits.max_images must be an integer >= 1, got 0"):
        ChatSteeredVLM(steered=steered, max_images=0)
    with pytest.raises(ValueError, match="ImageLimits.formats"):  # a ConfigError inside pydantic's error
        ChatSteeredVLM(steered=steered, image_formats=["NOPE"])
    llm = ChatSteeredVLM(
        steered=steered, max_tokens=2, max_images=1, allowed_image_hosts=["Images.Example.com"]
    )
    limits = llm._image_limits()
    assert limits.allowed_hosts == ("images.example.com",) and limits.max_images == 1
    image = IMAGE_FORMS["standard base64"]
    with pytest.raises(ImageTooLargeError, match="limit of 1 images per request"):
        llm.invoke([HumanMessage(content=[image, {"type": "text", "text": "a"}, image])])
    with pytest.raises(ImageInputError, match="SystemMessage holds an image"):
        llm.invoke([SystemMessage(content=[image]), HumanMessage("what is in the picture?")])
    assert (
        llm.invoke([HumanMessage(content=[image, {"type": "text", "text": "what is this?"}])]).content
        is not None
    )
