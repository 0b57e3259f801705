"""Tiny, randomly initialised, real vision-language models of every supported architecture.

Every builder here constructs a genuine ``transformers`` ``*ForConditionalGeneration`` model from its
real configuration class, shrunk to about 200k parameters, together with the genuine processor of
that architecture. Nothing is downloaded: the tokenizer is a byte-level BPE trained in memory on a
small built-in English corpus, and the image processors are the PIL variants (torchvision is not
needed).

The vision tower of every model deliberately has *more* layers than its language decoder
(:data:`VISION_LAYERS` vs :data:`TEXT_LAYERS`), so code that mistakes one stack for the other fails
loudly instead of silently steering the wrong layers.

Per architecture (decoder layers at ``model.language_model.layers`` for all; each layer returns a
tensor), for one 32x32 image:

============  ====================  ===========================================================
model_type    processor             placeholder written per image
============  ====================  ===========================================================
llava         LlavaProcessor        16 x ``<image>``
llava_next    LlavaNextProcessor    10 x ``<image>`` (4 base + 4 tile + 2 row newlines)
qwen2_vl      Qwen2VLProcessor      ``<|vision_start|>`` 4 x ``<|image_pad|>`` ``<|vision_end|>``
qwen2_5_vl    Qwen2_5_VLProcessor   same as qwen2_vl
qwen3_vl      Qwen3VLProcessor      same as qwen2_vl
internvl      InternVLProcessor     ``<img>`` 4 x ``<IMG_CONTEXT>`` ``</img>``
gemma3        Gemma3Processor       ``<start_of_image>`` 4 x ``<image_soft_token>`` ``<end_of_image>``
============  ====================  ===========================================================

The Qwen processors also return ``mm_token_type_ids``; pass the processor output unchanged to
``forward``/``generate`` (Qwen2-VL and Qwen3-VL refuse a forward without it, and generation without
it computes different M-RoPE positions). Gemma 3's processor returns ``token_type_ids``.

Example:
    >>> model, processor = build_tiny_vlm("qwen2_vl")
    >>> conversation = [{"role": "user", "content": [
    ...     {"type": "image", "image": tiny_image(0)},
    ...     {"type": "text", "text": "what is in this picture?"}]}]
    >>> inputs = processor.apply_chat_template(
    ...     conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
    ...     return_tensors="pt")
    >>> output_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

import torch
import transformers
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    SiglipVisionConfig,
)
from transformers.utils import CHAT_TEMPLATE_FILE, PROCESSOR_NAME, is_torchvision_available

from cmrm_guard.errors import ConfigError
from cmrm_guard.testing.images import tiny_image
from cmrm_guard.testing.tokenizers import (
    GEMMA3_TEMPLATE,
    GEMMA3_TOKENS,
    INTERNVL_TEMPLATE,
    INTERNVL_TOKENS,
    LLAVA_TEMPLATE,
    LLAVA_TOKENS,
    QWEN_TEMPLATE,
    QWEN_TOKENS,
    build_tokenizer,
    token_id,
)

__all__ = [
    "GENERIC_MODEL_TYPE",
    "TEXT_LAYERS",
    "TINY_MODEL_TYPES",
    "VISION_LAYERS",
    "build_processor_without_video",
    "build_tiny_vlm",
    "load_tiny_processor",
    "save_tiny_vlm",
    "tiny_image",
]

_P = TypeVar("_P", bound=ProcessorMixin)

#: Number of decoder layers of every tiny language model.
TEXT_LAYERS = 2
#: Number of layers of every tiny vision tower; deliberately different from :data:`TEXT_LAYERS`.
VISION_LAYERS = 4

#: The real VLM architecture cmrm-guard has no dedicated adapter for (exercises the generic path).
GENERIC_MODEL_TYPE = "gemma3"

# Shared sizes of the tiny language decoders.
_HIDDEN = 64
_HEADS = 4
_KV_HEADS = 2
_HEAD_DIM = _HIDDEN // _HEADS
_INTERMEDIATE = 128
# Shared sizes of the tiny vision towers.
_VISION_HIDDEN = 32
_VISION_HEADS = 2
_VISION_INTERMEDIATE = 64

# --------------------------------------------------------------------------------------------------
# Processors whose video processor needs torchvision
# --------------------------------------------------------------------------------------------------


def _attributes_without_video(processor_class: type[ProcessorMixin]) -> list[str]:
    """Lists a processor class's sub-processor attributes, leaving out ``video_processor``.

    Args:
        processor_class: The processor class.

    Returns:
        The attribute names, e.g. ``["image_processor", "tokenizer"]``.
    """
    return [name for name in processor_class.get_attributes() if name != "video_processor"]


def build_processor_without_video(processor_class: type[_P], **kwargs: object) -> _P:
    """Instantiates a real image+video processor class with no video processor at all.

    Without torchvision, transformers 5.x cannot build these processors through their own
    ``__init__``: ``ProcessorMixin.check_argument_for_proper_class`` looks the ``video_processor``
    argument up in the torchvision-only ``VIDEO_PROCESSOR_MAPPING`` placeholder and raises
    ``AttributeError: type object 'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'``,
    even for ``video_processor=None``. This helper narrows ``get_attributes`` on the *instance* to
    the image processor and tokenizer before ``__init__`` runs, so construction, ``__call__``,
    ``apply_chat_template`` and ``save_pretrained`` all treat the processor as image-only (videos
    are unsupported; ``hasattr(processor, "video_processor")`` is ``False``). The class is untouched.

    Args:
        processor_class: E.g. ``Qwen2VLProcessor``, ``Qwen3VLProcessor`` or ``InternVLProcessor``.
        **kwargs: The constructor arguments, without ``video_processor``
            (``image_processor``, ``tokenizer``, ``chat_template``, ...).

    Returns:
        The processor instance.
    """
    processor = processor_class.__new__(processor_class)
    # an instance attribute shadows the classmethod for this object only (on purpose, hence the
    # method-assign ignore: mypy refuses assigning to a method)
    processor.get_attributes = functools.partial(_attributes_without_video, processor_class)  # type: ignore[method-assign]
    processor_class.__init__(processor, **kwargs)
    return processor


# --------------------------------------------------------------------------------------------------
# Text configs
# --------------------------------------------------------------------------------------------------


def _text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Returns the decoder sizes and token ids shared by every tiny language model.

    Args:
        tokenizer: The family tokenizer; its length is the vocabulary size.

    Returns:
        Keyword arguments for a text config class.
    """
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


