"""The one image loader: image sources -> RGB PIL images, under limits a server can enforce.

Every image cmrm-guard turns into pixels goes through this module, whether it comes from a core
conversation (``{"type": "image", "image": PIL.Image | path}``) or from a LangChain content block
(``base64``, ``data:`` / ``http(s)://`` / ``file://`` URLs, paths). :class:`ImageLimits` says where
images may come from and how big they may be; an :class:`ImageBudget` counts the images and pixels
of one request (one per request, never shared between requests).

What the loader guarantees:

- only the allowed formats are decoded (``ImageLimits.formats``, PNG / JPEG / WEBP / GIF / BMP by
  default): Pillow is never asked to identify anything else, so an EPS "image" never reaches
  Ghostscript; a declared ``mime_type`` or ``data:`` type must match the content
  (:class:`~cmrm_guard.errors.ImageFormatError`);
- sizes are checked from the header, before any pixel is decoded: width x height, aspect ratio,
  images per request and pixels per request (:class:`~cmrm_guard.errors.ImageTooLargeError`);
  Pillow's own decompression-bomb error is caught and named the same way;
- encoded bytes are read with a size cap; local files only if they are regular files (FIFOs,
  devices and folders are refused before they are opened, and opened non-blocking);
- a remote fetch or a file read has one total deadline (``timeout_s``), not a per-read timeout
  (:class:`~cmrm_guard.errors.ImageTimeoutError`); remote hosts can be allow-listed and every
  redirect hop is checked again (a redirect to another host is refused unless that host is allowed);
- error messages show URLs without user info, query or fragment, and never quote data URLs.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image

from cmrm_guard.errors import (
    ConfigError,
    ConversationError,
    CorruptImageError,
    ImageFormatError,
    ImageInputError,
    ImageTimeoutError,
    ImageTooLargeError,
    LocalImageRefusedError,
    RemoteImageRefusedError,
)

__all__ = [
    "DEFAULT_FORMATS",
    "ImageBudget",
    "ImageLimits",
    "decode_image",
    "display_url",
    "load_image",
    "load_image_block",
]

DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""Pillow format names decoded by default."""

_MIME_FORMATS = {
    "image/png": "PNG",
    "image/apng": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """Where images may come from and how big they may be.

    Attributes:
        allow_remote: fetch ``http(s)`` image URLs (off: a prompt could make the server fetch
            arbitrary URLs).
        allow_local_files: read images from local paths (off: a prompt could read server files).
        allowed_hosts: host names remote images may come from (exact, case-insensitive); ``None``
            allows any host. Every redirect hop is checked; a redirect to a host other than the
            one asked is refused unless that host is listed here.
        max_bytes: largest encoded image accepted, in bytes.
        max_pixels: largest ``width * height`` of one image (checked from the header).
        max_aspect_ratio: largest ``long side / short side`` of one image.
        max_images: most images in one request.
        max_total_pixels: most pixels of all images of one request together.
        timeout_s: total time limit of one remote fetch or file read (connect and every read).
        max_redirects: most redirects followed by one remote fetch.
        formats: Pillow format names that are decoded; anything else is refused.

    Raises:
        ConfigError: a limit that is not positive, or a format Pillow does not know.
    """

    allow_remote: bool = False
    allow_local_files: bool = False
    allowed_hosts: tuple[str, ...] | None = None
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 7680 * 4320
    max_aspect_ratio: float = 20.0
    max_images: int = 16
    max_total_pixels: int = 2 * 7680 * 4320
    timeout_s: float = 10.0
    max_redirects: int = 3
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images", "max_total_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ImageLimits.{name} must be an integer >= 1, got {value!r}")
        for name in ("max_aspect_ratio", "timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ConfigError(f"ImageLimits.{name} must be a finite number > 0, got {value!r}")
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"ImageLimits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio!r}")
        if (
            isinstance(self.max_redirects, bool)
            or not isinstance(self.max_redirects, int)
            or self.max_redirects < 0
        ):
            raise ConfigError(
                f"ImageLimits.max_redirects must be an integer >= 0, got {self.max_redirects!r}"
            )
        formats = tuple(str(f).upper() for f in self.formats)
        Image.init()
        unknown = [f for f in formats if f not in Image.OPEN]
        if not formats or unknown:
            raise ConfigError(
                f"ImageLimits.formats {list(self.formats)!r}: expected Pillow format names such as "
                f"{list(DEFAULT_FORMATS)}" + (f"; unknown: {unknown}" if unknown else "")
            )
        object.__setattr__(self, "formats", formats)
        if self.allowed_hosts is not None:
            if isinstance(self.allowed_hosts, str):
                raise ConfigError(
                    f"ImageLimits.allowed_hosts must be a list of host names, got the string "
                    f"{self.allowed_hosts!r}"
                )
            object.__setattr__(self, "allowed_hosts", tuple(str(h).lower() for h in self.allowed_hosts))


@dataclass
class ImageBudget:
    """The images and pixels one request has used so far (make one per request).

    :meth:`admit` is called with each image's size, read from its header before decoding.
    """

    limits: ImageLimits
    images: int = 0
    pixels: int = 0
    _sizes: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def admit(self, width: int, height: int, source: str) -> None:
        """Count one image of ``width x height``.

        Raises:
            ImageTooLargeError: over the per-image pixels, aspect ratio, images per request or
                pixels per request.
        """
        check_size(width, height, self.limits, source)
        limits = self.limits
        if self.images + 1 > limits.max_images:
            raise ImageTooLargeError(
                f"image {self.images + 1} ({source}) is over the limit of {limits.max_images} images "
                "per request (max_images)"
            )
        total = self.pixels + width * height
        if total > limits.max_total_pixels:
            raise ImageTooLargeError(
                f"image {self.images + 1} ({source}) brings the request to {total} pixels, over the "
                f"limit of {limits.max_total_pixels} pixels per request (max_total_image_pixels)"
            )
        self.images += 1
        self.pixels = total


def check_size(width: int, height: int, limits: ImageLimits, source: str) -> None:
    """Refuse one image whose size is over the per-image limits.

    Raises:
        ImageTooLargeError: naming the size and the limit.
    """
    pixels = width * height
    if width < 1 or height < 1:
        raise CorruptImageError(f"image ({source}) has an empty size {width}x{height}")
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            f"image ({source}) is {width}x{height} = {pixels} pixels, over the limit of "
            f"{limits.max_pixels} (max_image_pixels)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageTooLargeError(
            f"image ({source}) is {width}x{height}, an aspect ratio of {ratio:.1f}, over the limit of "
            f"{limits.max_aspect_ratio:g} (max_image_aspect_ratio)"
        )


