"""`ChatSteeredVLM`: a LangChain chat model over a :class:`~cmrm_guard.SteeredVLM`.

Swap it in for any chat model and every call is CMRM-steered::

    llm = ChatSteeredVLM.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", vectors="org/qwen2-vl-2b-cmrm",
                                         max_tokens=256, temperature=0.0)
    llm.invoke([HumanMessage(content=[{"type": "image", "base64": b64, "mime_type": "image/png"},
                                      {"type": "text", "text": "What should I do with this?"}])])

Per-call steering settings (what a ``create_agent`` middleware will set) travel with the call,
never on the model: ``llm.invoke(msgs, steering={"alpha": 0.5})``, the shorthand
``llm.invoke(msgs, alpha=0.5, enabled=False)``, ``llm.bind(steering=...)`` or
``config={"configurable": {"cmrm_steering": {...}}}``. What was applied comes back in
``response_metadata["cmrm_steering"]`` (:meth:`AppliedSteering.as_dict`).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from transformers import LogitsProcessorList

from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.config import SteeringConfig, SteeringLock
from cmrm_guard.errors import ConfigError, SteeringUnavailableError
from cmrm_guard.images import DEFAULT_FORMATS, ImageLimits
from cmrm_guard.langchain.generation import ForcedPrefix, SeededSampler, StreamGate, cut_at_stop
from cmrm_guard.langchain.messages import (
    add_system_text,
    to_conversation,
    tool_call_chunk,
    usage_metadata,
)
from cmrm_guard.langchain.overrides import CONFIGURABLE_KEY, STEERING_FIELDS, steering_dict, with_configurable
from cmrm_guard.langchain.structured import structured_output
from cmrm_guard.langchain.tools import (
    OPEN_TAG,
    ParsedReply,
    json_instruction,
    parse_reply,
    resolve_tool_choice,
    tool_instructions,
)
from cmrm_guard.runtime import GenerationWorker, StopFlag, call_soon, resolve_future, wait_or_stop
from cmrm_guard.steered import AppliedSteering, GenerationOutput, SteeredVLM, display_model_name

if TYPE_CHECKING:
    from cmrm_guard.vectors.inputs import VectorsLike

__all__ = ["CONFIGURABLE_KEY", "ChatSteeredVLM"]

_IGNORED_KWARGS = frozenset({"stream", "parallel_tool_calls"})
_DONE = object()
_WORKERS_KEY = "cmrm_call_workers"


class _CallWorkers(list):
    """The generation workers of one ``stream``/``astream`` call, joined when the caller closes it.

    LangChain's ``BaseChatModel.stream``/``astream`` iterate ``_stream``/``_astream`` without closing
    them when their own consumer stops early (an ``aclose()`` leaves the inner generator to the
    garbage collector); this list, passed down as a call argument, lets the outer call stop and
    join its generation before it returns.
    """

    def __repr__(self) -> str:
        return f"<{len(self)} cmrm-guard generation worker(s)>"

    def __deepcopy__(self, memo: dict[int, Any]) -> _CallWorkers:
        return self  # travels by reference: it is this call's handle, not data

    def running(self) -> bool:
        return any(worker.thread.is_alive() for worker in self)

    def stop_and_join(self) -> None:
        for worker in self:
            worker.stop()
            worker.join()


@dataclass
class _Call:
    """Everything one call needs, resolved in the caller's thread / task before generation."""

    conversation: Conversation
    config: SteeringConfig
    strict: bool
    generate_kwargs: dict[str, Any]
    stops: list[str]
    max_new_tokens: int
    chat_template_kwargs: dict[str, Any] | None = None
    tool_names: list[str] = field(default_factory=list)
    parse_tools: bool = False


