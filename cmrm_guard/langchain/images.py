"""Image content blocks -> PIL images, with the limits a server-side chat model needs.

LangChain normalises every image block it knows (standard ``{"type": "image", "base64": ...}``,
``{"type": "image", "url": ...}``, OpenAI ``image_url``, the older ``source_type`` form, Anthropic
``source``) into a standard :class:`langchain_core.messages.content.ImageContentBlock` through
``message.content_blocks``; this module only turns such a block into pixels:

- ``base64`` data and ``data:`` URLs are decoded locally;
- ``http(s)`` URLs are fetched only when ``allow_remote`` is set (:class:`RemoteImageRefusedError`);
- local paths (``path``, ``file://`` URLs, bare paths) are read only when ``allow_local_files`` is
  set (:class:`LocalImageRefusedError`);
- encoded size and pixel count are capped before decoding (:class:`ImageTooLargeError`);
- undecodable data raises :class:`CorruptImageError`.

Nothing here imports LangChain.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from cmrm_guard.errors import (
    ConversationError,
    CorruptImageError,
    ImageTooLargeError,
    LocalImageRefusedError,
    RemoteImageRefusedError,
)

__all__ = ["ImageLimits", "load_image_block"]


@dataclass(frozen=True)
class ImageLimits:
    """Where images may come from and how big they may be.

    Attributes:
        allow_remote: fetch ``http(s)`` image URLs (off: a prompt could make the server fetch
            arbitrary URLs).
        allow_local_files: read images from local paths (off: a prompt could read server files).
        max_bytes: largest encoded image accepted, in bytes.
        max_pixels: largest ``width * height`` accepted (checked from the header, before decoding).
        timeout_s: time limit of a remote fetch.
    """

    allow_remote: bool = False
    allow_local_files: bool = False
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 7680 * 4320
    timeout_s: float = 10.0


def load_image_block(block: Mapping[str, Any], limits: ImageLimits) -> Image.Image:
    """Decode one standard image content block into an RGB PIL image.

    Args:
        block: ``{"type": "image", "base64": ..., "mime_type": ...}``, ``{"type": "image", "url":
            ...}`` (``data:``, ``http(s)://``, ``file://`` or a path) or ``{"type": "image",
            "path": ...}``.
        limits: source permissions and size limits.

    Raises:
        RemoteImageRefusedError, LocalImageRefusedError, ImageTooLargeError, CorruptImageError;
        ConversationError for blocks with no usable source (``file_id`` references).
    """
    if block.get("base64") is not None:
        return decode_image(_b64decode(str(block["base64"]), limits), limits)
    url = block.get("url")
    if isinstance(url, str) and url:
        return _load_url(url, limits)
    path = block.get("path")
    if isinstance(path, str | os.PathLike):
        return decode_image(_read_local(os.fspath(path), limits), limits, source=os.fspath(path))
    if block.get("file_id") is not None:
        raise ConversationError(
            f"image block refers to a provider file id {block['file_id']!r}: a local model has no "
            "file store; send the image as base64 or a data URL"
        )
    raise ConversationError(
        f"image block has no data: expected 'base64', 'url' or 'path', got keys {sorted(block)}"
    )


def _load_url(url: str, limits: ImageLimits) -> Image.Image:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise CorruptImageError(
                f"data URL {url[:40]!r}... is not a base64 data URL (expected data:image/...;base64,...)"
            )
        return decode_image(_b64decode(payload, limits), limits)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise RemoteImageRefusedError(
                f"remote image URL {url!r} refused: fetching remote images is off. Send the image as "
                "base64 / a data URL, or opt in with allow_remote_images=True"
            )
        return decode_image(_fetch(url, limits), limits, source=url)
    if scheme == "file":
        local = unquote(urlparse(url).path)
        return decode_image(_read_local(local, limits), limits, source=local)
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        raise ConversationError(f"image URL scheme {scheme!r} is not supported ({url[:60]!r})")
    return decode_image(_read_local(url, limits), limits, source=url)


def _b64decode(data: str, limits: ImageLimits) -> bytes:
    compact = "".join(data.split())
    if len(compact) * 3 // 4 > limits.max_bytes:
        raise ImageTooLargeError(
            f"image data is about {len(compact) * 3 // 4} bytes, over the limit of {limits.max_bytes} "
            "(max_image_bytes)"
        )
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as error:
        raise CorruptImageError(f"image data is not valid base64: {error}") from None


def _read_local(path: str, limits: ImageLimits) -> bytes:
    if not limits.allow_local_files:
        raise LocalImageRefusedError(
            f"local image path {path!r} refused: reading local files is off. Send the image as "
            "base64 / a data URL, or opt in with allow_local_images=True"
        )
    try:
        size = os.path.getsize(path)
        if size > limits.max_bytes:
            raise ImageTooLargeError(
                f"image file {path!r} has {size} bytes, over the limit of {limits.max_bytes}"
            )
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ConversationError(f"cannot read image file {path!r}: {error}") from None


def _fetch(url: str, limits: ImageLimits) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "cmrm-guard"})
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:  # noqa: S310
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ImageTooLargeError(
                    f"remote image {url!r} declares {declared} bytes, over the limit of {limits.max_bytes}"
                )
            data = response.read(limits.max_bytes + 1)
    except OSError as error:
        raise ConversationError(f"cannot fetch image {url!r}: {error}") from None
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"remote image {url!r} is over the limit of {limits.max_bytes} bytes")
    return data


def decode_image(data: bytes, limits: ImageLimits, *, source: str = "inline data") -> Image.Image:
    """Decode encoded image bytes into an RGB image, checking the pixel limit before decoding."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image ({source}) has {len(data)} bytes, over the limit of {limits.max_bytes}"
        )
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image ({source}) is too large to decode: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"image ({source}) cannot be decoded: {error}") from None
    pixels = image.width * image.height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            f"image ({source}) is {image.width}x{image.height} = {pixels} pixels, over the limit of "
            f"{limits.max_pixels} (max_image_pixels)"
        )
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"image ({source}) is truncated or corrupt: {error}") from None
