"""The one image loader (cmrm_guard.images): formats, size limits, local files, remote fetches, redaction."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage, SystemMessage
from PIL import EpsImagePlugin, Image, ImageFile

from cmrm_guard.adapters import conversation as conv
from cmrm_guard.errors import (
    CMRMError,
    ConfigError,
    ConversationError,
    ImageFormatError,
    ImageInputError,
    ImageTimeoutError,
    ImageTooLargeError,
    LocalImageRefusedError,
    RemoteImageRefusedError,
)
from cmrm_guard.images import ImageBudget, ImageLimits, display_url, load_image_block
from cmrm_guard.langchain.messages import to_conversation
from cmrm_guard.testing import tiny_image
from tests.hypothesis_profiles import cases


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG = _encoded(tiny_image(0))
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
    b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n"
)


@pytest.fixture
def no_decoding(monkeypatch) -> list[Any]:
    """The images whose pixels were decoded (``ImageFile.load``), decoding as usual."""
    calls: list[Any] = []
    original = ImageFile.ImageFile.load

    def load(self):
        if not any(seen is self for seen in calls):
            calls.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


# ------------------------------------------------------------------------------------- formats
def test_eps_is_never_handed_to_pillows_eps_plugin(monkeypatch):
    opened: list[str] = []

    def refuse(self):
        opened.append("eps")
        raise AssertionError("the EPS plugin (Ghostscript) was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    for block in (
        {"type": "image", "base64": _b64(EPS)},
        {"type": "image", "url": f"data:image/png;base64,{_b64(EPS)}"},
    ):
        with pytest.raises(ImageFormatError, match="PNG/JPEG/WEBP/GIF/BMP"):
            load_image_block(block, ImageLimits())
    assert opened == []


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image", "base64": _b64(PNG), "mime_type": "image/jpeg"},
        {"type": "image", "base64": _b64(PNG), "mime_type": "application/postscript"},
        {"type": "image", "url": f"data:image/gif;base64,{_b64(PNG)}"},
        {"type": "image", "url": f"data:text/html;base64,{_b64(PNG)}"},
    ],
)
def test_declared_type_must_match_the_content(block):
    with pytest.raises(ImageFormatError, match="declared as"):
        load_image_block(block, ImageLimits())


def test_every_allowed_format_decodes_and_formats_are_configurable():
    image = tiny_image(2)
    for fmt, mime in (
        ("PNG", "image/png"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
    ):
        block = {"type": "image", "base64": _b64(_encoded(image, fmt)), "mime_type": mime}
        assert load_image_block(block, ImageLimits()).size == image.size
    jpeg = {"type": "image", "base64": _b64(_encoded(image, "JPEG")), "mime_type": "image/jpeg"}
    with pytest.raises(ImageFormatError):
        load_image_block(jpeg, ImageLimits(formats=("PNG",)))
    with pytest.raises(ConfigError, match="formats"):
        ImageLimits(formats=("NOT-A-FORMAT",))


# --------------------------------------------------------------------------------- size limits
def test_a_thin_png_is_refused_from_its_header_before_decoding(no_decoding):
    thin = _b64(_encoded(Image.new("L", (1, 100_000))))
    assert len(thin) < 400  # a few hundred characters that would decode into a huge processor input
    with pytest.raises(ImageTooLargeError, match="aspect ratio of 100000.0, over the limit of 20"):
        to_conversation([HumanMessage(content=[{"type": "image", "base64": thin, "mime_type": "image/png"}])])
    assert no_decoding == []


def test_many_8k_images_are_refused_by_the_per_request_total(no_decoding):
    frame = {
        "type": "image",
        "base64": _b64(_encoded(Image.new("1", (7680, 4320)))),
        "mime_type": "image/png",
    }
    with pytest.raises(ImageTooLargeError, match="pixels per request"):
        to_conversation([HumanMessage(content=[frame] * 12)])
    assert len(no_decoding) == 2  # the third frame is refused from its header


def test_images_per_request_and_budget_defaults():
    limits = ImageLimits()
    budget = ImageBudget(limits)
    budget.admit(7680, 4320, "one")
    budget.admit(7680, 4320, "two")
    with pytest.raises(ImageTooLargeError, match="max_total_image_pixels"):
        budget.admit(16, 16, "three")
    small = ImageBudget(limits)
    for i in range(limits.max_images):
        small.admit(8, 8, str(i))
    with pytest.raises(ImageTooLargeError, match="16 images per request"):
        small.admit(8, 8, "one more")
    block = {"type": "image", "base64": _b64(PNG), "mime_type": "image/png"}
    with pytest.raises(ImageTooLargeError, match="max_images"):
        to_conversation([HumanMessage(content=[block] * 3)], ImageLimits(max_images=2))


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_images", 0),
        ("max_pixels", -1),
        ("max_aspect_ratio", 0.5),
        ("timeout_s", float("nan")),
        ("max_total_pixels", True),
        ("allowed_hosts", "example.com"),
    ],
)
def test_limits_are_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        ImageLimits(**{field: value})


# --------------------------------------------------------------------------------- local files
def test_devices_folders_and_fifos_are_refused_without_reading(tmp_path):
    allowed = ImageLimits(allow_local_files=True)
    with pytest.raises(LocalImageRefusedError, match="a device"):
        load_image_block({"type": "image", "url": "file:///dev/zero"}, allowed)
    with pytest.raises(LocalImageRefusedError, match="a folder"):
        load_image_block({"type": "image", "path": str(tmp_path)}, allowed)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_image_block({"type": "image", "path": str(fifo)}, allowed)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock a reader stuck in open()
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], LocalImageRefusedError), outcome
    assert "a FIFO" in str(outcome[0])


def test_core_paths_go_through_the_same_loader(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_encoded(tiny_image(4)))
    assert conv.load_image(str(path)).tobytes() == tiny_image(4).tobytes()
    with pytest.raises(LocalImageRefusedError, match="a device"):
        conv.load_image("/dev/zero")
    (tmp_path / "a.eps").write_bytes(EPS)
    with pytest.raises(ImageFormatError):
        conv.resolve_images(
            [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "a.eps")}]}]
        )


# ------------------------------------------------------------------------------ remote fetches
@contextmanager
def _server(handle) -> Iterator[int]:
    """A one-thread TCP server on 127.0.0.1 calling ``handle(connection, request, port, stop)``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    request = connection.recv(65536)
                    handle(connection, request, port, stop)
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def _drip(connection, request, port, stop) -> None:
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    for byte in PNG[:40]:  # one byte every 0.2 s: each read succeeds, the fetch never ends
        if stop.wait(0.2):
            return
        connection.sendall(bytes([byte]))