def display_url(url: str) -> str:
    """``url`` as it may appear in a message: no user info, query or fragment; data URLs unquoted."""
    if url.startswith("data:"):
        return "a data: URL"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "a malformed URL"
    if not parts.scheme or not host:
        return url.split("?", 1)[0].split("#", 1)[0]
    return f"{parts.scheme}://{host}{port}{parts.path}"


# ----------------------------------------------------------------------------------- sources
def load_image(image: Any, limits: ImageLimits, budget: ImageBudget | None = None) -> Image.Image:
    """An RGB image from a PIL image, a path, a ``file://`` / ``data:`` / ``http(s)://`` URL.

    A PIL image is checked against the size limits and used as given (converted to RGB).

    Raises:
        ImageInputError (and subclasses): a refused source, a limit, an unreadable image.
    """
    if isinstance(image, Image.Image):
        _admit(image.width, image.height, limits, budget, "a PIL image")
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, Path):
        return _load_path(os.fspath(image), limits, budget)
    if isinstance(image, str) and image:
        return _load_url(image, limits, budget)
    raise ConversationError(f"an image must be a PIL image, a path or a URL, got {type(image).__name__}")


def load_image_block(
    block: Mapping[str, Any], limits: ImageLimits, budget: ImageBudget | None = None
) -> Image.Image:
    """Decode one standard image content block into an RGB PIL image.

    Args:
        block: ``{"type": "image", "base64": ..., "mime_type": ...}``, ``{"type": "image", "url":
            ...}`` (``data:``, ``http(s)://``, ``file://`` or a path) or ``{"type": "image",
            "path": ...}``.
        limits: source permissions and size limits.
        budget: the request's image budget (images and pixels per request); ``None``: per-image
            limits only.

    Raises:
        RemoteImageRefusedError, LocalImageRefusedError, ImageTooLargeError, ImageFormatError,
        ImageTimeoutError, CorruptImageError; ConversationError for blocks with no usable source
        (``file_id`` references).
    """
    declared = block.get("mime_type")
    declared = declared if isinstance(declared, str) and declared else None
    if block.get("base64") is not None:
        data = _b64decode(str(block["base64"]), limits)
        return decode_image(data, limits, budget, declared=declared)
    url = block.get("url")
    if isinstance(url, str) and url:
        return _load_url(url, limits, budget, declared=declared)
    path = block.get("path")
    if isinstance(path, str | os.PathLike):
        return _load_path(os.fspath(path), limits, budget, declared=declared)
    if block.get("file_id") is not None:
        raise ConversationError(
            f"image block refers to a provider file id {block['file_id']!r}: a local model has no "
            "file store; send the image as base64 or a data URL"
        )
    raise ConversationError(
        f"image block has no data: expected 'base64', 'url' or 'path', got keys {sorted(block)}"
    )


