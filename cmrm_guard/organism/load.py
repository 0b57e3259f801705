"""Load the shipped organism as a :class:`~cmrm_guard.SteeredVLM` (no training, under a minute)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrm_guard.organism import assemble as asm

if TYPE_CHECKING:
    from cmrm_guard.steered import SteeredVLM
    from cmrm_guard.vectors.inputs import VectorsLike


def organism_folder(parts: str | Path | None = None) -> Path:
    """The assembled transformers folder of the organism (written once into the cache)."""
    return asm.assemble_folder(Path(parts) if parts else None)


def pack_folder(parts: str | Path | None = None) -> Path | None:
    """The vector pack beside the parts (``<parts>/pack``), or ``None`` when they have none."""
    folder = Path(parts or asm.PARTS) / "pack"
    return folder if (folder / "pack_config.json").exists() else None


def load_organism(
    parts: str | Path | None = None, *, vectors: VectorsLike | None = "shipped", **kwargs: Any
) -> SteeredVLM:
    """``SteeredVLM.from_pretrained`` on the assembled organism, with its shipped pack.

    Args:
        parts: folder of the parts (default :data:`~cmrm_guard.organism.assemble.PARTS`, the shipped ones).
        vectors: ``"shipped"`` (the pack beside the parts), ``None``, or anything
            :class:`~cmrm_guard.SteeredVLM` accepts.
        **kwargs: passed to :meth:`SteeredVLM.from_pretrained` (``config``, ``strict``, ...).

    Example:
        >>> svlm = load_organism()
        >>> svlm.chat(conversation, max_new_tokens=20)
    """
    import torch
    from transformers.utils import logging as hf_logging

    from cmrm_guard.steered import SteeredVLM

    folder = organism_folder(parts)  # the first call assembles it (long: progress bars shown)
    if isinstance(vectors, str) and vectors == "shipped":
        vectors = pack_folder(parts)
    kwargs.setdefault("dtype", torch.float32)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # reading the assembled folder takes a second: no bar
    try:
        return SteeredVLM.from_pretrained(folder, vectors=vectors, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
