"""`SteeredVLM`: a transformers vision-language model with CMRM applied at inference time.

The wrapped model is never mutated: steering hooks exist only for the duration of one call
(:mod:`cmrm_guard.hooks`), calls on one model are serialised by a per-model lock, and per-call
settings travel as arguments or through :meth:`SteeredVLM.steering` (a context variable of each
wrapper, so each thread and asyncio task has its own, and one wrapper's block never reaches another).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor, nn

from cmrm_guard.adapters import conversation as conv
from cmrm_guard.adapters.base import VLMAdapter, unwrap_model
from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.adapters.registry import get_adapter
from cmrm_guard.config import SteeringConfig, SteeringLock, check_alpha
from cmrm_guard.errors import (
    CMRMWarning,
    ConfigError,
    ConversationError,
    ModelNotFoundError,
    PackError,
    SteeringUnavailableError,
    UnsupportedArchitectureError,
)
from cmrm_guard.hooks import PromptPositions, check_layer_indices, record_last_token, steer
from cmrm_guard.outputs import AppliedSteering, GenerationOutput
from cmrm_guard.runtime import GenerationWorker, StopFlag, run_on_model_thread
from cmrm_guard.shared_prefix import PrefixModel, shared_prefix_states
from cmrm_guard.shifts import ShiftCache, layer_shifts

if TYPE_CHECKING:
    from cmrm_guard.vectors.inputs import VectorsLike
    from cmrm_guard.vectors.pack import VectorPack

logger = logging.getLogger("cmrm_guard")


class _PackRecord(TypedDict, total=False):
    """The pack fields of a call's :class:`AppliedSteering` (set when a pack is attached)."""

    pack: str | None
    pack_revision: str | None
    pack_provenance: str | None
    pack_sha256: str | None


class _CallRecord(_PackRecord):
    """The fields of a call's :class:`AppliedSteering` known before the steering is decided."""

    mode: str
    policy: str