class _Parts(NamedTuple):
    """What a family builder returns: everything but the weights."""

    model_class: type[PreTrainedModel]
    config: PreTrainedConfig
    processor: ProcessorMixin


def _clip_vision(image_size: int, patch_size: int) -> CLIPVisionConfig:
    """Returns a tiny CLIP vision tower config (LLaVA and LLaVA-NeXT).

    Args:
        image_size: Input resolution in pixels.
        patch_size: Patch size in pixels.

    Returns:
        The vision config.
    """
    return CLIPVisionConfig(
        hidden_size=_VISION_HIDDEN,
        intermediate_size=_VISION_INTERMEDIATE,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=_VISION_HIDDEN,
    )


def _build_llava(image_size: int = 32, patch_size: int = 8) -> _Parts:
    """LLaVA-1.5: CLIP tower (16 patches + CLS, CLS dropped) and a Llama decoder.

    Args:
        image_size: Input resolution in pixels (LLaVA-1.5 itself: 336).
        patch_size: Patch size in pixels (LLaVA-1.5 itself: 14, so 576 image tokens).

    Returns:
        The model class, its config and the processor.
    """
    tokenizer = build_tokenizer(LLAVA_TOKENS)
    image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=_clip_vision(image_size, patch_size),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)),
        image_token_index=token_id(tokenizer, "<image>"),
        image_seq_length=image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _Parts(LlavaForConditionalGeneration, config, processor)


