"""Load the shipped organism as a :class:`~cmrm_guard.SteeredVLM` (no training, under a minute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmrm_guard.organism import assemble as asm


def organism_folder(parts: str | Path | None = None) -> Path:
    """The assembled transformers folder of the organism (written once into the cache)."""
    return asm.assemble_folder(Path(parts) if parts else None)


def pack_folder(parts: str | Path | None = None) -> Path | None:
    """The organism's vector pack (``organism/pack``), or ``None`` when it has none yet."""
    folder = Path(parts or asm.repo_organism_dir()) / "pack"
    return folder if (folder / "pack_config.json").exists() else None


def load_organism(parts: str | Path | None = None, *, vectors: Any = "shipped", **kwargs: Any):
    """``SteeredVLM.from_pretrained`` on the assembled organism, with its shipped pack.

    Args:
        parts: folder of the shipped parts (default ``<repository>/organism``).
        vectors: ``"shipped"`` (the pack beside the parts), ``None``, or anything
            :class:`~cmrm_guard.SteeredVLM` accepts.
        **kwargs: passed to :meth:`SteeredVLM.from_pretrained` (``config``, ``strict``, ...).

    Example:
        >>> svlm = load_organism()
        >>> svlm.chat(conversation, max_new_tokens=20)
    """
    import torch

    from cmrm_guard.steered import SteeredVLM

    folder = organism_folder(parts)
    if isinstance(vectors, str) and vectors == "shipped":
        vectors = pack_folder(parts)
    kwargs.setdefault("dtype", torch.float32)
    return SteeredVLM.from_pretrained(folder, vectors=vectors, **kwargs)
