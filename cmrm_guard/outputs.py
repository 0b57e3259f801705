"""Value types that say what a steered call did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class AppliedSteering:
    """What steering a call actually applied (for logs, traces and ``response_metadata``).

    ``applied`` is False when the call ran unsteered; ``reason`` says why. ``fail_open`` is True
    only when the call should have been steered but was answered unsteered because the wrapper was
    built with ``strict=False`` (e.g. no pack attached in dataset mode): alert on it.

    ``pack`` names the model the pack was calibrated for (or its Hub repo); ``pack_provenance`` is
    what was verified: ``"<repo_id>@<commit>"`` for a Hub download, else ``"local path"``;
    ``pack_sha256`` is the checksum of its shift tensors.
    """

    applied: bool
    mode: str
    alpha: float | None = None
    application: str | None = None
    layers: tuple[int, ...] = ()
    policy: str = "images"
    rows_steered: tuple[bool, ...] = ()
    pack: str | None = None
    pack_revision: str | None = None
    pack_provenance: str | None = None
    pack_sha256: str | None = None
    reason: str = ""
    fail_open: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return {
            "applied": self.applied,
            "mode": self.mode,
            "alpha": self.alpha,
            "application": self.application,
            "layers": list(self.layers),
            "policy": self.policy,
            "rows_steered": list(self.rows_steered),
            "pack": self.pack,
            "pack_revision": self.pack_revision,
            "pack_provenance": self.pack_provenance,
            "pack_sha256": self.pack_sha256,
            "reason": self.reason,
            "fail_open": self.fail_open,
        }


@dataclass
class GenerationOutput:
    """Result of :meth:`SteeredVLM.generate`.

    Attributes:
        sequences: (batch, prompt + new) token ids, as ``model.generate`` returns them.
        texts: decoded new tokens of each row.
        prompt_length: padded prompt length (new tokens start there).
        steering: what was applied.
        new_token_counts: generated tokens per row (padding after an early stop not counted).
    """

    sequences: Tensor
    texts: list[str]
    prompt_length: int
    steering: AppliedSteering
    new_token_counts: list[int] = field(default_factory=list)
    raw: Any = None
    """What ``model.generate`` returned (a ``GenerateOutput`` with scores/logits when asked for)."""
