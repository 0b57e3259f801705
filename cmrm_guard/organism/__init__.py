"""The model organism: a small real VLM (SmolLM2-135M-Instruct + a tiny CLIP tower, LLaVA
architecture) that loses its text safety with images, shipped with the CMRM pack that repairs it.
See ``docs/organism.md``.

Modules: ``backbone`` (the GGUF backbone), ``images`` (Pillow drawing), ``texts`` and ``data``
(prompt sets shipped in ``prompts/``, splits, examples), ``assemble`` / ``load`` (the parts shipped
in ``parts/`` -> transformers folder -> ``SteeredVLM``), ``evaluate`` (prompts for the
:mod:`cmrm_guard.eval` harness, the judge with the decoder's fluency, rates tables), ``demo``.
The pipeline that builds and measures the organism lives outside the library, in the
repository's ``organism/`` folder. Importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["load_organism", "run_organism_demo"]


def __getattr__(name: str):
    if name == "load_organism":
        from cmrm_guard.organism.load import load_organism

        return load_organism
    if name == "run_organism_demo":
        from cmrm_guard.organism.demo import run_organism_demo

        return run_organism_demo
    raise AttributeError(f"module 'cmrm_guard.organism' has no attribute {name!r}")
