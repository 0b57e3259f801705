"""Errors and warnings raised by cmrm-guard.

Every error derives from :class:`CMRMError` and also from the builtin exception a caller would
expect (``ValueError``, ``KeyError``, ...), so ``except ValueError`` written before cmrm-guard keeps
working. Messages name the bad value, what was expected and, where there is one, the way out.
Warnings are :class:`CMRMWarning` (a ``UserWarning``), so they can be filtered or turned into errors
with ``warnings.simplefilter("error", CMRMWarning)``.
"""

from __future__ import annotations


class CMRMError(Exception):
    """Base class of every error cmrm-guard raises."""


class CMRMWarning(UserWarning):
    """Base class of every warning cmrm-guard emits (e.g. a fail-open call answered unsteered)."""


class ConfigError(CMRMError, ValueError):
    """A steering or calibration setting is invalid (unknown mode, non-finite alpha, ...)."""


class VectorError(CMRMError, ValueError):
    """Shift vectors have the wrong shape, layer set or values (NaN/inf)."""


class LayerIndexError(CMRMError, IndexError):
    """A layer index is outside the model's decoder layer stack."""


class UnsupportedArchitectureError(CMRMError, ValueError):
    """The language decoder of a model could not be identified with certainty."""


class ModelNotFoundError(CMRMError, FileNotFoundError):
    """A local model path given to ``from_pretrained`` is not a folder."""


class AdapterRegistrationError(CMRMError, KeyError):
    """An adapter was registered twice for one ``model_type``, or with no ``model_type``."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConversationError(CMRMError, ValueError):
    """A chat conversation is malformed, or holds an image where none is allowed."""


class PackError(CMRMError, ValueError):
    """A vector pack is malformed: missing files, bad checksum, unknown format version."""


class PackMismatchError(PackError):
    """A vector pack does not fit the model it is attached to."""


class SteeringUnavailableError(CMRMError, RuntimeError):
    """Steering was required (``strict=True``) but cannot be applied to this call."""


class SteeringLockedError(CMRMError, PermissionError):
    """A request asked for weaker steering than the deployer's ``SteeringLock`` allows."""

    def __str__(self) -> str:  # PermissionError would format (errno, strerror) pairs; keep the message
        return str(self.args[0]) if self.args else ""


class ImageInputError(ConversationError):
    """An image in a chat message cannot be used (refused source, over a limit, unreadable)."""


class RemoteImageRefusedError(ImageInputError):
    """An image given as an http(s) URL was refused: fetching remote images was not enabled."""


class LocalImageRefusedError(ImageInputError):
    """An image given as a local file path was refused: reading local files was not enabled."""


class ImageTooLargeError(ImageInputError):
    """An image is over the byte-size or pixel-count limit."""


class CorruptImageError(ImageInputError):
    """Image data could not be decoded (bad base64, truncated or not an image)."""


class ImageFormatError(CorruptImageError):
    """An image is not in an allowed format, or its declared type does not match its content."""


class ImageTimeoutError(ImageInputError, TimeoutError):
    """Fetching or reading an image took longer than its total deadline."""


class PlaceholderTextError(ConversationError):
    """Message text holds a model's image placeholder token (``<image>``, ``<|image_pad|>``, ...)."""


class NotSteerableModelError(CMRMError, TypeError):
    """An agent's model cannot be CMRM-steered (it is not a ``ChatSteeredVLM``)."""


class PackNotFoundError(PackError):
    """A vector pack's Hub repo or revision does not exist (or is private or gated and hidden from the caller)."""


class HubError(CMRMError, OSError):
    """A request to the Hugging Face Hub failed: unreachable, refused or answered with an error."""


class HubTimeoutError(HubError, TimeoutError):
    """A Hub call or download did not finish within its total deadline."""


class HubAuthError(HubError, PermissionError):
    """The Hub refused the token (401) or the access it asked for (403)."""


class HubServerError(HubError, ConnectionError):
    """The Hub answered with a server error (5xx) or a rate limit (429)."""
