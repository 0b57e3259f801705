"""Chat conversations: the input format every adapter speaks, and the CMRM twins built from it.

A conversation is the Hugging Face chat format: a list of ``{"role": ..., "content": ...}``
messages whose ``content`` is a string or a list of items ``{"type": "text", "text": ...}`` and
``{"type": "image", "image": PIL.Image | path}``. The *text-only twin* drops every image item (the
chat template then emits no image placeholder tokens); the *corrupted twin* swaps every image for an
uninformative one of the same size (CMRM holds the modality, removes the content).

Images are loaded by :mod:`cmrm_guard.images` (the one image loader) under an
:class:`~cmrm_guard.images.ImageLimits`; the core's default, :data:`CORE_IMAGE_LIMITS`, reads local
files (the caller of the core API is trusted with paths) and refuses remote URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cmrm_guard import images as image_loader
from cmrm_guard.errors import ConversationError, ImageInputError, PlaceholderTextError
from cmrm_guard.images import ImageBudget, ImageLimits

Message = dict[str, Any]
Conversation = list[Message]

IMAGE_TYPES = ("image", "image_url", "input_image")

CORE_IMAGE_LIMITS = ImageLimits(allow_local_files=True)
"""Image limits of the core API: local paths are read, remote URLs refused, default size limits."""

_PLACEHOLDER_WORDS = ("image", "img", "vision", "video", "boi", "eoi")


def _is_image_item(item: Any) -> bool:
    return isinstance(item, Mapping) and item.get("type") in IMAGE_TYPES


def check_conversation(conversation: Any, placeholders: Sequence[str] = ()) -> Conversation:
    """Validate the shape of one conversation and return it as a list of messages.

    Messages are named by index and field; their text is never quoted (it may be private).

    Args:
        conversation: a list of ``{"role": ..., "content": ...}`` messages.
        placeholders: the model's image placeholder tokens (:func:`placeholder_tokens`); text that
            holds one is refused, so a user cannot inject image placeholders.

    Raises:
        ConversationError: naming the message and field that is malformed, or an item that is
            neither text nor an image (audio, video, files: the processor would try to load them).
        ImageInputError: an image in a system message (chat templates do not show it).
        PlaceholderTextError: text holding one of ``placeholders``.
    """
    if isinstance(conversation, Mapping | str | bytes):
        raise ConversationError(
            f"a conversation must be a list of messages like "
            f'[{{"role": "user", "content": "..."}}], got {type(conversation).__name__}'
        )
    messages = list(conversation)
    if not messages:
        raise ConversationError("a conversation must hold at least one message, got []")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            found = sorted(map(str, message)) if isinstance(message, Mapping) else type(message).__name__
            raise ConversationError(f"message {i} must be a dict with 'role' and 'content', got {found}")
        content = message["content"]
        if isinstance(content, str):
            _check_placeholders(content, placeholders, i, None)
            continue
        if not isinstance(content, Sequence):
            raise ConversationError(
                f"message {i} content must be a string or a list of items, got {type(content).__name__}"
            )
        for j, item in enumerate(content):
            if not isinstance(item, Mapping) or "type" not in item:
                found = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
                raise ConversationError(f"message {i} item {j} must be a dict with a 'type', got {found}")
            if item["type"] == "text":
                if not isinstance(item.get("text"), str):
                    raise ConversationError(f"message {i} item {j}: a text item needs a string 'text'")
                _check_placeholders(item["text"], placeholders, i, j)
            elif not _is_image_item(item):  # audio/video/file items would reach the processor's loaders
                raise ConversationError(
                    f"message {i} item {j} has type {str(item['type'])[:40]!r}: this model reads text and"
                    f" image items only ({', '.join(('text', *IMAGE_TYPES))})"
                )
            if _is_image_item(item):
                if image_of(item) is None:
                    raise ConversationError(
                        f"message {i} item {j}: an image item needs 'image' (a PIL image or a local path)"
                    )
                if message["role"] == "system":
                    raise ImageInputError(
                        f"message {i} (role 'system') item {j} is an image: chat templates do not show "
                        "images in system messages; send it in a user message"
                    )
    return messages


def _check_placeholders(text: str, placeholders: Sequence[str], i: int, j: int | None) -> None:
    for token in placeholders:
        if token and token in text:
            where = f"message {i}" + (f" item {j}" if j is not None else "")
            raise PlaceholderTextError(
                f"{where}: text holds the model's image placeholder {token!r}; images are sent as "
                "image items, and placeholder tokens typed as text are refused"
            )


def placeholder_tokens(processor: Any) -> tuple[str, ...]:
    """The image / video placeholder tokens of a processor (``<image>``, ``<|image_pad|>``, ...).

    Taken from the processor's ``*_token`` attributes and the tokenizer's special tokens whose
    text names an image, video or vision span.
    """
    found: set[str] = set()
    tokenizer = getattr(processor, "tokenizer", processor)
    for owner in (processor, tokenizer):
        for name in dir(type(owner)) + list(getattr(owner, "__dict__", {})):
            if not name.endswith("_token") or name.startswith("_"):
                continue
            if not any(word in name for word in _PLACEHOLDER_WORDS):
                continue
            try:
                value = getattr(owner, name, None)
            except Exception:  # a property that fails is no token
                continue
            if isinstance(value, str) and value:
                found.add(value)
    specials: list[Any] = []
    for attr in ("additional_special_tokens", "all_special_tokens"):
        try:
            specials.extend(getattr(tokenizer, attr, None) or [])
        except Exception:  # some tokenizers raise for unset special tokens
            continue
    with contextlib.suppress(Exception):  # a tokenizer without an added vocabulary
        specials.extend((getattr(tokenizer, "get_added_vocab", lambda: {})() or {}).keys())
    for token in specials:
        text = str(token)
        markup = any(mark in text for mark in "<[|")
        if markup and len(text) > 2 and any(word in text.lower() for word in _PLACEHOLDER_WORDS):
            found.add(text)
    return tuple(sorted(found))


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


def load_image(
    image: Any, limits: ImageLimits | None = None, budget: ImageBudget | None = None
) -> Image.Image:
    """Open an image given as a PIL image, a local path or a URL, as RGB (:mod:`cmrm_guard.images`).

    Args:
        image: a PIL image (used as given, the caller decoded it), a path, or a ``file://`` /
            ``data:`` URL (``http(s)`` only if ``limits.allow_remote``).
        limits: default :data:`CORE_IMAGE_LIMITS`.
        budget: the request's image budget (images and pixels per request), if any.

    Raises:
        ImageInputError (and subclasses): a refused source, a limit, an unreadable image.
    """
    if isinstance(image, Image.Image):  # decoded by the caller already: used as given
        return image.convert("RGB") if image.mode != "RGB" else image
    limits = limits or CORE_IMAGE_LIMITS
    if isinstance(image, str) and image.startswith(("http://", "https://")) and not limits.allow_remote:
        raise ConversationError(
            f"remote image URL {image_loader.display_url(image)!r} is not fetched by cmrm-guard's core: "
            "download it and pass a PIL image"
        )
    return image_loader.load_image(image, limits, budget)


def resolve_images(conversation: Conversation, limits: ImageLimits | None = None) -> Conversation:
    """Copy of the conversation whose image items hold loaded PIL images under ``"image"``.

    The images of the conversation share one :class:`~cmrm_guard.images.ImageBudget`.
    """
    limits = limits or CORE_IMAGE_LIMITS
    budget = ImageBudget(limits)
    resolved: Conversation = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            resolved.append(dict(message))
            continue
        items = []
        for item in content:
            if _is_image_item(item):
                items.append({"type": "image", "image": load_image(image_of(item), limits, budget)})
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