def _silent(connection, request, port, stop) -> None:
    stop.wait(8)  # accepts, never answers


@pytest.mark.parametrize("handler", [_drip, _silent])
def test_a_remote_fetch_has_one_total_deadline(handler):
    with _server(handler) as port:
        block = {"type": "image", "url": f"http://127.0.0.1:{port}/slow.png"}
        with pytest.raises(ImageTimeoutError, match="took over 1 s"):
            load_image_block(block, ImageLimits(allow_remote=True, timeout_s=1.0))


def test_redirects_to_another_host_are_refused_unless_allowed():
    served: list[str] = []

    def serve(connection, request: bytes, port, stop) -> None:
        host = "localhost" if b"host: localhost" in request.lower() else "127.0.0.1"
        served.append(host)
        if host == "127.0.0.1":  # redirected to the same server under another host name
            location = f"http://localhost:{port}/final.png"
            connection.sendall(
                f"HTTP/1.0 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
            )
        else:
            header = f"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(PNG)}\r\n\r\n"
            connection.sendall(header.encode() + PNG)

    with _server(serve) as port:
        url = f"http://127.0.0.1:{port}/a.png?sig=SECRET"
        block = {"type": "image", "url": url}
        with pytest.raises(RemoteImageRefusedError, match="redirects to another host") as refused:
            load_image_block(block, ImageLimits(allow_remote=True))
        assert "SECRET" not in str(refused.value) and served == ["127.0.0.1"]
        with pytest.raises(RemoteImageRefusedError, match="not in allowed_image_hosts"):
            load_image_block(block, ImageLimits(allow_remote=True, allowed_hosts=("localhost",)))
        assert served == ["127.0.0.1"]  # refused before any request
        both = ImageLimits(allow_remote=True, allowed_hosts=("127.0.0.1", "localhost"))
        assert load_image_block(block, both).tobytes() == tiny_image(0).tobytes()
        assert served == ["127.0.0.1", "127.0.0.1", "localhost"]


