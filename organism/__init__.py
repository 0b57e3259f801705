"""The model organism's research pipeline: build, calibrate and sweep, evaluate, probe.

Not part of the installed library (``cmrm_guard.organism`` loads and demonstrates the shipped
organism; this package rebuilds and measures it). Run from the repository root:
``python -m organism build|sweep|evaluate|probe`` (``organism/README.md``).

Modules: ``vision`` (stage 1: vision tower + projector), ``train`` (stage 2: the LoRA and its
training examples), ``texts`` (texts only training uses), ``build``, ``sweep`` / ``pipeline``
(CMRM calibration, sweep, evaluation), ``probe``, ``cli``. Written results: :data:`RESULTS`.
"""

from __future__ import annotations

from pathlib import Path

from cmrm_guard.organism.assemble import PARTS

RESULTS = Path(__file__).resolve().parent / "results"
"""Where the pipeline writes what it measured on the shipped parts (``sweep.json``,
``evaluation_<split>.json``, ``probe_<split>.json``, ``splits.json``)."""


def results_dir(parts: str | Path | None = None) -> Path:
    """Where results about ``parts`` go: :data:`RESULTS` for the shipped parts, else ``parts`` itself
    (a candidate build's measurements stay beside it and never overwrite the shipped ones)."""
    folder = Path(parts) if parts is not None else PARTS
    return RESULTS if folder.resolve() == PARTS.resolve() else folder
