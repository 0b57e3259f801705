"""Dataset-level CMRM vectors from calibration samples.

For each sample, the text-only twin and the corrupted twin run together in one batched forward;
only the last prompt token's state leaving each decoder layer is kept (memory flat in prompt
length; never ``output_hidden_states=True``). ``d_i^l = h_text^l - h_corrupt^l`` is reduced over
samples by the ``"mean"`` or ``"pc1"`` estimator into ``v^l``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cmrm_guard.adapters import conversation as conv
from cmrm_guard.adapters.conversation import Conversation
from cmrm_guard.config import Application, CalibrationConfig, Corruption, Estimator, check_alpha
from cmrm_guard.errors import ConfigError, ConversationError

if TYPE_CHECKING:
    from cmrm_guard.steered import SteeredVLM
    from cmrm_guard.vectors.pack import VectorPack


def mean_estimator(deltas: Tensor) -> Tensor:
    """``v = mean_i d_i`` over (n, hidden) differences."""
    return deltas.mean(dim=0)


def pc1_estimator(deltas: Tensor) -> Tensor:
    """First principal direction of (n, hidden) differences, signed to agree with their mean and
    scaled to the mean's norm.

    Uncentred (the top right-singular vector of the stacked differences), as steering-vectors'
    ``pca_aggregator``: the direction that best explains the differences themselves.
    """
    mean = deltas.mean(dim=0)
    _, _, vh = torch.linalg.svd(deltas.double(), full_matrices=False)
    direction = vh[0].to(deltas.dtype)
    if torch.dot(direction, mean) < 0:
        direction = -direction
    return direction * mean.norm()


ESTIMATORS = {"mean": mean_estimator, "pc1": pc1_estimator}


def as_conversation(sample: Any, index: int, default_size: tuple[int, int]) -> Conversation:
    """Normalise a calibration sample into a conversation that carries at least one image.

    Accepted: a conversation (list of messages); a dict ``{"prompt": str, "image": PIL | path |
    None}``; a plain prompt string. A prompt with no image is paired with a plain white image of the
    model's native size, so its corrupted twin exists (only the twins enter ``d``).
    """
    from PIL import Image

    if isinstance(sample, str):
        sample = {"prompt": sample}
    if isinstance(sample, Mapping):
        prompt = sample.get("prompt", sample.get("text"))
        if not isinstance(prompt, str) or not prompt:
            raise ConversationError(
                f"calibration sample {index} needs a non-empty 'prompt' string, got "
                f"{type(prompt).__name__ if prompt is not None else 'no prompt'} (keys {sorted(map(str, sample))})"
            )
        image = sample.get("image") or sample.get("image_path")
        if image is None:
            image = Image.new("RGB", default_size, (255, 255, 255))
        return [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
        ]
    conversation = conv.check_conversation(sample)
    if not conv.has_image(conversation):
        raise ConversationError(
            f"calibration conversation {index} has no image: CMRM's corrupted twin needs one "
            "(pass {'prompt': ..., 'image': ...} or add an image item)"
        )
    return conversation


def calibrate(
    svlm: SteeredVLM,
    samples: Iterable[Any],
    *,
    config: CalibrationConfig | None = None,
    estimator: Estimator | None = None,
    batch_size: int | None = None,
    corruption: Corruption | None = None,
    layers: Sequence[int] | None = None,
    alpha: float = 1.0,
    application: Application = "increment",
    progress: bool | None = None,
    noise_seed: int | None = None,
) -> VectorPack:
    """Compute dataset-level CMRM vectors for ``svlm``'s model.

    The estimation settings come from ``config`` (default: ``CalibrationConfig()``); each of
    ``estimator``, ``batch_size``, ``corruption`` and ``noise_seed`` that is given (not ``None``)
    replaces the config's value.

    Args:
        svlm: the wrapped model.
        samples: conversations with images, ``{"prompt", "image"}`` dicts or prompt strings.
        config: a :class:`~cmrm_guard.config.CalibrationConfig` (estimator, corruption, batch size,
            noise seed).
        estimator: ``"mean"`` or ``"pc1"`` (default ``"mean"``).
        batch_size: samples per forward (each contributes two rows: its two twins; default 8).
        corruption: ``"blank"`` or ``"noise"`` (default ``"blank"``).
        layers: decoder layers to compute (``None``: all).
        alpha, application: the defaults stored in the pack (alpha a finite number >= 0;
            checked before any sample runs).
        progress: show a progress bar (``None``: only when stderr is a terminal).
        noise_seed: seed of the noise corruption (default 0).

    Returns:
        An in-memory :class:`~cmrm_guard.vectors.VectorPack`.

    Raises:
        ConfigError: ``config`` is not a ``CalibrationConfig``, or a setting is invalid.

    Example:
        >>> pack = calibrate(svlm, [{"prompt": p} for p in prompts], estimator="mean")
        >>> pack = calibrate(svlm, samples, config=CalibrationConfig(estimator="pc1", batch_size=4))
    """
    from cmrm_guard.hooks import check_layer_indices
    from cmrm_guard.vectors.pack import PackMeta, VectorPack

    if config is not None and not isinstance(config, CalibrationConfig):
        raise ConfigError(f"calibrate: config must be a CalibrationConfig, got {type(config).__name__}")
    given = {
        "estimator": estimator,
        "batch_size": batch_size,
        "corruption": corruption,
        "noise_seed": noise_seed,
    }
    settings = (config or CalibrationConfig()).replace(
        **{name: value for name, value in given.items() if value is not None}
    )
    try:
        check_alpha(alpha)
    except ValueError as error:
        raise ConfigError(f"calibrate: {error}") from None
    if application not in ("increment", "every_layer"):
        raise ConfigError(f"calibrate: application={application!r}: expected 'increment' or 'every_layer'")
    layer_list = list(range(svlm.num_layers)) if layers is None else sorted(set(layers))
    check_layer_indices(layer_list, svlm.num_layers)
    size = svlm.adapter.default_image_size(svlm.processor)
    conversations = [as_conversation(s, i, size) for i, s in enumerate(samples)]
    if not conversations:
        raise ConfigError("calibrate needs at least one sample, got none")
    if settings.estimator == "pc1" and len(conversations) < 2:
        raise ConfigError("the 'pc1' estimator needs at least 2 samples")
    show = sys.stderr.isatty() if progress is None else progress
    collected: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    with tqdm(total=len(conversations), desc="CMRM calibration", unit="sample", disable=not show) as bar:
        for start in range(0, len(conversations), settings.batch_size):
            batch = conversations[start : start + settings.batch_size]
            deltas = svlm.twin_differences(
                batch, layer_list, corruption=settings.corruption, seed=settings.noise_seed + 1000 * start
            )
            for layer in layer_list:
                collected[layer].append(deltas[layer])
            bar.update(len(batch))
    reduce = ESTIMATORS[settings.estimator]
    shifts = {layer: reduce(torch.cat(parts)) for layer, parts in collected.items()}
    meta = PackMeta(
        base_model=svlm.model_id,
        model_type=svlm.model_type,
        hidden_size=svlm.hidden_size,
        num_layers=svlm.num_layers,
        layer_indices=layer_list,
        estimator=settings.estimator,
        corruption=settings.corruption,
        alpha=alpha,
        application=application,
        num_samples=len(conversations),
        calibration_hash=conv.fingerprint(conversations),
    )
    return VectorPack(shifts, meta)