def _load_url(
    url: str, limits: ImageLimits, budget: ImageBudget | None, declared: str | None = None
) -> Image.Image:
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise CorruptImageError(
                "image data URL is not a base64 data URL (expected data:image/...;base64,...)"
            )
        url_type = header[len("data:") :].split(";", 1)[0].strip() or None
        data = _b64decode(payload, limits)
        return decode_image(data, limits, budget, declared=url_type or declared, source="a data: URL")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise ConversationError("image URL is malformed") from None
    if scheme in ("http", "https"):
        shown = display_url(url)
        if not limits.allow_remote:
            raise RemoteImageRefusedError(
                f"remote image URL {shown!r} refused: fetching remote images is off. Send the image as "
                "base64 / a data URL, or opt in with allow_remote_images=True"
            )
        data, content_type = _fetch(url, limits)
        if declared is None and content_type and content_type.startswith("image/"):
            declared = content_type
        return decode_image(data, limits, budget, declared=declared, source=shown)
    if scheme == "file":
        return _load_path(unquote(urlsplit(url).path), limits, budget, declared=declared)
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        raise ConversationError(f"image URL scheme {scheme!r} is not supported ({display_url(url)!r})")
    return _load_path(url, limits, budget, declared=declared)


def _load_path(
    path: str, limits: ImageLimits, budget: ImageBudget | None, declared: str | None = None
) -> Image.Image:
    return decode_image(_read_local(path, limits), limits, budget, declared=declared, source=path)


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
    """The bytes of a regular file, under the size cap and the total deadline."""
    if not limits.allow_local_files:
        raise LocalImageRefusedError(
            f"local image path {path!r} refused: reading local files is off. Send the image as "
            "base64 / a data URL, or opt in with allow_local_images=True"
        )
    deadline = time.monotonic() + limits.timeout_s
    try:
        info = os.stat(path)
    except (OSError, ValueError) as error:
        raise ConversationError(f"cannot read image file {path!r}: {_reason(error)}") from None
    _check_regular(info, path)
    if info.st_size > limits.max_bytes:
        raise ImageTooLargeError(
            f"image file {path!r} has {info.st_size} bytes, over the limit of {limits.max_bytes} "
            "(max_image_bytes)"
        )
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise ConversationError(f"cannot read image file {path!r}: {_reason(error)}") from None
    try:
        _check_regular(os.fstat(fd), path)  # the path may have been swapped since the stat

        def read_chunk() -> bytes:
            if time.monotonic() > deadline:
                raise ImageTimeoutError(
                    f"reading image file {path!r} took over {limits.timeout_s:g} s (image_timeout_s)"
                )
            try:
                return os.read(fd, _CHUNK)
            except BlockingIOError:
                raise LocalImageRefusedError(f"image file {path!r} would block: not a regular file") from None

        return _read_capped(read_chunk, limits.max_bytes, f"image file {path!r}")
    except ImageInputError:
        raise
    except OSError as error:
        raise ConversationError(f"cannot read image file {path!r}: {_reason(error)}") from None
    finally:
        os.close(fd)


def _check_regular(info: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a regular file"
        )
        raise LocalImageRefusedError(f"image path {path!r} is {kind}: only regular files are read")


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or type(error).__name__


def _check_host(host: str, limits: ImageLimits, first_host: str | None, shown: str) -> None:
    allowed = limits.allowed_hosts
    if allowed is not None and host not in allowed:
        raise RemoteImageRefusedError(
            f"remote image URL {shown!r} refused: host {host!r} is not in allowed_image_hosts {list(allowed)}"
        )
    if first_host is not None and host != first_host and allowed is None:
        raise RemoteImageRefusedError(
            f"remote image from {first_host!r} redirects to another host ({shown!r}): refused; list "
            "the hosts in allowed_image_hosts to follow such redirects"
        )


