"""Chat conversations: the input format every adapter speaks, and the CMRM twins built from it.

A conversation is the Hugging Face chat format: a list of ``{"role": ..., "content": ...}``
messages whose ``content`` is a string or a list of items ``{"type": "text", "text": ...}`` and
``{"type": "image", "image": PIL.Image | path}``. The *text-only twin* drops every image item (the
chat template then emits no image placeholder tokens); the *corrupted twin* swaps every image for an
uninformative one of the same size (CMRM holds the modality, removes the content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmrm_guard.errors import ConversationError

Message = dict[str, Any]
Conversation = list[Message]

IMAGE_TYPES = ("image", "image_url", "input_image")


def _is_image_item(item: Any) -> bool:
    return isinstance(item, Mapping) and item.get("type") in IMAGE_TYPES


def check_conversation(conversation: Any) -> Conversation:
    """Validate the shape of one conversation and return it as a list of messages.

    Raises:
        ConversationError: naming the message and field that is malformed.
    """
    if isinstance(conversation, Mapping | str | bytes):
        raise ConversationError(
            f"a conversation must be a list of messages like "
            f'[{{"role": "user", "content": "..."}}], got {type(conversation).__name__}: '
            f"{str(conversation)[:80]!r}"
        )
    messages = list(conversation)
    if not messages:
        raise ConversationError("a conversation must hold at least one message, got []")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ConversationError(
                f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}"
            )
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, Sequence):
            raise ConversationError(
                f"message {i} content must be a string or a list of items, got {type(content).__name__}"
            )
        for j, item in enumerate(content):
            if not isinstance(item, Mapping) or "type" not in item:
                raise ConversationError(
                    f"message {i} item {j} must be a dict with a 'type', got {item!r:.80}"
                )
            if item["type"] == "text" and not isinstance(item.get("text"), str):
                raise ConversationError(f"message {i} item {j}: a text item needs a string 'text'")
            if _is_image_item(item) and image_of(item) is None:
                raise ConversationError(
                    f"message {i} item {j}: an image item needs 'image' (a PIL image or a local path)"
                )
    return messages


def image_of(item: Mapping[str, Any]) -> Any:
    """The image object (PIL image, path or URL string) of an image content item."""
    for key in ("image", "url", "path", "image_url"):
        value = item.get(key)
        if isinstance(value, Mapping):  # OpenAI style {"image_url": {"url": ...}}
            value = value.get("url")
        if value is not None:
            return value
    return None


def images_in(conversation: Conversation) -> list[Any]:
    """The image objects of a conversation, in order."""
    return [
        image_of(item)
        for message in conversation
        if not isinstance(message["content"], str)
        for item in message["content"]
        if _is_image_item(item)
    ]


def count_images(conversation: Conversation) -> int:
    """Number of image items in a conversation."""
    return len(images_in(conversation))


def has_image(conversation: Conversation) -> bool:
    """Whether any message of the conversation carries an image."""
    return count_images(conversation) > 0


def load_image(image: Any) -> Image.Image:
    """Open an image given as a PIL image or a local file path, as RGB.

    Raises:
        ConversationError: for remote URLs (fetching is the caller's decision) or unreadable files.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, str | Path):
        text = str(image)
        if text.startswith(("http://", "https://")):
            raise ConversationError(
                f"remote image URL {text!r} is not fetched by cmrm-guard's core: download it and pass "
                "a PIL image"
            )
        try:
            with Image.open(text) as opened:
                return opened.convert("RGB")
        except (OSError, ValueError) as error:
            raise ConversationError(f"cannot read image {text!r}: {error}") from None
    raise ConversationError(f"an image must be a PIL image or a local path, got {type(image).__name__}")


def resolve_images(conversation: Conversation) -> Conversation:
    """Copy of the conversation whose image items hold loaded PIL images under ``"image"``."""
    resolved: Conversation = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            resolved.append(dict(message))
            continue
        items = []
        for item in content:
            if _is_image_item(item):
                items.append({"type": "image", "image": load_image(image_of(item))})
            else:
                items.append(dict(item))
        resolved.append({**message, "content": items})
    return resolved


def text_only_twin(conversation: Conversation) -> Conversation:
    """The conversation with every image item removed, all else unchanged."""
    twin: Conversation = []
    for message in conversation:
        content = message["content"]
        if not isinstance(content, str):
            content = [item for item in content if not _is_image_item(item)]
        twin.append({**message, "content": content})
    return twin


def uninformative_image(
    size: tuple[int, int], corruption: str, mean: Sequence[float], std: Sequence[float], seed: int
) -> Image.Image:
    """A content-free RGB image of ``size`` (width, height).

    ``"blank"``: every pixel at the processor's mean colour. ``"noise"``: Gaussian noise around the
    mean with the processor's standard deviation, from a generator seeded with ``seed``.
    """
    width, height = size
    mean_255 = np.asarray(mean, dtype=np.float64) * 255.0
    if corruption == "blank":
        pixels = np.broadcast_to(mean_255, (height, width, 3))
    elif corruption == "noise":
        rng = np.random.default_rng(seed)
        pixels = mean_255 + rng.standard_normal((height, width, 3)) * np.asarray(std) * 255.0
    else:
        raise ConversationError(f"unknown corruption {corruption!r}: expected 'blank' or 'noise'")
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def corrupted_twin(
    conversation: Conversation,
    corruption: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> Conversation:
    """The conversation with every image replaced by an uninformative image of the same size."""
    twin: Conversation = []
    index = 0
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            twin.append(dict(message))
            continue
        items = []
        for item in content:
            if _is_image_item(item):
                image = load_image(image_of(item))
                items.append(
                    {
                        "type": "image",
                        "image": uninformative_image(image.size, corruption, mean, std, seed + index),
                    }
                )
                index += 1
            else:
                items.append(dict(item))
        twin.append({**message, "content": items})
    return twin


def fingerprint(conversations: Sequence[Conversation]) -> str:
    """sha256 over the text and image bytes of conversations (calibration data hash)."""
    digest = hashlib.sha256()
    for conversation in conversations:
        for message in conversation:
            digest.update(str(message["role"]).encode())
            content = message["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for item in items:
                if _is_image_item(item):
                    image = load_image(image_of(item))
                    digest.update(f"image:{image.size}".encode())
                    digest.update(image.tobytes())
                else:
                    digest.update(str(item.get("text", "")).encode())
        digest.update(b"\x00")
    return digest.hexdigest()