def _build_llava_next() -> _Parts:
    """LLaVA-NeXT: any-resolution tiling of a CLIP tower and a Llama decoder.

    Returns:
        The model class, its config and the processor.
    """
    image_size, patch_size = 32, 16
    tokenizer = build_tokenizer(LLAVA_TOKENS)
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaNextConfig(
        vision_config=_clip_vision(image_size, patch_size),
        text_config=LlamaConfig(**_text_kwargs(tokenizer)),
        image_token_index=token_id(tokenizer, "<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _Parts(LlavaNextForConditionalGeneration, config, processor)


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Returns the vision token ids a Qwen-VL config needs.

    Args:
        tokenizer: A tokenizer built from ``QWEN_TOKENS``.

    Returns:
        ``image_token_id``, ``video_token_id``, ``vision_start_token_id`` and ``vision_end_token_id``.
    """
    return {
        "image_token_id": token_id(tokenizer, "<|image_pad|>"),
        "video_token_id": token_id(tokenizer, "<|video_pad|>"),
        "vision_start_token_id": token_id(tokenizer, "<|vision_start|>"),
        "vision_end_token_id": token_id(tokenizer, "<|vision_end|>"),
    }


def _qwen_image_processor(patch_size: int) -> Qwen2VLImageProcessorPil:
    """Returns a Qwen-VL image processor that resizes every image to about 4x4 patches.

    Args:
        patch_size: The vision tower's patch size; the merge size is 2.

    Returns:
        The PIL image processor (4 image tokens for a square image).
    """
    pixels = (4 * patch_size) ** 2
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch_size, merge_size=2
    )


def _qwen_rope(**extra: Any) -> dict[str, Any]:
    """Returns multimodal rotary parameters sized for the tiny head dimension.

    Args:
        **extra: Additional rope parameters (e.g. ``mrope_interleaved``).

    Returns:
        The ``rope_parameters`` dict, whose ``mrope_section`` (temporal, height, width) sums to
        half the head dimension.
    """
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra}


def _build_qwen2_vl() -> _Parts:
    """Qwen2-VL: patch-merging ViT with 2D rotary positions and an M-RoPE decoder.

    Returns:
        The model class, its config and the processor.
    """
    patch_size = 8
    tokenizer = build_tokenizer(QWEN_TOKENS)
    config = Qwen2VLConfig(
        text_config={**_text_kwargs(tokenizer), "rope_parameters": _qwen_rope()},
        vision_config={
            "depth": VISION_LAYERS,
            "embed_dim": _VISION_HIDDEN,
            "hidden_size": _HIDDEN,
            "num_heads": _VISION_HEADS,
            "mlp_ratio": 2,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_qwen_ids(tokenizer),
    )
    processor = build_processor_without_video(
        Qwen2VLProcessor,
        image_processor=_qwen_image_processor(patch_size),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return _Parts(Qwen2VLForConditionalGeneration, config, processor)


def _build_qwen2_5_vl() -> _Parts:
    """Qwen2.5-VL: windowed-attention ViT and an M-RoPE decoder.

    Returns:
        The model class, its config and the processor.
    """
    patch_size = 8
    tokenizer = build_tokenizer(QWEN_TOKENS)
    config = Qwen2_5_VLConfig(
        text_config={**_text_kwargs(tokenizer), "rope_parameters": _qwen_rope()},
        vision_config={
            "depth": VISION_LAYERS,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": _VISION_INTERMEDIATE,
            "num_heads": _VISION_HEADS,
            "out_hidden_size": _HIDDEN,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 2 * 2 * patch_size,
            "fullatt_block_indexes": [1, VISION_LAYERS - 1],
        },
        **_qwen_ids(tokenizer),
    )
    processor = build_processor_without_video(
        Qwen2_5_VLProcessor,
        image_processor=_qwen_image_processor(patch_size),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return _Parts(Qwen2_5_VLForConditionalGeneration, config, processor)


def _build_qwen3_vl() -> _Parts:
    """Qwen3-VL: ViT with DeepStack features injected into the first decoder layer, interleaved M-RoPE.

    Returns:
        The model class, its config and the processor.
    """
    patch_size = 8
    tokenizer = build_tokenizer(QWEN_TOKENS)
    config = Qwen3VLConfig(
        text_config={
            **_text_kwargs(tokenizer),
            "head_dim": _HEAD_DIM,
            "rope_parameters": _qwen_rope(mrope_interleaved=True),
        },
        vision_config={
            "depth": VISION_LAYERS,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": _VISION_INTERMEDIATE,
            "num_heads": _VISION_HEADS,
            "out_hidden_size": _HIDDEN,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [1],
        },
        **_qwen_ids(tokenizer),
    )
    processor = build_processor_without_video(
        Qwen3VLProcessor,
        image_processor=_qwen_image_processor(patch_size),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return _Parts(Qwen3VLForConditionalGeneration, config, processor)


def _build_internvl() -> _Parts:
    """InternVL3: InternViT with pixel-shuffle downsampling and a Qwen2 decoder.

    Returns:
        The model class, its config and the processor.
    """
    image_size, patch_size, downsample_ratio = 32, 8, 0.5
    tokenizer = build_tokenizer(INTERNVL_TOKENS)
    image_seq_length = int((image_size // patch_size) ** 2 * downsample_ratio**2)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=_VISION_HIDDEN,
            intermediate_size=_VISION_INTERMEDIATE,
            num_hidden_layers=VISION_LAYERS,
            num_attention_heads=_VISION_HEADS,
            image_size=[image_size, image_size],
            patch_size=[patch_size, patch_size],
        ),
        text_config=Qwen2Config(**_text_kwargs(tokenizer)),
        image_token_id=token_id(tokenizer, "<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=False, min_patches=1, max_patches=1
    )
    processor = build_processor_without_video(
        InternVLProcessor,
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_TEMPLATE,
    )
    return _Parts(InternVLForConditionalGeneration, config, processor)


def _build_gemma3() -> _Parts:
    """Gemma 3: SigLIP tower pooled to 4 soft tokens and a Gemma 3 decoder (local + global layers).

    Returns:
        The model class, its config and the processor.
    """
    image_size, patch_size, image_tokens = 32, 8, 4
    tokenizer = build_tokenizer(GEMMA3_TOKENS)
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            **_text_kwargs(tokenizer),
            head_dim=_HEAD_DIM,
            query_pre_attn_scalar=_HEAD_DIM,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"][:TEXT_LAYERS],
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=_VISION_HIDDEN,
            intermediate_size=_VISION_INTERMEDIATE,
            num_hidden_layers=VISION_LAYERS,
            num_attention_heads=_VISION_HEADS,
            image_size=image_size,
            patch_size=patch_size,
        ),
        mm_tokens_per_image=image_tokens,
        boi_token_index=token_id(tokenizer, "<start_of_image>"),
        eoi_token_index=token_id(tokenizer, "<end_of_image>"),
        image_token_index=token_id(tokenizer, "<image_soft_token>"),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_tokens,
        chat_template=GEMMA3_TEMPLATE,
    )
    return _Parts(Gemma3ForConditionalGeneration, config, processor)


_BUILDERS: Mapping[str, Callable[..., _Parts]] = MappingProxyType(
    {
        "llava": _build_llava,
        "llava_next": _build_llava_next,
        "qwen2_vl": _build_qwen2_vl,
        "qwen2_5_vl": _build_qwen2_5_vl,
        "qwen3_vl": _build_qwen3_vl,
        "internvl": _build_internvl,
        GENERIC_MODEL_TYPE: _build_gemma3,
    }
)

#: Every ``model_type`` :func:`build_tiny_vlm` can build.
TINY_MODEL_TYPES: tuple[str, ...] = tuple(_BUILDERS)


# --------------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------------


def build_tiny_vlm(
    model_type: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    text_overrides: Mapping[str, Any] | None = None,
    image_geometry: tuple[int, int] | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Builds a tiny randomly initialised VLM of a real architecture and its working processor.

    Args:
        model_type: One of :data:`TINY_MODEL_TYPES`.
        seed: Seed of the weight initialisation; equal seeds give identical weights.
        dtype: Floating point type of the weights.
        text_overrides: Changes to the text (decoder) config, e.g. ``{"hidden_size": 576,
            "num_hidden_layers": 30}`` for a model of a real backbone's size (benchmarks).
        image_geometry: ``(image_size, patch_size)`` in pixels, ``"llava"`` only: e.g. LLaVA-1.5's
            ``(336, 14)``, 576 image tokens per image (benchmarks of real prompt shapes).

    Returns:
        The model, in eval mode, and its processor (left padding, chat template set).

    Raises:
        ConfigError: If ``model_type`` is not one of :data:`TINY_MODEL_TYPES` (a ``ValueError``).
    """
    builder = _BUILDERS.get(model_type)
    if builder is None:
        raise ConfigError(
            f"unknown tiny model_type {model_type!r}; expected one of {', '.join(TINY_MODEL_TYPES)}"
        )
    if image_geometry is not None and model_type != "llava":
        raise ConfigError(f"image_geometry is supported for 'llava' only, got model_type {model_type!r}")
    model_class, config, processor = builder(*(image_geometry or ()))
    if text_overrides:
        text_config = config.get_text_config()
        for key, value in text_overrides.items():
            if not hasattr(text_config, key):
                raise ConfigError(f"text config of {model_type!r} has no setting {key!r}")
            setattr(text_config, key, value)
    model = _instantiate(model_class, config, seed=seed, dtype=dtype)
    return model, processor


def save_tiny_vlm(model_type: str, directory: str | os.PathLike[str], *, seed: int = 0) -> None:
    """Builds a tiny VLM and writes the model and its processor to ``directory``.

    The folder can be loaded back with ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained``.

    Args:
        model_type: One of :data:`TINY_MODEL_TYPES`.
        directory: Destination folder; created if missing.
        seed: Seed of the weight initialisation.
    """
    model, processor = build_tiny_vlm(model_type, seed=seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def load_tiny_processor(directory: str | os.PathLike[str]) -> ProcessorMixin:
    """Loads a processor written by :func:`save_tiny_vlm` (or any ``save_pretrained`` folder).

    ``AutoProcessor.from_pretrained`` is used whenever it can work. Processor classes that declare a
    video processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL) cannot be loaded by it without
    torchvision (``OSError: Can't load video processor for '<dir>'``), so for those the tokenizer
    and image processor are loaded on their own and joined with
    :func:`build_processor_without_video`.

    Args:
        directory: A folder holding ``processor_config.json`` and the tokenizer files.

    Returns:
        The processor.
    """
    processor_config = _read_json(os.path.join(directory, PROCESSOR_NAME))
    processor_class = getattr(transformers, processor_config["processor_class"])
    if is_torchvision_available() or "video_processor" not in processor_class.get_attributes():
        return AutoProcessor.from_pretrained(directory)
    init_parameters = inspect.signature(processor_class.__init__).parameters
    extra = {
        key: value
        for key, value in processor_config.items()
        if key in init_parameters and key not in processor_class.get_attributes()
    }
    chat_template_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(chat_template_file):
        with open(chat_template_file, encoding="utf-8") as handle:
            extra["chat_template"] = handle.read()
    return build_processor_without_video(
        processor_class,
        image_processor=AutoImageProcessor.from_pretrained(directory),
        tokenizer=AutoTokenizer.from_pretrained(directory),
        **extra,
    )


def _read_json(path: str) -> dict[str, Any]:
    """Reads a JSON object from a file.

    Args:
        path: The file.

    Returns:
        The decoded object.
    """
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _instantiate(
    model_class: type[PreTrainedModel], config: PreTrainedConfig, *, seed: int, dtype: torch.dtype
) -> PreTrainedModel:
    """Creates the model with seeded random weights, in eval mode, with generation ids set.

    The seed is applied inside ``torch.random.fork_rng``, so the caller's global RNG state is left
    as it was.

    Args:
        model_class: The ``*ForConditionalGeneration`` class.
        config: Its config.
        seed: Seed for ``torch.manual_seed`` during initialisation.
        dtype: Floating point type of the weights.

    Returns:
        The model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    nn.Module.to(model, dtype)  # PreTrainedModel.to's wrapper hides Module.to's signature from type checkers
    model.eval()
    text_config = config.get_text_config()
    generation = model.generation_config
    generation.pad_token_id = text_config.pad_token_id
    generation.eos_token_id = text_config.eos_token_id
    generation.bos_token_id = text_config.bos_token_id
    return model
