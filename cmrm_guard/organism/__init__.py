"""The model organism: a small real VLM (SmolLM2-135M-Instruct + a tiny CLIP tower, LLaVA
architecture) that loses its text safety with images, and the pipeline that builds, measures and
demonstrates it. See ``docs/organism.md``.

Modules: ``backbone`` (GGUF backbone), ``images`` (Pillow drawing), ``data`` (splits, examples),
``vision`` (stage 1), ``train`` (stage 2 LoRA), ``assemble`` / ``load`` (parts -> transformers
folder -> ``SteeredVLM``), ``evaluate`` (prompts for the
``cmrm_guard.eval`` harness, the judge with the decoder's fluency, rates tables),
``sweep`` / ``pipeline`` (CMRM calibration, sweep, evaluation), ``build``, ``demo``, ``cli``.
Importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["load_organism", "build_organism", "run_organism_demo"]


def __getattr__(name: str):
    if name == "load_organism":
        from cmrm_guard.organism.load import load_organism

        return load_organism
    if name == "build_organism":
        from cmrm_guard.organism.build import build_organism

        return build_organism
    if name == "run_organism_demo":
        from cmrm_guard.organism.demo import run_organism_demo

        return run_organism_demo
    raise AttributeError(f"module 'cmrm_guard.organism' has no attribute {name!r}")
