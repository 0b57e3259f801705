"""`CMRMGuardMiddleware`: CMRM on every model call of a LangChain v1 agent (``create_agent``).

Adding the middleware is the only change an agent needs::

    llm = ChatSteeredVLM.from_pretrained(model_id, vectors="org/pack")
    agent = create_agent(llm, tools=[...], middleware=[CMRMGuardMiddleware(policy="images", alpha=1.0)])

Per model call, ``wrap_model_call`` / ``awrap_model_call`` check that the request's model is a
:class:`~cmrm_guard.langchain.ChatSteeredVLM` (a ``bind``/``bind_tools`` binding of one counts),
then hand the call on with the guard's settings in ``request.model_settings["steering"]``: the agent
binds model settings into the model call (``bind_tools(tools, **model_settings)``), so they reach
the chat model as that call's ``steering=`` argument. Nothing is stored on the shared model, so
agents with different guards can share one model and run concurrently. The returned message's
``response_metadata`` carries ``"cmrm_steering"`` (what the call applied) and ``"cmrm_guard"``
(which guard, with which settings), so traces and LangSmith show both.

Needs ``langchain>=1.0`` (``pip install "cmrm-guard[agents]"``).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as _error:  # langchain missing, or a 0.x langchain without agent middleware
    raise ImportError(
        "cmrm_guard.langchain.CMRMGuardMiddleware needs langchain>=1.0 (langchain.agents.middleware): "
        "pip install 'cmrm-guard[agents]'"
    ) from _error
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableBinding
from torch import Tensor

from cmrm_guard.config import SteeringConfig, SteeringLock
from cmrm_guard.errors import ConfigError, NotSteerableModelError, VectorError
from cmrm_guard.langchain.chat_models import ChatSteeredVLM
from cmrm_guard.langchain.messages import usage_metadata
from cmrm_guard.langchain.overrides import steering_dict
from cmrm_guard.steered import AppliedSteering, SteeredVLM

if TYPE_CHECKING:
    from cmrm_guard.vectors.inputs import VectorsLike

__all__ = ["CMRMGuardMiddleware"]

_REFUSAL: str = ChatSteeredVLM.model_fields["refusal_message"].default


def steerable_chat_model(model: Any) -> ChatSteeredVLM | None:
    """The :class:`ChatSteeredVLM` under ``model`` (through ``bind``/``bind_tools``), else ``None``."""
    while isinstance(model, RunnableBinding):
        model = model.bound
    return model if isinstance(model, ChatSteeredVLM) else None


def _with_chat_model(model: Any, chat: ChatSteeredVLM) -> Any:
    """``model`` with the ChatSteeredVLM under its bindings replaced by ``chat``."""
    if isinstance(model, RunnableBinding):
        return model.model_copy(update={"bound": _with_chat_model(model.bound, chat)})
    return chat


class CMRMGuardMiddleware(AgentMiddleware):
    """Agent middleware applying CMRM steering to each model call of a ``create_agent`` agent.

    The agent's model must be a :class:`~cmrm_guard.langchain.ChatSteeredVLM`. ``create_agent``
    shows middleware no model at construction, so that is checked at each model call, before the
    model runs; :meth:`check_model` runs the same checks at once.

    Args:
        policy: when to steer: ``"images"`` (default) only calls whose conversation holds an image
            (text-only calls stay bit-identical to the unsteered model), ``"always"``, ``"never"``.
        alpha: strength (``None``: the model's setting, else the pack's default).
        mode: ``"dataset"`` or ``"sample"`` (``None``: the model's setting).
        application: ``"increment"`` or ``"every_layer"`` (``None``: the model's / pack's).
        layers: decoder layers to steer (``None``: the model's setting).
        pack: steer this agent with another vector pack (a ``VectorPack``, pack folder, Hub repo
            id, ``{layer: tensor}`` dict or ``(num_layers, hidden)`` tensor), over the same model.
            A folder or Hub id is loaded now; the pack is checked against the model at the first
            call (``PackMismatchError`` before the model runs). Pin a Hub revision with
            ``VectorPack.from_pretrained(repo_id, revision=...)``.
        enabled: ``False`` runs every call unsteered (recorded as such), e.g. for a baseline.
        strict: fail closed: a call that should be steered but cannot be (no valid pack) is not
            answered unsteered; ``on_unsteerable`` says what happens. ``False``: the model's own
            ``strict`` decides. A strict guard without a ``lock`` is locked with
            ``SteeringLock()``: settings from the request (a run's ``configurable``, a later
            middleware's ``model_settings``, call arguments) cannot lower alpha, drop layers,
            turn steering off or change mode / application / policy below this guard's
            settings over the model's; such a call raises ``SteeringLockedError`` before the model runs.
        lock: a :class:`~cmrm_guard.SteeringLock` stating what a request may change relative to
            this guard's settings over the model's (``None``: ``SteeringLock()`` when strict,
            else no lock). The model's own locks hold as well.
        on_unsteerable: for a model that cannot be steered (not a ChatSteeredVLM) or, with
            ``strict``, a call that cannot be: ``"raise"`` (``NotSteerableModelError`` /
            ``SteeringUnavailableError``) or ``"refuse"`` (the model is not run; the reply is
            ``refusal_message`` with ``finish_reason="steering_unavailable"``).
        refusal_message: the reply of a refused call.
        name: the middleware's name in the agent graph and traces (default: the class name).

    The guard's settings win over the model's defaults and over a run's
    ``configurable["cmrm_steering"]``; settings left ``None`` come from those.

    Example:
        >>> from langchain.agents import create_agent
        >>> llm = ChatSteeredVLM.from_pretrained(model_id, vectors="org/pack")
        >>> agent = create_agent(llm, tools=[get_weather],
        ...                      middleware=[CMRMGuardMiddleware(policy="images", alpha=1.0)])
        >>> state = agent.invoke({"messages": [image_question]})
        >>> state["messages"][-1].response_metadata["cmrm_steering"]["applied"]
        True
    """

    def __init__(
        self,
        *,
        policy: Literal["images", "always", "never"] = "images",
        alpha: float | None = None,
        mode: Literal["dataset", "sample"] | None = None,
        application: Literal["increment", "every_layer"] | None = None,
        layers: list[int] | tuple[int, ...] | None = None,
        pack: VectorsLike | None = None,
        enabled: bool = True,
        strict: bool = False,
        on_unsteerable: Literal["raise", "refuse"] = "raise",
        refusal_message: str = _REFUSAL,
        name: str | None = None,
        lock: SteeringLock | None = None,
    ) -> None:
        given = {"alpha": alpha, "mode": mode, "application": application, "layers": layers}
        changes: dict[str, Any] = {"policy": policy, "enabled": enabled}
        changes.update({k: v for k, v in given.items() if v is not None})
        try:
            config = SteeringConfig(**changes)
        except ConfigError as error:
            raise ConfigError(f"CMRMGuardMiddleware: {error}") from None
        if on_unsteerable not in ("raise", "refuse"):
            raise ConfigError(
                f"CMRMGuardMiddleware: on_unsteerable={on_unsteerable!r}: expected 'raise' or 'refuse'"
            )
        if not isinstance(strict, bool):
            raise ConfigError(f"CMRMGuardMiddleware: strict must be True or False, got {strict!r}")
        if lock is not None and not isinstance(lock, SteeringLock):
            raise ConfigError(f"CMRMGuardMiddleware: lock must be a SteeringLock, got {type(lock).__name__}")
        self.lock = lock if lock is not None else SteeringLock() if strict else None
        # the SteeringConfig fields this guard sets on every call, validated and normalised
        self.steering: dict[str, Any] = {key: getattr(config, key) for key in changes}
        self.policy = config.policy
        self.strict = strict
        self.on_unsteerable = on_unsteerable
        self.refusal_message = refusal_message
        self.pack, self.pack_name = _load_pack(pack)
        self._name = name
        self._mode = config.mode
        self._variants: dict[int, tuple[weakref.ref[ChatSteeredVLM], ChatSteeredVLM]] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name or type(self).__name__

    def __repr__(self) -> str:
        pack = f", pack={self.pack_name!r}" if self.pack is not None else ""
        return f"CMRMGuardMiddleware(steering={self.steering!r}{pack}, strict={self.strict})"

    # ------------------------------------------------------------------------------- checks
    def check_model(self, model: Any) -> ChatSteeredVLM:
        """Check that ``model`` can be guarded; return the ChatSteeredVLM each call will use.

        Runs what the first model call runs (model type, pack against the model, layer indices),
        so calling it right after ``create_agent`` fails at construction instead.

        Raises:
            NotSteerableModelError: ``model`` is not a ``ChatSteeredVLM`` (or a binding of one).
            PackMismatchError / VectorError: ``pack`` does not fit the model.
            LayerIndexError: ``layers`` are outside the model's decoder.
            SteeringLockedError: this guard's settings are weaker than the model's lock allows.
        """
        chat = steerable_chat_model(model)
        if chat is None:
            raise NotSteerableModelError(self._not_steerable(model))
        target = self._target(chat)
        target._resolve_steering(dict(self.steering))  # LayerIndexError / SteeringLockedError now
        return target

    def _not_steerable(self, model: Any) -> str:
        got = type(model).__name__
        label = getattr(model, "model_name", None) or getattr(model, "model", None)
        if isinstance(label, str):
            got += f" (model {label!r})"
        return (
            f"{self.name} needs the agent's model to be a cmrm_guard.langchain.ChatSteeredVLM, got {got}: "
            "pass create_agent(ChatSteeredVLM.from_pretrained(model_id, vectors=...), tools, "
            f"middleware=[{self.name}(...)]), or set on_unsteerable='refuse' to refuse such calls"
        )

    def _target(self, chat: ChatSteeredVLM) -> ChatSteeredVLM:
        """``chat``, or its variant with this guard's pack / strictness (built once per model)."""
        if self.pack is None and not self.strict and self.lock is None and not chat.implies_lock():
            return chat  # nothing to add: the guard's settings reach the call as its steering=
        key = id(chat)
        with self._lock:
            entry = self._variants.get(key)
            if entry is not None and entry[0]() is chat:
                return entry[1]
            update: dict[str, Any] = {}
            if self.pack is not None:
                update["steered"] = self._steered_with_pack(chat.steered)
            if self.strict:
                update.update(
                    strict=True, on_unsteerable=self.on_unsteerable, refusal_message=self.refusal_message
                )
            variant = chat._guarded_copy(update, self.lock, self.steering)

            def forget(ref: weakref.ref[ChatSteeredVLM], key: int = key) -> None:
                if self._variants.get(key, (None,))[0] is ref:
                    self._variants.pop(key, None)

            self._variants[key] = (weakref.ref(chat, forget), variant)
            return variant

    def _steered_with_pack(self, source: SteeredVLM) -> SteeredVLM:
        """A SteeredVLM over ``source``'s model (same per-model lock) with this guard's pack."""
        steered = SteeredVLM(
            source.model,
            source.processor,
            vectors=self.pack,
            config=source.config,
            adapter=source.adapter,
            strict=True,  # a pack that does not fit raises (PackMismatchError), never a warning
            model_id=source.model_id,
            lock=source.lock,
        )
        steered.strict = source.strict
        steered._overrides = source._overrides  # the source's steering() blocks reach this pack too
        return steered

    # ------------------------------------------------------------------------------- a call
    def _prepare(self, request: ModelRequest) -> ModelRequest | AIMessage:
        """The request to hand on (guard settings bound to it), or the refusal to answer with."""
        chat = steerable_chat_model(request.model)
        if chat is None:
            message = self._not_steerable(request.model)
            if self.on_unsteerable == "raise":
                raise NotSteerableModelError(message)
            return self._refusal(message)
        target = self.check_model(request.model)
        model = request.model if target is chat else _with_chat_model(request.model, target)
        settings = dict(request.model_settings)
        earlier = steering_dict(settings.get("steering"), "model_settings['steering']")
        settings["steering"] = {**earlier, **self.steering}
        return request.override(model=model, model_settings=settings)

    def _guard_record(self) -> dict[str, Any]:
        steering = {k: list(v) if isinstance(v, tuple) else v for k, v in self.steering.items()}
        return {
            "middleware": self.name,
            "policy": self.policy,
            "steering": steering,
            "pack": self.pack_name,
            "strict": self.strict,
            "lock": self.lock.model_dump(mode="json") if self.lock is not None else None,
        }

    def _refusal(self, reason: str) -> AIMessage:
        record = AppliedSteering(False, mode=self._mode, policy=self.policy, reason=reason)
        return AIMessage(
            content=self.refusal_message,
            response_metadata={
                "finish_reason": "steering_unavailable",
                "cmrm_steering": record.as_dict(),
                "cmrm_guard": self._guard_record(),
            },
            usage_metadata=usage_metadata(0, 0),
        )

    def _stamp(self, result: Any) -> Any:
        """``result`` with ``cmrm_steering`` / ``cmrm_guard`` in each AIMessage's response_metadata."""
        if isinstance(result, AIMessage):
            return self._stamp_message(result)
        if isinstance(result, ModelResponse):
            messages = [self._stamp_message(m) for m in result.result]
            return dataclasses.replace(result, result=messages)
        return result

    def _stamp_message(self, message: BaseMessage) -> BaseMessage:
        if not isinstance(message, AIMessage):
            return message
        metadata = dict(message.response_metadata)
        if "cmrm_steering" not in metadata:  # answered by something other than the model
            reason = "the model call returned no steering record (answered without the steered model)"
            metadata["cmrm_steering"] = AppliedSteering(
                False, mode=self._mode, policy=self.policy, reason=reason
            ).as_dict()
        metadata["cmrm_guard"] = self._guard_record()
        return message.model_copy(update={"response_metadata": metadata})

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        """Check the model, bind this guard's steering to the call, run it, record what was applied."""
        guarded = self._prepare(request)
        if isinstance(guarded, AIMessage):  # the refusal to answer with
            return ModelResponse(result=[guarded])
        return self._stamp(handler(guarded))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        """Async :meth:`wrap_model_call`."""
        guarded = self._prepare(request)
        if isinstance(guarded, AIMessage):  # the refusal to answer with
            return ModelResponse(result=[guarded])
        return self._stamp(await handler(guarded))


def _load_pack(pack: VectorsLike | None) -> tuple[VectorsLike | None, str | None]:
    """``pack`` loaded where it names a folder or Hub repo, and a name for records."""
    from cmrm_guard.vectors.pack import VectorPack

    if pack is None:
        return None, None
    if isinstance(pack, str | Path):
        pack = VectorPack.from_pretrained(pack)
    if isinstance(pack, VectorPack):
        return pack, pack.meta.repo_id or pack.meta.base_model or "vector pack"
    if isinstance(pack, Tensor | Mapping):
        return pack, "in-memory vectors"
    raise VectorError(
        "CMRMGuardMiddleware: pack must be a VectorPack, a pack folder or Hub repo id, a "
        f"{{layer: tensor}} dict or a (num_layers, hidden) tensor; got {type(pack).__name__}"
    )