def _fetch(url: str, limits: ImageLimits) -> tuple[bytes, str | None]:
    """(body, content type) of an http(s) URL, every hop checked, under one total deadline."""
    deadline = time.monotonic() + limits.timeout_s
    current = url
    first_host: str | None = None
    for _hop in range(limits.max_redirects + 1):
        shown = display_url(current)
        try:
            parts = urlsplit(current)
            scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise ConversationError(f"image URL {shown!r} is malformed") from None
        if scheme not in ("http", "https") or not host:
            raise RemoteImageRefusedError(f"remote image URL {shown!r} refused: expected an http(s) URL")
        _check_host(host, limits, first_host, shown)
        first_host = first_host or host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            status, location, content_type, body = _get(scheme, host, port, target, limits, deadline, shown)
        except TimeoutError:
            raise ImageTimeoutError(
                f"fetching image {shown!r} took over {limits.timeout_s:g} s (image_timeout_s)"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise ConversationError(f"cannot fetch image {shown!r}: {_reason(error)}") from None
        if status in _REDIRECTS:
            if not location:
                raise ConversationError(f"image URL {shown!r} redirects (HTTP {status}) with no Location")
            current = urljoin(current, location)
            continue
        if status != 200:
            raise ConversationError(f"cannot fetch image {shown!r}: HTTP {status}")
        return body, content_type
    raise RemoteImageRefusedError(
        f"remote image {display_url(url)!r} redirects more than {limits.max_redirects} times"
    )


def _get(
    scheme: str,
    host: str,
    port: int | None,
    target: str,
    limits: ImageLimits,
    deadline: float,
    shown: str,
) -> tuple[int, str | None, str | None, bytes]:
    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = http.client.HTTPSConnection(
            host, port, timeout=remaining(), context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=remaining())
    try:
        connection.request("GET", target, headers={"User-Agent": "cmrm-guard", "Accept": "image/*"})
        sock: socket.socket | None = connection.sock  # getresponse may hand it to the response
        if sock is not None:
            sock.settimeout(remaining())
        response = connection.getresponse()
        status = response.status
        if status in _REDIRECTS or status != 200:
            return status, response.getheader("Location"), None, b""
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
            raise ImageTooLargeError(
                f"remote image {shown!r} declares {declared.strip()} bytes, over the limit of "
                f"{limits.max_bytes} (max_image_bytes)"
            )
        content_type = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower() or None

        def read_chunk() -> bytes:
            if sock is not None:
                sock.settimeout(remaining())  # what is left of the total deadline, not a per-read timeout
            else:
                remaining()
            return response.read1(_CHUNK)

        return (
            status,
            None,
            content_type,
            _read_capped(read_chunk, limits.max_bytes, f"remote image {shown!r}"),
        )
    finally:
        connection.close()


def _read_capped(read_chunk: Callable[[], bytes], max_bytes: int, what: str) -> bytes:
    """The bytes ``read_chunk()`` returns until it returns none, refused past ``max_bytes``."""
    chunks: list[bytes] = []
    total = 0
    while chunk := read_chunk():
        total += len(chunk)
        if total > max_bytes:
            raise ImageTooLargeError(f"{what} is over the limit of {max_bytes} bytes (max_image_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------- decoding
def _admit(width: int, height: int, limits: ImageLimits, budget: ImageBudget | None, source: str) -> None:
    if budget is not None:
        budget.admit(width, height, source)
    else:
        check_size(width, height, limits, source)


def decode_image(
    data: bytes,
    limits: ImageLimits,
    budget: ImageBudget | None = None,
    *,
    declared: str | None = None,
    source: str = "inline data",
) -> Image.Image:
    """Decode encoded image bytes into an RGB image.

    Only ``limits.formats`` are tried; a ``declared`` MIME type must name the format found. The size
    limits (and the request's ``budget``) are checked from the header, before the pixels are decoded.

    Raises:
        ImageFormatError, ImageTooLargeError, CorruptImageError.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image ({source}) has {len(data)} bytes, over the limit of {limits.max_bytes} (max_image_bytes)"
        )
    expected = None
    if declared is not None:
        expected = _MIME_FORMATS.get(declared.strip().lower())
        if expected is None or expected not in limits.formats:
            raise ImageFormatError(
                f"image ({source}) is declared as {declared[:40]!r}: expected one of {_allowed_mimes(limits)}"
            )
    try:
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image ({source}) is too large to decode: {error}") from None
    except Image.UnidentifiedImageError:
        raise ImageFormatError(
            f"image ({source}) is not a {'/'.join(limits.formats)} image (or it is corrupt)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CorruptImageError(f"image ({source}) cannot be decoded: {error}") from None
    if expected is not None and image.format != expected:
        raise ImageFormatError(
            f"image ({source}) is declared as {declared!r} but its content is {image.format}"
        )
    _admit(image.width, image.height, limits, budget, source)
    try:
        image.load()
        return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image ({source}) is too large to decode: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CorruptImageError(f"image ({source}) is truncated or corrupt: {error}") from None


def _allowed_mimes(limits: ImageLimits) -> list[str]:
    seen: list[str] = []
    for mime, name in _MIME_FORMATS.items():
        if name in limits.formats and name not in {_MIME_FORMATS[m] for m in seen}:
            seen.append(mime)
    return seen