# --------------------------------------------------------------------------- messages, leaks
def test_urls_in_errors_lose_user_info_query_and_fragment():
    url = "https://user:hunter2@images.example.com:8443/a/b.png?X-Amz-Signature=SECRET#frag"
    assert display_url(url) == "https://images.example.com:8443/a/b.png"
    assert display_url(f"data:image/png;base64,{_b64(PNG)}") == "a data: URL"
    with pytest.raises(RemoteImageRefusedError) as refused:
        load_image_block({"type": "image", "url": url}, ImageLimits())
    assert "SECRET" not in str(refused.value) and "hunter2" not in str(refused.value)
    with pytest.raises(ConversationError) as core:
        conv.load_image(url)
    assert "SECRET" not in str(core.value) and "hunter2" not in str(core.value)


def test_conversation_errors_never_quote_prompt_text():
    secret = "my private medical question"
    for bad in (
        {"role": "user", "content": secret},
        [{"role": "user", "text": secret}],
        [{"role": "user", "content": [{"kind": "text", "text": secret}]}],
    ):
        with pytest.raises(ConversationError) as error:
            conv.check_conversation(bad)
        assert "private" not in str(error.value), str(error.value)


def test_images_in_system_messages_are_refused():
    block = {"type": "image", "base64": _b64(PNG), "mime_type": "image/png"}
    with pytest.raises(ImageInputError, match="SystemMessage holds an image"):
        to_conversation([SystemMessage(content=[block]), HumanMessage("what is in the picture?")])
    with pytest.raises(ImageInputError, match="role 'system'"):
        conv.check_conversation(
            [
                {"role": "system", "content": [{"type": "image", "image": tiny_image(0)}]},
                {"role": "user", "content": "hi"},
            ]
        )


def test_placeholder_text_is_refused():
    with pytest.raises(ConversationError, match="placeholder '<image>'"):
        conv.check_conversation([{"role": "user", "content": "what is <image>?"}], ("<image>",))
    with pytest.raises(ConversationError, match="message 0 item 1"):
        conv.check_conversation(
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "<image>"}],
                }
            ],
            ("<image>",),
        )


def test_a_1000_level_tool_call_is_an_invalid_call_not_a_recursion_error():
    from cmrm_guard.langchain.tools import parse_reply

    deep = "<tool_call>" + '{"a": ' * 1000 + "1" + "}" * 1000 + "</tool_call>"
    parsed = parse_reply(deep, ["add"])
    assert parsed.tool_calls == [] and "nested 1000 levels" in parsed.invalid_tool_calls[0]["error"]
    args = '<tool_call>{"name": "add", "arguments": "' + "[" * 5000 + '"}</tool_call>'
    parsed = parse_reply(args, ["add"])
    assert parsed.invalid_tool_calls[0]["name"] == "add"
    bare = '{"name": "add", "arguments": ' + "[" * 3000 + "]" * 3000 + "}"
    assert parse_reply(bare, ["add"]).tool_calls == []


# ------------------------------------------------------------------------------ property-based
_MUTATED_HEADERS = [PNG[:n] for n in (8, 16, 33, 60)] + [
    b"GIF89a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBP",
    EPS[:20],
]


IMAGE_CASES = {
    "prefix": st.sampled_from(_MUTATED_HEADERS),
    "tail": st.binary(max_size=200),
    "mime": st.sampled_from(
        [None, "image/png", "image/jpeg", "image/gif", "text/plain", "image/svg+xml", ""]
    ),
    "as_url": st.booleans(),
}
REPLY_CASES = {
    "text": st.text(alphabet=st.sampled_from('{}[]"\\:,1a <>/tool_cal'), max_size=300),
    "wrap": st.booleans(),
}


@settings(max_examples=cases(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**IMAGE_CASES)
def test_any_image_bytes_give_an_image_or_a_named_error(prefix, tail, mime, as_url):
    data = _b64(prefix + tail)
    if as_url:
        block: dict[str, Any] = {"type": "image", "url": f"data:{mime or 'image/png'};base64,{data}"}
    else:
        block = {"type": "image", "base64": data, **({"mime_type": mime} if mime is not None else {})}
    try:
        image = load_image_block(block, ImageLimits(max_pixels=4096))
    except CMRMError:
        return
    assert image.mode == "RGB" and image.width * image.height <= 4096


@settings(max_examples=cases(300), deadline=None)
@given(**REPLY_CASES)
def test_any_reply_text_parses_without_raising(text, wrap):
    from cmrm_guard.langchain.tools import parse_reply

    reply = f"<tool_call>{text}</tool_call>" if wrap else text
    parsed = parse_reply(reply, ["add"])
    assert all(isinstance(call["args"], dict) for call in parsed.tool_calls)