class ChatSteeredVLM(BaseChatModel):
    """LangChain chat model answering with a CMRM-steered vision-language model.

    Holds a built :class:`~cmrm_guard.SteeredVLM` (``steered``); construction only validates.
    ``from_pretrained`` loads one with transformers.

    Locking: per-call settings (call arguments, ``bind``, ``configurable["cmrm_steering"]``) are
    request-level; ``lock`` (or, on a strict chat model, the default ``SteeringLock()``) decides
    what they may change, and a weaker request raises ``SteeringLockedError`` before it runs.

    Concurrency: one instance (and one model) may serve threads, ``batch``/``abatch`` and asyncio
    tasks at once. Calls on one model are serialised by SteeredVLM's per-model lock, every per-call
    setting (steering, sampling, tools, stop strings) is passed as an argument, and hooks exist only
    inside a call, so each request gets exactly what it would get alone. Async calls run the
    generation in a worker thread; cancelling the task stops generation after the current token and
    returns only once the steering hooks are removed.

    Example:
        >>> llm = ChatSteeredVLM(steered=SteeredVLM(model, processor, vectors=pack), max_tokens=128)
        >>> llm.invoke([HumanMessage(content=[{"type": "image", "base64": b64, "mime_type": "image/png"},
        ...                                   {"type": "text", "text": "What is this?"}])])
        >>> llm.invoke(messages, steering={"alpha": 0.5})           # per-call steering
        >>> llm.invoke(messages, config={"configurable": {"cmrm_steering": {"enabled": False}}})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    steered: SteeredVLM = Field(exclude=True)
    """The steered model that answers (model, processor, vector pack, default SteeringConfig)."""

    model_name: str | None = Field(default=None, alias="model")
    """Name reported in ``response_metadata`` and traces; default: ``steered.model_name`` (the Hub
    id, or a local folder's name, never its path)."""

    temperature: float | None = None
    """Sampling temperature; ``None`` or ``0`` decodes greedily (deterministic)."""

    max_tokens: int = 256
    """Most new tokens per reply (``max_new_tokens``)."""

    top_p: float | None = None
    """Nucleus sampling mass (only when sampling, i.e. ``temperature > 0``)."""

    top_k: int | None = None
    """Top-k sampling cut-off (only when sampling)."""

    seed: int | None = None
    """Seed of this call's own sampling generator (no global RNG is touched); ``None``: a fresh one."""

    stop: list[str] | None = None
    """Stop strings: the reply ends before the first one."""

    timeout: float | None = None
    """Time limit of one generation in seconds (transformers ``max_time``); the reply is cut there."""

    streaming: bool = False
    """Stream internally by default (``invoke`` then aggregates the streamed chunks)."""

    steering: SteeringConfig | dict[str, Any] | None = None
    """Steering overrides for every call of this chat model, over ``steered.config`` (e.g.
    ``{"alpha": 0.8}``); per-call overrides go over these."""

    strict: bool | None = None
    """Fail closed: a call that should be steered but cannot be is not answered unsteered.
    ``None`` takes ``steered.strict`` (``True`` unless the SteeredVLM was built with
    ``strict=False``: fail-closed is the default of a safety guard); ``True`` turns it on for this
    chat model (``False`` cannot turn off a strict ``SteeredVLM``). Under fail-open, an unsteered
    answer carries ``response_metadata["cmrm_steering"]["fail_open"] = True``. A strict chat
    model without a ``lock`` is locked with ``SteeringLock()``: a request (call arguments, ``bind``, ``configurable``, ``steering()``
    blocks) cannot turn steering off (``enabled=False``, ``policy="never"``) or ask for weaker
    steering than ``steered.config`` and ``steering`` set; it raises ``SteeringLockedError``."""

    lock: SteeringLock | None = None
    """What a request may change in this chat model's steering (``steered.config`` with
    ``steering`` over it is the baseline). ``None``: ``SteeringLock()`` when strict, else no lock
    (``steered.lock``, if any, still holds). Pass e.g. ``SteeringLock(allow_disable=True)`` to let
    a strict chat model's callers opt out explicitly."""

    on_unsteerable: Literal["raise", "refuse"] = "raise"
    """What a strict call that cannot be steered does: raise ``SteeringUnavailableError``, or
    return ``refusal_message`` with ``finish_reason="steering_unavailable"``."""

    refusal_message: str = "I can't answer this request: safety steering is unavailable right now."
    """The reply of a refused call (``on_unsteerable="refuse"``)."""

    allow_remote_images: bool = False
    """Fetch ``http(s)`` image URLs (off by default: prompts could make the server fetch URLs)."""

    allow_local_images: bool = False
    """Read images from local paths (off by default: prompts could read server files)."""

    max_image_bytes: int = 20 * 1024 * 1024
    """Largest encoded image accepted (``ImageTooLargeError`` above)."""

    max_image_pixels: int = 7680 * 4320
    """Largest ``width * height`` accepted, checked before decoding (``ImageTooLargeError`` above)."""

    max_image_aspect_ratio: float = 20.0
    """Largest ``long side / short side`` of an image (``ImageTooLargeError`` above)."""

    max_images: int = 16
    """Most images in one call, over all messages (``ImageTooLargeError`` above)."""

    max_total_image_pixels: int = 2 * 7680 * 4320
    """Most pixels of all images of one call together, checked before decoding each image."""

    image_timeout_s: float = 10.0
    """Total time limit of one remote image fetch or local image read (``ImageTimeoutError``)."""

    allowed_image_hosts: list[str] | None = None
    """Hosts remote images may come from (with ``allow_remote_images``); ``None``: any host, but
    a redirect to another host is refused. Every redirect hop is checked."""

    image_formats: list[str] = Field(default_factory=lambda: list(DEFAULT_FORMATS))
    """Image formats decoded (Pillow names); others raise ``ImageFormatError``."""

    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``model.generate`` (``repetition_penalty``, ``logits_processor``...)."""

    _steering_changes: dict[str, Any] = PrivateAttr(default_factory=dict)
    _pinned_locks: tuple[tuple[SteeringLock, dict[str, Any]], ...] | None = PrivateAttr(default=None)
    _tools_native: bool | None = PrivateAttr(default=None)

    # --------------------------------------------------------------------------- construction
    @model_validator(mode="after")
    def _validate(self) -> ChatSteeredVLM:
        changes = steering_dict(self.steering, "steering")
        self.steered.resolve_config(**changes)  # validates now (ConfigError / LayerIndexError)
        self._steering_changes = changes
        if self.lock is not None and not isinstance(self.lock, SteeringLock):
            raise ConfigError(f"lock must be a SteeringLock, got {type(self.lock).__name__}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.model_name is None:
            self.model_name = self.steered.model_name
        self._image_limits()  # validates the image limits now (ConfigError)
        return self

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, vectors: VectorsLike | None = None, **kwargs: Any
    ) -> ChatSteeredVLM:
        """Load a VLM with transformers, wrap it in a SteeredVLM and return the chat model.

        Keyword arguments naming a field of this class (``max_tokens``, ``temperature``,
        ``steering``...) configure the chat model; the rest go to
        :meth:`SteeredVLM.from_pretrained` (``vectors_revision``, ``config``, ``strict``,
        ``revision``, ``dtype``, ``device_map``...).

        Example:
            >>> llm = ChatSteeredVLM.from_pretrained("Qwen/Qwen2-VL-2B-Instruct",
            ...                                      vectors="org/qwen2-vl-2b-cmrm", max_tokens=256)
        """
        own = {name for name, info in cls.model_fields.items() if name != "steered"}
        own |= {info.alias for info in cls.model_fields.values() if info.alias}
        chat_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in own and k != "strict"}
        steered = SteeredVLM.from_pretrained(model_id, vectors=vectors, **kwargs)
        return cls(steered=steered, **chat_kwargs)

    # ------------------------------------------------------------------------------ LangChain
    @property
    def _llm_type(self) -> str:
        return "cmrm-guard-steered-vlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        pack = self.steered.vectors
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "steering": self.steered.resolve_config(**self._steering_changes).model_dump(mode="json"),
            "pack": display_model_name(pack.meta.repo_id or pack.meta.base_model)
            if pack is not None
            else None,
            "pack_revision": pack.meta.revision if pack is not None else None,
            "pack_provenance": pack.provenance if pack is not None else None,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="cmrm_guard",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------- per-run configuration
    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return super().invoke(input, config, **with_configurable(config, kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        return await super().ainvoke(input, config, **with_configurable(config, kwargs))

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        """Stream the reply; closing the iterator early returns only once its hooks are removed."""
        workers = _CallWorkers()
        chunks = super().stream(input, config, **with_configurable(config, kwargs), **{_WORKERS_KEY: workers})
        try:
            yield from chunks
        finally:
            if isinstance(chunks, Generator):
                chunks.close()
            workers.stop_and_join()

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the reply; ``aclose()`` or cancelling returns only once its hooks are removed."""
        workers = _CallWorkers()
        chunks = super().astream(
            input, config, **with_configurable(config, kwargs), **{_WORKERS_KEY: workers}
        )
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            try:
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()
            finally:
                if workers.running():
                    joined = asyncio.ensure_future(asyncio.to_thread(workers.stop_and_join))
                    try:
                        await asyncio.shield(joined)
                    except asyncio.CancelledError:
                        workers.stop_and_join()  # cancelled while waiting: block rather than leak hooks
                        raise

    # ------------------------------------------------------------------------- call planning
    def implies_lock(self) -> bool:
        """Whether this chat model is locked with ``SteeringLock()`` because it is strict (its own
        ``strict`` or its SteeredVLM's) and was given no ``lock``."""
        return self._pinned_locks is None and self.lock is None and bool(self.strict or self.steered.strict)

    def _locks(self) -> list[tuple[SteeringLock, dict[str, Any]]]:
        """Each lock this chat model's calls are held to, with the deployer settings it compares to."""
        if self._pinned_locks is not None:
            return list(self._pinned_locks)
        own = SteeringLock() if self.implies_lock() else self.lock
        return [(own, self._steering_changes)] if own is not None else []

    def _resolve_steering(self, changes: dict[str, Any]) -> SteeringConfig:
        """The call's settings (``changes`` over ``steering`` and ``steering()`` blocks), lock-checked."""
        settings = self.steered.resolve_config(**{**self._steering_changes, **changes})
        for lock, baseline in self._locks():
            self.steered.check_lock(settings, lock, self.steered.config.replace(**baseline))
        return settings

    def _guarded_copy(
        self, update: dict[str, Any], lock: SteeringLock | None, steering: dict[str, Any]
    ) -> ChatSteeredVLM:
        """A copy with ``update`` applied, held to this model's locks and to a guard's ``lock``.

        The guard's ``steering`` (its settings over this model's) is the baseline of its lock and
        of the lock a strict model implies (the guard is the deployer's code too); a lock given to
        this model keeps its own baseline. The copy's ``strict`` adds no lock.
        """
        baseline = {**self._steering_changes, **steering}
        implied = self.implies_lock()
        # a lock given to this model keeps its baseline; the lock a strict model implies guards the
        # deployer's settings, which a guard's settings (deployer code too) refine
        locks = [] if implied else self._locks()
        if lock is not None:
            locks.append((lock, baseline))
        elif implied:
            locks.append((SteeringLock(), baseline))
        variant = self.model_copy(update=update)
        variant._pinned_locks = tuple(locks)
        return variant

    def _image_limits(self) -> ImageLimits:
        return ImageLimits(
            allow_remote=self.allow_remote_images,
            allow_local_files=self.allow_local_images,
            allowed_hosts=None if self.allowed_image_hosts is None else tuple(self.allowed_image_hosts),
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            max_aspect_ratio=self.max_image_aspect_ratio,
            max_images=self.max_images,
            max_total_pixels=self.max_total_image_pixels,
            timeout_s=self.image_timeout_s,
            formats=tuple(self.image_formats),
        )

    def _template_renders_tools(self) -> bool:
        """Whether the processor's chat template renders ``tools`` (probed once)."""
        if self._tools_native is None:
            probe = {
                "type": "function",
                "function": {
                    "name": "cmrm_guard_probe_tool",
                    "description": "probe",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
            extra: dict[str, Any] = {}
            fallback = getattr(self.steered.adapter, "fallback_chat_template", None)
            if getattr(self.steered.processor, "chat_template", None) is None and fallback:
                extra["chat_template"] = fallback
            try:
                text = self.steered.processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "text", "text": "probe"}]}],
                    tools=[probe],
                    tokenize=False,
                    add_generation_prompt=True,
                    **extra,
                )
                self._tools_native = "cmrm_guard_probe_tool" in str(text)
            except Exception:  # a template that fails on tools does not render them
                self._tools_native = False
        return self._tools_native

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        kwargs = dict(kwargs)
        kwargs.pop(_WORKERS_KEY, None)
        changes = steering_dict(kwargs.pop("steering", None), "steering")
        changes.update({k: kwargs.pop(k) for k in list(kwargs) if k in STEERING_FIELDS})
        settings = self._resolve_steering(changes)  # caller's context: steering() blocks count
        temperature = kwargs.pop("temperature", self.temperature)
        max_tokens = int(kwargs.pop("max_tokens", self.max_tokens))
        top_p = kwargs.pop("top_p", self.top_p)
        top_k = kwargs.pop("top_k", self.top_k)
        seed = kwargs.pop("seed", self.seed)
        timeout = kwargs.pop("timeout", self.timeout)
        tools = kwargs.pop("tools", None) or []
        tool_choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        extra_generate = {**self.generation_kwargs, **(kwargs.pop("generation_kwargs", None) or {})}
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise ConfigError(
                f"model={model!r}: this chat model serves {self.model_name!r} only; build another "
                "ChatSteeredVLM for another model"
            )
        unknown = sorted(k for k in kwargs if k not in _IGNORED_KWARGS)
        if unknown:
            raise ConfigError(
                f"unknown call argument(s) {unknown}: expected steering=, SteeringConfig fields "
                f"({', '.join(sorted(STEERING_FIELDS))}), temperature, max_tokens, top_p, top_k, seed, "
                "timeout, tools, tool_choice, response_format or generation_kwargs"
            )
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")

        forced_name, offered = resolve_tool_choice(tool_choice, tools)
        native = bool(offered) and self._template_renders_tools()
        conversation = to_conversation(
            messages, self._image_limits(), tools_as_text=bool(offered) and not native
        )
        instructions = []
        if offered and not native:
            instructions.append(tool_instructions(offered))
        if offered and forced_name:
            instructions.append(f"Call the function {forced_name} now.")
        elif offered and tool_choice in ("any", "required", True):
            instructions.append("Call one of the functions now.")
        if response_format is not None:
            instructions.append(json_instruction(response_format))
        if instructions:
            conversation = add_system_text(conversation, "\n\n".join(instructions))

        tokenizer = getattr(self.steered.processor, "tokenizer", self.steered.processor)
        processors: list[Any] = []
        if offered and (forced_name or tool_choice in ("any", "required", True)):
            prefix = f'{OPEN_TAG}\n{{"name": "'
            if forced_name:
                prefix += f'{forced_name}", "arguments": '
            processors.append(ForcedPrefix(tokenizer.encode(prefix, add_special_tokens=False)))
        if temperature:
            if seed is None:
                seed = random.SystemRandom().getrandbits(63)
            processors.append(SeededSampler(temperature, top_p, top_k, seed))
        user_processors = extra_generate.pop("logits_processor", None) or []
        generate_kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": False}
        stops = [s for s in (stop if stop is not None else self.stop) or [] if s]
        if stops:
            generate_kwargs["stop_strings"] = stops
            generate_kwargs["tokenizer"] = tokenizer
        if timeout:
            generate_kwargs["max_time"] = float(timeout)
        if processors or user_processors:
            generate_kwargs["logits_processor"] = LogitsProcessorList([*processors, *user_processors])
        generate_kwargs.update(extra_generate)
        return _Call(
            conversation=conversation,
            config=settings,
            strict=bool(self.steered.strict or self.strict),
            generate_kwargs=generate_kwargs,
            stops=stops,
            max_new_tokens=max_tokens,
            chat_template_kwargs={"tools": offered} if native else None,
            tool_names=[t["function"]["name"] for t in offered],
            parse_tools=bool(offered),
        )

    def _run(self, call: _Call, streamer: Any = None, stop_flag: StopFlag | None = None) -> GenerationOutput:
        generate_kwargs = dict(call.generate_kwargs)
        if stop_flag is not None:
            generate_kwargs["stopping_criteria"] = [*generate_kwargs.pop("stopping_criteria", []), stop_flag]
        return self.steered.generate(
            [call.conversation],
            config=call.config,
            streamer=streamer,
            strict=call.strict,
            chat_template_kwargs=call.chat_template_kwargs,
            **generate_kwargs,
        )

    # ------------------------------------------------------------------------------- results
    def _reply(
        self, call: _Call, output: GenerationOutput
    ) -> tuple[ParsedReply, dict[str, Any], UsageMetadata]:
        text, stopped = cut_at_stop(output.texts[0], call.stops)
        parsed = parse_reply(text, call.tool_names) if call.parse_tools else ParsedReply(content=text)
        count = output.new_token_counts[0] if output.new_token_counts else 0
        if parsed.tool_calls:
            finish = "tool_calls"
        elif stopped or count < call.max_new_tokens or self._ended_with_eos(output):
            finish = "stop"
        else:
            finish = "length"
        metadata = {
            "model_name": self.model_name,
            "finish_reason": finish,
            "cmrm_steering": output.steering.as_dict(),
        }
        prompt = int(output.prompt_length)
        usage = usage_metadata(prompt, count)
        return parsed, metadata, usage

    def _ended_with_eos(self, output: GenerationOutput) -> bool:
        eos = getattr(self.steered.base_model.generation_config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return bool(output.sequences.shape[1]) and int(output.sequences[0, -1]) in eos_ids

    def _refusal(self, call: _Call, error: SteeringUnavailableError) -> AIMessage:
        if self.on_unsteerable == "raise":
            raise error
        record = AppliedSteering(False, mode=call.config.mode, policy=call.config.policy, reason=str(error))
        return AIMessage(
            content=self.refusal_message,
            response_metadata={
                "model_name": self.model_name,
                "finish_reason": "steering_unavailable",
                "cmrm_steering": record.as_dict(),
            },
            usage_metadata=usage_metadata(0, 0),
        )

    # ---------------------------------------------------------------------------- generation
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        try:
            output = self._run(call)
        except SteeringUnavailableError as error:
            return ChatResult(generations=[ChatGeneration(message=self._refusal(call, error))])
        return self._chat_result(call, output)

    def _chat_result(self, call: _Call, output: GenerationOutput) -> ChatResult:
        """The ``ChatResult`` of a finished generation (content, tool calls, metadata, usage)."""
        parsed, metadata, usage = self._reply(call, output)
        message = AIMessage(
            content=parsed.content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            response_metadata=metadata,
            usage_metadata=usage,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = await asyncio.to_thread(self._prepare, messages, stop, kwargs)  # images decode off-loop
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        run = GenerationWorker(
            lambda streamer, stop_flag: self._run(call, streamer, stop_flag),
            on_done=lambda: call_soon(loop, resolve_future, done),
        ).start()
        await wait_or_stop(run, done)
        if isinstance(run.error, SteeringUnavailableError):
            return ChatResult(generations=[ChatGeneration(message=self._refusal(call, run.error))])
        if run.error is not None:
            raise run.error
        return self._chat_result(call, run.output)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        run, pieces = GenerationWorker.iterate(
            lambda streamer, stop_flag: self._run(call, streamer, stop_flag),
            getattr(self.steered.processor, "tokenizer", self.steered.processor),
        )
        kwargs.get(_WORKERS_KEY, []).append(run)
        gate = StreamGate(call.stops, call.parse_tools)
        try:
            for piece in pieces:
                delta = gate.feed(piece)
                if gate.stopped:
                    run.stop()
                if delta:
                    yield _text_chunk(delta)
        finally:
            pieces.close()
        yield from self._final_chunks(call, run, gate)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = await asyncio.to_thread(self._prepare, messages, stop, kwargs)  # images decode off-loop
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        done = loop.create_future()

        def finished() -> None:
            resolve_future(done)
            pieces.put_nowait(_DONE)

        run = GenerationWorker(
            lambda streamer, stop_flag: self._run(call, streamer, stop_flag),
            tokenizer=getattr(self.steered.processor, "tokenizer", self.steered.processor),
            on_piece=lambda text: call_soon(loop, pieces.put_nowait, text),
            on_done=lambda: call_soon(loop, finished),
        ).start()
        kwargs.get(_WORKERS_KEY, []).append(run)
        gate = StreamGate(call.stops, call.parse_tools)
        try:
            while (piece := await pieces.get()) is not _DONE:
                delta = gate.feed(piece)
                if gate.stopped:
                    run.stop()
                if delta:
                    yield _text_chunk(delta)
        finally:
            await wait_or_stop(run, done, stop_first=True)
        for chunk in self._final_chunks(call, run, gate):
            yield chunk

    def _final_chunks(
        self, call: _Call, run: GenerationWorker, gate: StreamGate
    ) -> Iterator[ChatGenerationChunk]:
        if isinstance(run.error, SteeringUnavailableError):
            refusal = self._refusal(call, run.error)  # raises unless on_unsteerable="refuse"
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=refusal.content,
                    response_metadata=refusal.response_metadata,
                    usage_metadata=refusal.usage_metadata,
                    chunk_position="last",
                )
            )
            return
        if run.error is not None:
            raise run.error
        parsed, metadata, usage = self._reply(call, run.output)
        emitted = gate.emitted
        rest = parsed.content[len(emitted) :] if parsed.content.startswith(emitted) else ""
        tool_chunks = [
            tool_call_chunk(c["name"], json.dumps(c["args"], ensure_ascii=False), c["id"], i)
            for i, c in enumerate(parsed.tool_calls)
        ]
        offset = len(tool_chunks)
        # an invalid call's text goes as a JSON string, which LangChain's partial-JSON parser keeps
        # invalid (a raw body could be completed into a "valid" call, or be nested past its limits)
        tool_chunks += [
            tool_call_chunk(c["name"], json.dumps(c["args"], ensure_ascii=False), c["id"], offset + i)
            for i, c in enumerate(parsed.invalid_tool_calls)
        ]
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=rest,
                tool_call_chunks=tool_chunks,
                response_metadata=metadata,
                usage_metadata=usage,
                chunk_position="last",
            )
        )

    # ------------------------------------------------------------------------ tools / output
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the model; its ``<tool_call>`` replies come back as ``AIMessage.tool_calls``.

        Schemas go to the chat template's ``tools`` support when it has one, else into the system
        message as Hermes-style instructions.

        Args:
            tools: LangChain tools, functions, pydantic models, TypedDicts or OpenAI tool dicts.
            tool_choice: ``None`` / ``"auto"`` (the model decides), ``"none"`` (tools not offered),
                ``"any"`` / ``"required"`` / ``True`` (the reply is forced to open a tool call), or a
                tool name / ``{"type": "function", "function": {"name": ...}}`` (the reply is forced
                to call that tool: its ``<tool_call>`` prefix and name are forced tokens).
            strict: passed to ``convert_to_openai_tool`` (schema only; arguments are not constrained).
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        resolve_tool_choice(tool_choice, formatted)  # validate now
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | Any]:
        """Answer as an instance of ``schema`` (pydantic class, TypedDict or JSON schema).

        ``"function_calling"`` (default) forces a call of a tool made from the schema;
        ``"json_schema"`` / ``"json_mode"`` ask for a JSON object in the text (the schema in the
        system message) and parse it. Pydantic schemas are validated when parsed; there is no
        constrained decoding. ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``.
        """
        return structured_output(
            self, schema, method=method, include_raw=include_raw, strict=strict, **kwargs
        )


def _text_chunk(text: str) -> ChatGenerationChunk:
    """A content chunk."""
    return ChatGenerationChunk(message=AIMessageChunk(content=text))
