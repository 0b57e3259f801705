"""`VLMAdapter`: what cmrm-guard needs to know about one family of vision-language models.

An adapter locates the language decoder's layer stack (never the vision tower), renders chat
conversations into model inputs through the model's own chat template, builds CMRM's text-only
and corrupted twins, and names any extra inputs ``generate`` needs. The base class does all of this
through transformers' common API; a family file overrides only what differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from cmrm_guard.adapters import conversation as conv
from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.errors import ConversationError, UnsupportedArchitectureError

VISION_NAME_PARTS = ("vision", "visual", "image_encoder", "img_encoder", "mm_projector")


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error that names the path and the way out."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UnsupportedArchitectureError(
            f"no module at decoder_path={path!r} in {type(root).__name__}; pass the dotted path of "
            "the language decoder's layer list, e.g. decoder_path='model.language_model.layers'"
        ) from None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft ``PeftModel`` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__module__.startswith("peft"):
        return get_base()
    return model


def module_path(root: nn.Module, target: nn.Module) -> str | None:
    """Dotted path of ``target`` inside ``root`` (``None`` when it is not a submodule)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


class VLMAdapter:
    """Base adapter: generic over transformers' ``*ForConditionalGeneration`` VLMs.

    Subclasses set ``model_types`` through :func:`cmrm_guard.adapters.register_adapter` and may
    override ``decoder_path`` (dotted path of the decoder layer list, relative to the model),
    ``fallback_chat_template`` (used only when the processor has none) and any method.

    Args:
        decoder_path: explicit dotted path of the decoder layer list; overrides the adapter's own.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    decoder_path: ClassVar[str | None] = None
    fallback_chat_template: ClassVar[str | None] = None
    shares_prompt_prefix: ClassVar[bool] = False
    """Whether rows with a common prompt prefix may run it once (KV cache, explicit positions; see
    :mod:`cmrm_guard.shared_prefix`). Set by adapters whose architecture a test checks for it."""

    def __init__(self, decoder_path: str | None = None) -> None:
        self._decoder_path = decoder_path or type(self).decoder_path

    @property
    def name(self) -> str:
        """Adapter name: its class name."""
        return type(self).__name__

    # ----------------------------------------------------------------------------------- layers
    def text_config(self, model: nn.Module) -> Any:
        """The language model's config (``config.get_text_config()``)."""
        config: Any = unwrap_model(model).config
        return config.get_text_config()

    def num_layers(self, model: nn.Module) -> int:
        """Number of decoder layers the text config declares."""
        return int(self.text_config(model).num_hidden_layers)

    def hidden_size(self, model: nn.Module) -> int:
        """Width of the decoder's residual stream."""
        return int(self.text_config(model).hidden_size)

    def find_decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """Locate the decoder layer list (unchecked); subclasses override this, not the checks."""
        get_decoder: Any = model.get_decoder
        decoder = get_decoder()
        layers = getattr(decoder, "layers", None)
        if decoder is model or not isinstance(layers, nn.ModuleList):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no language decoder with a `.layers` list "
                f"(get_decoder() returned {type(decoder).__name__}); pass "
                "decoder_path='model.language_model.layers' (the dotted path of the decoder layers) "
                "or register an adapter with @cmrm_guard.adapters.register_adapter"
            )
        return layers

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList | nn.Sequential:
        """The language decoder's layers, checked against the text config and the vision tower.

        Raises:
            UnsupportedArchitectureError: when the found stack does not have
                ``config.get_text_config().num_hidden_layers`` entries or lies in a vision module.
        """
        base = unwrap_model(model)
        if self._decoder_path is not None:
            layers = get_submodule(base, self._decoder_path)
        else:
            layers = self.find_decoder_layers(base)
        if not isinstance(layers, nn.ModuleList | nn.Sequential):
            raise UnsupportedArchitectureError(
                f"decoder_path={self._decoder_path!r} points at a {type(layers).__name__}, expected "
                "the ModuleList of decoder layers"
            )
        path = module_path(base, layers) or "<unknown>"
        expected = self.num_layers(base)
        if len(layers) != expected:
            raise UnsupportedArchitectureError(
                f"the layer stack at {path!r} has {len(layers)} layers but the text config declares "
                f"num_hidden_layers={expected}: this is not the language decoder. Pass "
                "decoder_path='<dotted path of the decoder layers>' or register an adapter"
            )
        lowered = path.lower()
        if any(part in lowered for part in VISION_NAME_PARTS):
            raise UnsupportedArchitectureError(
                f"the layer stack at {path!r} belongs to the vision side; CMRM steers the language "
                "decoder only. Pass decoder_path='<dotted path of the decoder layers>'"
            )
        return layers

    def image_token_id(self, model: nn.Module) -> int | None:
        """Token id of the image placeholder in ``input_ids`` (``None`` if unknown)."""
        config = unwrap_model(model).config
        for name in ("image_token_id", "image_token_index", "image_token"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return None

    def rope_position_delta(self, model: nn.Module) -> torch.Tensor | None:
        """For multimodal RoPE (3 position axes): the offset of text positions after the prompt
        the model last encoded, ``None`` for ordinary 1-D positions (the default)."""
        return None

    # ------------------------------------------------------------------------------ conversations
    def text_only_twin(self, conversation: Conversation) -> Conversation:
        """The conversation with its images (and so their placeholder tokens) removed."""
        return conv.text_only_twin(conversation)

    def corrupted_twin(
        self, conversation: Conversation, processor: Any, corruption: str, seed: int = 0
    ) -> Conversation:
        """The conversation with each image replaced by a content-free one of the same size."""
        mean, std = self.pixel_statistics(processor)
        return conv.corrupted_twin(conversation, corruption, mean=mean, std=std, seed=seed)

    def pixel_statistics(self, processor: Any) -> tuple[Sequence[float], Sequence[float]]:
        """Per-channel mean and std (0-1 scale) the image processor normalises with."""
        image_processor = getattr(processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        std = getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5)
        if isinstance(mean, float | int):
            mean = (float(mean),) * 3
        if isinstance(std, float | int):
            std = (float(std),) * 3
        return tuple(mean), tuple(std)

    def default_image_size(self, processor: Any) -> tuple[int, int]:
        """Size (width, height) of images made for prompts that come without one."""
        image_processor = getattr(processor, "image_processor", None)
        for attr in ("crop_size", "size"):
            size = getattr(image_processor, attr, None)
            if size is None:
                continue
            size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
            if "height" in size and "width" in size and size["height"] and size["width"]:
                return int(size["width"]), int(size["height"])
            if size.get("shortest_edge"):
                edge = int(size["shortest_edge"])
                return edge, edge
        return 224, 224

    def encode(
        self,
        processor: Any,
        conversations: Sequence[Conversation],
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Render a batch of conversations with the chat template into left-padded model inputs.

        ``chat_template_kwargs`` go to ``apply_chat_template`` (e.g. ``tools=[...]``, template
        variables such as ``enable_thinking``).

        Returns the processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, pixel inputs
        and any architecture extras such as ``mm_token_type_ids``).
        """
        if not conversations:
            raise ConversationError("no conversation to encode: got an empty batch")
        placeholders = conv.placeholder_tokens(processor)
        resolved = [conv.resolve_images(conv.check_conversation(c, placeholders)) for c in conversations]
        kwargs: dict[str, Any] = dict(chat_template_kwargs or {})
        if getattr(processor, "chat_template", None) is None and self.fallback_chat_template:
            kwargs["chat_template"] = self.fallback_chat_template
        return processor.apply_chat_template(
            resolved,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
            **kwargs,
        )

    def generate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Model inputs to pass to ``forward``/``generate`` (all processor outputs by default)."""
        return {key: value for key, value in inputs.items() if value is not None}

    def rows_with_images(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (batch,) tensor: which rows of ``input_ids`` hold an image placeholder."""
        token = self.image_token_id(model)
        if token is None:
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return (input_ids == token).any(dim=-1)