class SteeredVLM:
    """A vision-language model wrapped with Cross-Modality Representation Manipulation.

    Args:
        model: a transformers VLM (``*ForConditionalGeneration``) or a peft ``PeftModel`` of one.
        processor: its processor (tokenizer + image processor + chat template).
        vectors: dataset-level shift vectors: a :class:`~cmrm_guard.vectors.VectorPack`, a local
            pack directory or Hub repo id, a ``{layer: (hidden,) tensor}`` dict, a
            ``(num_layers, hidden)`` tensor, or ``None`` (sample mode needs none). Vectors that
            fail validation (NaN, wrong shape or layers, another model's pack, a bad checksum or
            format version) always raise here (:class:`~cmrm_guard.errors.PackError`,
            :class:`~cmrm_guard.errors.VectorError`, ...), whatever ``strict`` says: a pack the
            caller named is never silently dropped.
        config: default :class:`SteeringConfig` for every call.
        adapter: architecture adapter; default: the registered one for ``config.model_type``.
        decoder_path: dotted path of the decoder layer list, for models no adapter knows.
        strict: fail closed (the default). A call that should be steered but cannot be (dataset
            mode and no pack attached) raises :class:`SteeringUnavailableError`. ``strict=False``
            opts into fail-open: such a call is answered unsteered, its record says so
            (``AppliedSteering.fail_open``), and each one emits a
            :class:`~cmrm_guard.errors.CMRMWarning` and a ``logging`` warning on the
            ``"cmrm_guard"`` logger (the prompt is never logged). Fail-closed is the default
            because this is a safety guard: a deployer who forgot the pack must find out before
            serving, not from unsteered answers.
        vectors_revision / vectors_token: revision and token used when ``vectors`` is a Hub id.
        lock: a :class:`~cmrm_guard.SteeringLock`: what a call's settings (``steering()`` blocks,
            per-call ``config=``) may change relative to ``config``; a call asking for weaker
            steering raises :class:`~cmrm_guard.errors.SteeringLockedError` before it runs.
            ``None``: no lock.
        model_id: the model's Hub id or local folder (default: the model config's
            ``_name_or_path``); :attr:`model_name` shows it without the folder's path.

    Example:
        >>> svlm = SteeredVLM(model, processor, vectors=pack, config=SteeringConfig(alpha=0.8))
        >>> svlm.chat([{"role": "user", "content": [{"type": "image", "image": img},
        ...                                         {"type": "text", "text": "What is this?"}]}])
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        vectors: VectorsLike | None = None,
        config: SteeringConfig | None = None,
        adapter: VLMAdapter | None = None,
        decoder_path: str | None = None,
        strict: bool = True,
        vectors_revision: str | None = None,
        vectors_token: str | bool | None = None,
        model_id: str | None = None,
        lock: SteeringLock | None = None,
    ) -> None:
        if config is not None and not isinstance(config, SteeringConfig):
            raise ConfigError(f"config must be a SteeringConfig, got {type(config).__name__}")
        if lock is not None and not isinstance(lock, SteeringLock):
            raise ConfigError(f"lock must be a SteeringLock, got {type(lock).__name__}")
        self.model = model
        self.processor = processor
        self.base_model = unwrap_model(model)
        self.adapter = adapter or get_adapter(model, decoder_path=decoder_path)
        self.layers = self.adapter.decoder_layers(model)
        self.num_layers = len(self.layers)
        self.hidden_size = self.adapter.hidden_size(model)
        self.model_type = str(getattr(self.base_model.config, "model_type", ""))
        self.model_id = model_id or getattr(self.base_model.config, "_name_or_path", None) or None
        self.config = config or SteeringConfig()
        self.strict = bool(strict)
        self.lock = lock
        self._shift_cache = ShiftCache()
        self._overrides: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
            "cmrm_guard_steering_overrides", default=None
        )
        forward_parameters = inspect.signature(self.base_model.forward).parameters
        self._forward_takes_logits_to_keep = "logits_to_keep" in forward_parameters
        # the KV cache argument: ``cache`` since transformers 5.24 (``past_key_values`` is deprecated)
        self._cache_kwarg = "cache" if "cache" in forward_parameters else "past_key_values"
        self.vectors: VectorPack | None = None
        if vectors is not None:  # named vectors that do not validate raise, whatever `strict` says
            self.vectors = self._load_vectors(vectors, vectors_revision, vectors_token)
        self._check_layers_setting(self.config)
        if lock is not None and lock.layers is not None:
            check_layer_indices(list(lock.layers), self.num_layers)  # a lock naming absent layers fails now

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        *,
        vectors: VectorsLike | None = None,
        vectors_revision: str | None = None,
        vectors_token: str | bool | None = None,
        config: SteeringConfig | None = None,
        strict: bool = True,
        processor: Any = None,
        decoder_path: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        trust_remote_code: bool = False,
        lock: SteeringLock | None = None,
        **model_kwargs: Any,
    ) -> SteeredVLM:
        """Load a VLM and its processor with transformers and wrap them.

        Args:
            model_id: a Hub model id (``"name"`` or ``"owner/name"``) or a local directory written
                by ``save_pretrained``; a path (a ``Path``, or a string starting with ``/``, ``.``
                or ``~``, or holding more than one ``/``) that is not a folder raises
                :class:`~cmrm_guard.errors.ModelNotFoundError`.
            vectors, vectors_revision, vectors_token, config, strict, decoder_path, lock: as in
                :class:`SteeredVLM`.
            processor: use this processor instead of loading one.
            revision, token: passed to transformers.
            trust_remote_code: passed only when ``True`` (remote code runs only if you ask).
            **model_kwargs: passed to ``AutoModelForImageTextToText.from_pretrained``
                (``dtype``, ``device_map``, ``attn_implementation``, ...).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        _check_local_model_path(model_id)
        hub_kwargs: dict[str, Any] = {}
        if revision is not None:
            hub_kwargs["revision"] = revision
        if token is not None:
            hub_kwargs["token"] = token
        if trust_remote_code:
            hub_kwargs["trust_remote_code"] = True
        model = AutoModelForImageTextToText.from_pretrained(str(model_id), **hub_kwargs, **model_kwargs)
        model.eval()
        if processor is None:
            try:
                processor = AutoProcessor.from_pretrained(str(model_id), **hub_kwargs)
            except (OSError, ValueError, ImportError) as error:
                raise UnsupportedArchitectureError(
                    f"could not load the processor of {str(model_id)!r}: {error}. Load it yourself "
                    "and pass processor=..."
                ) from error
        return cls(
            model,
            processor,
            vectors=vectors,
            config=config,
            decoder_path=decoder_path,
            strict=strict,
            vectors_revision=vectors_revision,
            vectors_token=vectors_token,
            model_id=str(model_id),
            lock=lock,
        )

    def _load_vectors(
        self, vectors: VectorsLike, revision: str | None, token: str | bool | None
    ) -> VectorPack:
        from cmrm_guard.vectors.inputs import as_vector_pack

        return as_vector_pack(
            vectors,
            model_type=self.model_type,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            model_id=self.model_id,
            revision=revision,
            token=token,
        )

    def attach(
        self, vectors: VectorsLike, *, revision: str | None = None, token: str | bool | None = None
    ) -> None:
        """Validate and attach a new pack; a refused pack raises and leaves the current one in place."""
        pack = self._load_vectors(vectors, revision, token)
        self.vectors = pack
        self._shift_cache.clear()

    @property
    def model_name(self) -> str:
        """The model's name for logs and metadata: its Hub id, or its local folder's name (never the
        folder's path); ``model_type`` when neither is known."""
        return display_model_name(self.model_id) or self.model_type or "steered-vlm"

    def prefix_model(self) -> PrefixModel:
        """What the shared-prefix pass (:mod:`cmrm_guard.shared_prefix`) may use of this model."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        base_model = self.base_model
        return PrefixModel(
            adapter=self.adapter,
            model=self.model,
            layers=self.layers,
            encode=self.encode,
            model_inputs=self._model_inputs,
            pad_token_id=getattr(tokenizer, "pad_token_id", None) or 0,
            forward_kwargs={"logits_to_keep": 1} if self._forward_takes_logits_to_keep else {},
            cache_kwarg=self._cache_kwarg,
            run=lambda fn: run_on_model_thread(base_model, fn),
        )

    # -------------------------------------------------------------------------------- settings
    @contextmanager
    def steering(
        self, config: SteeringConfig | Mapping[str, Any] | None = None, **changes: Any
    ) -> Iterator[SteeringConfig]:
        """Override steering settings for calls on this wrapper made inside the block.

        The overrides belong to this wrapper and to the current thread / asyncio task: another
        wrapper, another thread or a task started outside the block does not see them. Blocks
        nest; ``config`` (a :class:`SteeringConfig` or a mapping of its fields) contributes only
        the fields that were set in it, ``changes`` go over those. Checked at entry against the
        wrapper's ``lock``.

        Example:
            >>> with svlm.steering(enabled=False):
            ...     baseline = svlm.chat(conversation)
        """
        current = dict(self._overrides.get() or {})
        current.update(_set_fields(config))
        current.update(changes)
        resolved = self._merged(current)  # validates now, not at the first call
        token = self._overrides.set(current)
        try:
            yield resolved
        finally:
            self._overrides.reset(token)

    def resolve_config(
        self, config: SteeringConfig | Mapping[str, Any] | None = None, **changes: Any
    ) -> SteeringConfig:
        """The settings a call gets: defaults, then ``steering()`` overrides, then arguments.

        ``config`` (a :class:`SteeringConfig` or a mapping of its fields) contributes only the
        fields that were set in it (``model_fields_set``), so ``SteeringConfig(step_scope=
        "prefill_only")`` keeps the wrapper's alpha and any active ``steering()`` override.

        Raises:
            ConfigError: a setting is invalid (an unknown field, a negative alpha, ``layers=[]``).
            LayerIndexError: ``layers`` are outside the model's decoder.
            SteeringLockedError: the result is weaker than the wrapper's ``lock`` allows.
        """
        merged = dict(self._overrides.get() or {})
        merged.update(_set_fields(config))
        merged.update(changes)
        return self._merged(merged)

    def _merged(self, changes: Mapping[str, Any]) -> SteeringConfig:
        resolved = self.config.replace(**changes) if changes else self.config
        self._check_layers_setting(resolved)
        self.check_lock(resolved)
        return resolved

    def check_lock(
        self,
        config: SteeringConfig,
        lock: SteeringLock | None = None,
        baseline: SteeringConfig | None = None,
    ) -> None:
        """Raise :class:`SteeringLockedError` if ``config`` is weaker than ``lock`` allows.

        ``lock`` defaults to the wrapper's own (no check when there is none); ``baseline`` (the
        deployer's settings the lock compares with) to the wrapper's ``config``. Both are compared
        as :meth:`effective_config` resolves them against the attached pack.
        """
        lock = self.lock if lock is None else lock
        if lock is None:
            return
        lock.check(self.effective_config(config), self.effective_config(baseline or self.config))

    def effective_config(self, config: SteeringConfig | None = None) -> SteeringConfig:
        """``config`` (default: the wrapper's) with alpha, application and layers filled in as a call
        would apply them.

        ``alpha`` / ``application`` left ``None`` take the attached pack's defaults, in dataset and
        sample mode alike (1.0 / ``"increment"`` without a pack in sample mode); ``layers`` left
        ``None`` become the pack's layers (dataset mode) or every decoder layer (sample mode).
        Without a pack in dataset mode they stay ``None``: such a call cannot be steered.
        """
        if config is None:
            config = self.config
        elif not isinstance(config, SteeringConfig):
            raise ConfigError(f"effective_config takes a SteeringConfig or None, got {type(config).__name__}")
        alpha, application = self._strength(config)
        layers = config.layers
        if layers is None:
            if config.mode == "sample":
                layers = tuple(range(self.num_layers))
            elif self.vectors is not None:
                layers = tuple(sorted(self.vectors.shifts))
        return config.replace(alpha=alpha, application=application, layers=layers)

    def _strength(self, config: SteeringConfig) -> tuple[float | None, str | None]:
        """The alpha and application a call steers with (see :meth:`effective_config`)."""
        pack = self.vectors
        alpha: float | None = config.alpha
        application: str | None = config.application
        if pack is not None:
            if alpha is None:
                try:
                    alpha = check_alpha(pack.meta.alpha, "the pack's default alpha")
                except ValueError as error:
                    raise PackError(f"{error}; pass alpha=... explicitly or fix the pack") from None
            application = application or pack.meta.application
        elif config.mode == "sample":
            alpha = 1.0 if alpha is None else alpha
            application = application or "increment"
        return alpha, application

    def _check_layers_setting(self, config: SteeringConfig) -> None:
        if config.layers is not None:
            check_layer_indices(list(config.layers), self.num_layers)

    # ------------------------------------------------------------------------------- encoding
    def encode(
        self,
        conversations: Sequence[Conversation],
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Chat-template and tokenize a batch of conversations (left-padded model inputs).

        ``chat_template_kwargs`` go to ``apply_chat_template`` (``tools=[...]``, template variables).
        """
        checked = [conv.check_conversation(c) for c in conversations]
        if (
            any(conv.has_image(c) for c in checked)
            and getattr(self.processor, "image_processor", None) is None
        ):
            raise ConversationError(
                f"a conversation holds an image but the processor ({type(self.processor).__name__}) "
                "has no image processor: this is a text-only prompt path"
            )
        return self.adapter.encode(self.processor, checked, chat_template_kwargs)

    def encode_text_only(self, conversations: Sequence[Conversation]) -> Any:
        """Encode conversations that must carry no image (text-only twins).

        Raises:
            ConversationError: a conversation still holds an image, or its rendered prompt holds
                an image placeholder token (e.g. ``<image>`` typed into the text).
        """
        self._check_text_only(conversations)
        inputs = self.adapter.encode(self.processor, conversations)
        self._check_no_image_tokens(inputs["input_ids"], range(len(conversations)))
        return inputs

    def _check_text_only(self, conversations: Sequence[Conversation]) -> None:
        image_token = getattr(self.processor, "image_token", None)
        for i, conversation in enumerate(conversations):
            if conv.has_image(conversation):
                raise ConversationError(
                    f"conversation {i} holds an image on a text-only prompt path; pass its "
                    "text_only_twin() instead"
                )
            if isinstance(image_token, str) and image_token and image_token in _text_of(conversation):
                raise ConversationError(
                    f"text-only prompt {i} contains the image placeholder token {image_token!r}: "
                    "remove image tokens from the text"
                )

    def _check_no_image_tokens(self, input_ids: Tensor, rows: Sequence[int]) -> None:
        token = self.adapter.image_token_id(self.model)
        if token is None:
            return
        flags = (input_ids[list(rows)] == token).any(dim=-1).tolist()
        bad = [row for row, flag in zip(rows, flags, strict=True) if flag]
        if bad:
            raise ConversationError(
                f"text-only prompt(s) {bad} contain the image placeholder token (id {token}): "
                "remove image tokens from the text"
            )

    def _model_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        device = _input_device(self.base_model)
        prepared = self.adapter.generate_inputs(dict(inputs))
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in prepared.items()}

    # -------------------------------------------------------------------------------- planning
    def _image_rows(
        self, conversations: Sequence[Conversation] | None, inputs: Mapping[str, Any]
    ) -> list[bool]:
        if conversations is not None:
            return [conv.has_image(c) for c in conversations]
        return self.adapter.rows_with_images(self.model, inputs["input_ids"]).tolist()

    def plan(
        self,
        config: SteeringConfig,
        conversations: Sequence[Conversation] | None,
        inputs: Mapping[str, Any],
        *,
        strict: bool | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[dict[int, Tensor], AppliedSteering]:
        """Per-layer shifts for one call, and the record of what they apply.

        Empty shifts mean the call runs unsteered (the record says why). ``strict`` overrides the
        wrapper's ``strict`` for this call; ``chat_template_kwargs`` render sample mode's twins
        like the call's own prompt.
        """
        strict = self.strict if strict is None else bool(strict)
        self.check_lock(config)  # a config handed straight to plan() is held to the lock too
        pack = self.vectors
        record = _CallRecord(mode=config.mode, policy=config.policy)
        if pack is not None:
            record["pack"] = display_model_name(pack.meta.repo_id or pack.meta.base_model)
            record["pack_revision"] = pack.meta.revision
            record["pack_provenance"] = pack.provenance
            record["pack_sha256"] = pack.meta.shifts_sha256
        image_rows = self._image_rows(conversations, inputs)
        if not config.enabled:
            return {}, AppliedSteering(False, reason="steering disabled", **record)
        if config.policy == "never":
            return {}, AppliedSteering(False, reason="policy 'never'", **record)
        rows = [True] * len(image_rows) if config.policy == "always" else image_rows
        if not any(rows):
            return {}, AppliedSteering(
                False, reason="no image in the conversation (policy 'images')", **record
            )
        if config.mode == "dataset":
            if pack is None:
                reason = "no valid vector pack attached"
                if strict:
                    raise SteeringUnavailableError(
                        f"strict mode: this call should be steered but cannot be: {reason}. Attach a "
                        "pack (vectors=...), use SteeringConfig(mode='sample'), or strict=False"
                    )
                self._report_fail_open(reason)
                return {}, AppliedSteering(False, reason=reason, fail_open=True, **record)
            alpha, application = self._strength(config)
            assert alpha is not None and application is not None  # a pack supplies both
            shifts = self._shift_cache.shifts(
                pack, alpha=alpha, application=application, layers=config.layers
            )
        else:
            if conversations is None:
                raise ConversationError(
                    "sample-level CMRM builds each input's twins from its conversation: pass "
                    "conversations, not pre-tokenized inputs"
                )
            alpha, application = self._strength(config)
            assert alpha is not None and application is not None  # sample mode always has both
            shifts = self._sample_shifts(
                conversations, rows, config, alpha, application, chat_template_kwargs
            )
        if not all(rows):
            gate = torch.tensor(rows, dtype=torch.float32).unsqueeze(1)
            shifts = {i: (s.unsqueeze(0) if s.dim() == 1 else s) * gate for i, s in shifts.items()}
        applied = AppliedSteering(
            True,
            alpha=float(alpha),
            application=application,
            layers=tuple(sorted(shifts)),
            rows_steered=tuple(rows),
            **record,
        )
        return shifts, applied

    def _report_fail_open(self, reason: str) -> None:
        """Warn (``CMRMWarning``) and log that a call is answered unsteered (never the prompt)."""
        message = f"answering unsteered (strict=False, fail-open): {reason}; model {self.model_name}"
        warnings.warn(message, CMRMWarning, stacklevel=4)
        logger.warning(message, extra={"cmrm_fail_open": True, "cmrm_model": self.model_name})

    def _sample_shifts(
        self,
        conversations: Sequence[Conversation],
        rows: Sequence[bool],
        config: SteeringConfig,
        alpha: float,
        application: str,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[int, Tensor]:
        layers = list(config.layers) if config.layers is not None else list(range(self.num_layers))
        picked = [c for c, flag in zip(conversations, rows, strict=True) if flag]
        deltas = self.twin_differences(
            picked,
            layers,
            corruption=config.corruption,
            seed=config.noise_seed,
            chat_template_kwargs=chat_template_kwargs,
        )
        full: dict[int, Tensor] = {}
        index = torch.tensor([i for i, flag in enumerate(rows) if flag])
        for layer, delta in deltas.items():
            row_shift = torch.zeros(len(rows), delta.shape[-1], dtype=delta.dtype)
            row_shift[index] = delta
            full[layer] = row_shift
        return layer_shifts(full, alpha=alpha, application=application, layers=layers)

    # ----------------------------------------------------------------------------- twin passes
    def twin_differences(
        self,
        conversations: Sequence[Conversation],
        layers: Sequence[int] | None = None,
        *,
        corruption: str = "blank",
        seed: int = 0,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[int, Tensor]:
        """CMRM's ``d^l = h_text^l - h_corrupt^l`` for each conversation, at the last prompt token.

        Both twins of every conversation run in one batched forward. Where the corrupted twins
        share a prompt prefix (the template's header and, with ``blank`` corruption, the same
        image: most of a real VLM's prompt), that prefix runs once and the text twins are not
        padded to it (:mod:`cmrm_guard.shared_prefix`).

        Returns:
            layer -> (len(conversations), hidden) float32 CPU tensor.
        """
        layers = list(range(self.num_layers)) if layers is None else list(layers)
        text = [self.adapter.text_only_twin(c) for c in conversations]
        corrupt = [
            self.adapter.corrupted_twin(c, self.processor, corruption, seed + 1000 * i)
            for i, c in enumerate(conversations)
        ]
        n = len(conversations)
        twins = text + corrupt
        self._check_text_only(text)
        inputs = self.encode(twins, chat_template_kwargs)
        self._check_no_image_tokens(inputs["input_ids"], range(n))
        states = shared_prefix_states(
            self.prefix_model(),
            twins,
            inputs,
            layers,
            sharing_rows=range(n, 2 * n),
            chat_template_kwargs=chat_template_kwargs,
        )
        if states is None:
            states = self._last_token_states_of(inputs, layers)
        return {layer: states[layer][:n] - states[layer][n:] for layer in layers}

    def last_token_states(
        self,
        conversations: Sequence[Conversation],
        layers: Sequence[int] | None = None,
        *,
        text_only_rows: int = 0,
        config: SteeringConfig | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[int, Tensor]:
        """Hidden state of each conversation's last prompt token leaving each layer (one forward).

        The first ``text_only_rows`` conversations are checked to carry no image. Runs unsteered
        unless ``config`` is given (then that steering applies, as in :meth:`generate`).

        Returns:
            layer -> (len(conversations), hidden) float32 CPU tensor.
        """
        layers = list(range(self.num_layers)) if layers is None else list(layers)
        if text_only_rows:
            self._check_text_only(conversations[:text_only_rows])
        inputs = self.encode(conversations, chat_template_kwargs)
        if text_only_rows:
            self._check_no_image_tokens(inputs["input_ids"], range(text_only_rows))
        positions = PromptPositions.from_attention_mask(inputs["attention_mask"])
        shifts: dict[int, Tensor] = {}
        if config is not None:
            shifts, _ = self.plan(config, conversations, inputs, chat_template_kwargs=chat_template_kwargs)
            positions = PromptPositions.from_attention_mask(
                inputs["attention_mask"], config.positions, config.step_scope
            )
        return self._last_token_states_of(inputs, layers, shifts, positions)

    def _last_token_states_of(
        self,
        inputs: Mapping[str, Any],
        layers: list[int],
        shifts: Mapping[int, Tensor] | None = None,
        positions: PromptPositions | None = None,
    ) -> dict[int, Tensor]:
        """One forward over encoded ``inputs``, recording each row's last prompt token per layer."""
        if positions is None:
            positions = PromptPositions.from_attention_mask(inputs["attention_mask"])
        kwargs: dict[str, Any] = {"use_cache": False}
        if self._forward_takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        model_inputs = self._model_inputs(inputs)

        def run() -> dict[int, Tensor]:
            with torch.inference_mode(), ExitStack() as stack:
                stack.enter_context(steer(self.layers, dict(shifts or {}), positions))
                records = stack.enter_context(record_last_token(self.layers, layers, positions.last_index))
                self.model(**model_inputs, **kwargs)
            return dict(records)

        return run_on_model_thread(self.base_model, run)

    # ------------------------------------------------------------------------------ generation
    def _prepare(
        self, conversations_or_inputs: Any, chat_template_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[list[Conversation] | None, Mapping[str, Any]]:
        if isinstance(conversations_or_inputs, Mapping) and "input_ids" in conversations_or_inputs:
            return None, conversations_or_inputs
        if isinstance(conversations_or_inputs, Mapping):
            raise ConversationError(
                "pass a list of conversations, or processor outputs holding 'input_ids'; got a dict "
                f"with keys {sorted(conversations_or_inputs)[:6]}"
            )
        conversations = [conv.check_conversation(c) for c in conversations_or_inputs]
        return conversations, self.encode(conversations, chat_template_kwargs)

    def forward(
        self,
        conversations_or_inputs: Any,
        *,
        config: SteeringConfig | Mapping[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> Any:
        """One steered forward pass (prefill) over a batch; returns the model's output.

        It runs with the caller's grad mode: under ``torch.no_grad()`` or ``torch.inference_mode()``
        no graph is built, otherwise the output carries gradients (e.g. for attribution).
        """
        settings = self.resolve_config(config)  # refused settings fail before any encoding
        conversations, inputs = self._prepare(conversations_or_inputs)
        shifts, _ = self.plan(settings, conversations, inputs)
        positions = PromptPositions.from_attention_mask(
            inputs["attention_mask"], settings.positions, settings.step_scope
        )
        model_inputs = self._model_inputs(inputs)

        def run() -> Any:
            with steer(self.layers, shifts, positions):
                return self.model(**model_inputs, **model_kwargs)

        return run_on_model_thread(self.base_model, run)

    def generate(
        self,
        conversations_or_inputs: Any,
        *,
        config: SteeringConfig | Mapping[str, Any] | None = None,
        streamer: Any = None,
        strict: bool | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> GenerationOutput:
        """Generate for a batch of conversations (or processor outputs) with CMRM applied.

        Args:
            conversations_or_inputs: a list of conversations, or the processor's output for one.
            config: per-call settings, a SteeringConfig or a mapping of its fields (the fields set in
                it are merged over the defaults and ``steering()`` overrides).
            streamer: a transformers streamer, passed to ``generate``.
            strict: fail closed for this call (``None``: the wrapper's ``strict``).
            chat_template_kwargs: passed to ``apply_chat_template`` (``tools=[...]``, template
                variables); sample mode's twins are rendered with them too.
            **generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``...).
        """
        settings = self.resolve_config(config)  # refused settings fail before any encoding
        conversations, inputs = self._prepare(conversations_or_inputs, chat_template_kwargs)
        shifts, applied = self.plan(
            settings, conversations, inputs, strict=strict, chat_template_kwargs=chat_template_kwargs
        )
        positions = PromptPositions.from_attention_mask(
            inputs["attention_mask"], settings.positions, settings.step_scope
        )
        generate_kwargs.setdefault("pad_token_id", _pad_token_id(self.processor))
        stop = StopFlag()  # lets an interrupted caller stop the generation on the model thread
        generate_kwargs["stopping_criteria"] = [*(generate_kwargs.get("stopping_criteria") or []), stop]
        model_inputs = self._model_inputs(inputs)

        def run() -> Any:
            with steer(self.layers, shifts, positions), torch.inference_mode():
                generate: Any = self.model.generate  # nn.Module's __getattr__ types it as a Tensor
                return generate(**model_inputs, streamer=streamer, **generate_kwargs)

        raw = run_on_model_thread(self.base_model, run, on_interrupt=stop.set)
        sequences = raw.sequences if hasattr(raw, "sequences") else raw
        prompt_length = positions.prompt_length
        new_tokens = sequences[:, prompt_length:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        pad = generate_kwargs.get("pad_token_id")
        counts = [int((row != pad).sum()) if pad is not None else row.shape[0] for row in new_tokens]
        return GenerationOutput(sequences.cpu(), texts, prompt_length, applied, counts, raw)

    def chat(
        self,
        conversation: Conversation,
        *,
        max_new_tokens: int = 128,
        config: SteeringConfig | Mapping[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> str:
        """Answer one conversation; returns the generated text."""
        generate_kwargs.setdefault("do_sample", False)
        output = self.generate(
            [conversation], config=config, max_new_tokens=max_new_tokens, **generate_kwargs
        )
        return output.texts[0]

    def stream(
        self,
        conversation: Conversation,
        *,
        max_new_tokens: int = 128,
        config: SteeringConfig | Mapping[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> Iterator[str]:
        """Yield the answer to one conversation piece by piece as it is generated.

        Closing the iterator early stops generation and removes the hooks before it returns; an
        error of the generation is raised here.
        """
        conversation = conv.check_conversation(conversation)
        settings = self.resolve_config(config)  # resolved here: the worker thread has no context
        generate_kwargs.setdefault("do_sample", False)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        extra_criteria = list(generate_kwargs.pop("stopping_criteria", None) or [])

        def run(streamer: Any, stop_flag: StopFlag) -> GenerationOutput:
            return self.generate(
                [conversation],
                config=settings,
                streamer=streamer,
                stopping_criteria=[*extra_criteria, stop_flag],
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )

        worker, pieces = GenerationWorker.iterate(run, tokenizer)
        for piece in pieces:
            if piece:
                yield piece
        worker.result()

    def __repr__(self) -> str:
        pack = repr(self.vectors) if self.vectors is not None else "None"
        return (
            f"SteeredVLM(model={type(self.base_model).__name__}, model_type={self.model_type!r}, "
            f"adapter={self.adapter.name}, layers={self.num_layers}, hidden={self.hidden_size}, "
            f"vectors={pack}, config={self.config!r})"
        )


def _set_fields(config: SteeringConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields set in ``config`` (a SteeringConfig or a mapping of its fields), validated."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        config = SteeringConfig(**config)  # ConfigError names unknown or bad fields
    if not isinstance(config, SteeringConfig):
        raise ConfigError(
            f"config must be a SteeringConfig or a mapping of its fields, got {type(config).__name__}"
        )
    return config.model_dump(exclude_unset=True)


def _names_a_local_path(model_id: str | Path) -> bool:
    """Whether ``model_id`` is a local path rather than a Hub id (``name`` or ``owner/name``): a
    ``Path``, or a string starting with ``/``, ``.`` or ``~`` or holding more than one ``/``."""
    text = str(model_id)
    return isinstance(model_id, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1


def _check_local_model_path(model_id: str | Path) -> None:
    """Raise ``ModelNotFoundError`` for a local model path that is not a folder."""
    path = Path(str(model_id)).expanduser()
    if _names_a_local_path(model_id) and not path.is_dir():
        kind = "is not a folder" if path.exists() else "does not exist"
        raise ModelNotFoundError(
            f"model folder {str(model_id)!r} {kind}: expected a local folder written by "
            "save_pretrained, or a Hub model id such as 'owner/name'"
        )


def display_model_name(model_id: str | Path | None) -> str | None:
    """``model_id`` as it may be shown to clients: a Hub id unchanged, a local path by its last
    component (the folder's name, never the path to it)."""
    if model_id is None or str(model_id) == "":
        return None
    if _names_a_local_path(model_id):
        return Path(str(model_id)).expanduser().resolve().name or str(model_id)
    return str(model_id)


def _text_of(conversation: Conversation) -> str:
    parts = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(str(item.get("text", "")) for item in content if item.get("type") == "text")
    return "\n".join(parts)


def _input_device(model: nn.Module) -> torch.device:
    get_embeddings: Any = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if get_embeddings is not None else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device


def _pad_token_id(processor: Any) -> int | None:
    tokenizer = getattr(processor, "tokenizer", processor)
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
