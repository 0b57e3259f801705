"""Representation diagnostics: how far multimodal last-token states sit from their text-only twins.

For a few prompts, the state of the last prompt token leaving every decoder layer is read
(:meth:`SteeredVLM.last_token_states`, one batched pass per condition) for the image+text prompt
unsteered, for its text-only twin, and for the image+text prompt under each steered condition.
Per layer: mean cosine similarity and mean L2 distance of each state to its own text-only twin
("before" = unsteered, "after" = steered). CMRM should raise the cosine and shrink the distance.
A 2-D PCA of the three kinds of states at one layer shows the same picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cmrm_guard.eval.conditions import Condition, text_only
from cmrm_guard.eval.prompts import EvalPrompt


def choose_prompts(prompts: Sequence[EvalPrompt], count: int) -> list[EvalPrompt]:
    """Up to ``count`` prompts for diagnostics: harmful first, then benign, then utility."""
    order = {"harmful": 0, "benign": 1, "utility": 2}
    ranked = sorted(prompts, key=lambda p: order.get(p.kind, 3))
    return [p for p in ranked if not (p.kind == "utility" and p.needs_image)][:count] or list(ranked[:count])


def _states(svlm: Any, conversations: Sequence[Any], batch_size: int, **kwargs: Any) -> dict[int, Tensor]:
    parts: dict[int, list[Tensor]] = {}
    for start in range(0, len(conversations), batch_size):
        chunk = list(conversations[start : start + batch_size])
        extra = dict(kwargs)
        if extra.pop("text_only", False):
            extra["text_only_rows"] = len(chunk)
        for layer, state in svlm.last_token_states(chunk, **extra).items():
            parts.setdefault(layer, []).append(state)
    return {layer: torch.cat(chunks) for layer, chunks in sorted(parts.items())}


def layer_gap(states: Mapping[int, Tensor], reference: Mapping[int, Tensor]) -> dict[str, list[float]]:
    """Per layer: mean cosine similarity and mean L2 distance of rows of ``states`` to ``reference``."""
    cosine, l2 = [], []
    for layer in sorted(reference):
        a, b = states[layer].double(), reference[layer].double()
        cosine.append(float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()))
        l2.append(float((a - b).norm(dim=-1).mean()))
    return {"cosine": cosine, "l2": l2}


def pca_2d(groups: Mapping[str, Tensor]) -> dict[str, Any]:
    """Project the rows of every group onto the top two principal components of all rows together."""
    names = list(groups)
    stacked = torch.cat([groups[n].double() for n in names])
    centred = stacked - stacked.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    projected = centred @ components.T
    if projected.shape[1] < 2:  # a single row: pad the missing axis
        projected = torch.cat([projected, torch.zeros(projected.shape[0], 2 - projected.shape[1])], dim=1)
    variance = singular**2
    ratio = (variance[:2] / variance.sum()).tolist() if float(variance.sum()) > 0 else [0.0, 0.0]
    out, start = {}, 0
    for name in names:
        rows = groups[name].shape[0]
        out[name] = projected[start : start + rows].tolist()
        start += rows
    return {"points": out, "explained_variance_ratio": (ratio + [0.0, 0.0])[:2]}


def representation_diagnostics(
    wrappers: Mapping[str | None, Any],
    prompts: Sequence[EvalPrompt],
    conditions: Sequence[Condition],
    *,
    image_size: tuple[int, int],
    batch_size: int = 8,
    pca_layer: int | None = None,
) -> dict[str, Any]:
    """Gap per layer (before / after each steered condition) and a 2-D PCA, as a JSON-ready dict.

    Args:
        wrappers: ``SteeredVLM`` per pack name (``None``: the unsteered / sample-level one).
        prompts: the diagnostic prompts (see :func:`choose_prompts`).
        conditions: steered conditions among these are measured.
        image_size: size images are drawn at.
        batch_size: conversations per forward pass.
        pca_layer: layer of the PCA; default: the layer where the unsteered cosine is lowest.
    """
    base = wrappers[None]
    twin = text_only()
    mm = [p.conversation(image_size) for p in prompts]
    text = [twin.conversation(p, image_size, base.adapter) for p in prompts]
    reference = _states(base, text, batch_size, text_only=True)
    groups = {"multimodal": _states(base, mm, batch_size)}
    for condition in conditions:
        if condition.steered:
            svlm = wrappers[condition.pack if condition.kind == "dataset" else None]
            config = condition.steering_config(svlm.config)
            groups[condition.name] = _states(svlm, mm, batch_size, config=config)
    gap = {name: layer_gap(states, reference) for name, states in groups.items()}
    layers = sorted(reference)
    if pca_layer is None:
        cosines = gap["multimodal"]["cosine"]
        pca_layer = layers[min(range(len(layers)), key=cosines.__getitem__)]
    pca = pca_2d({"text-only": reference[pca_layer]} | {n: s[pca_layer] for n, s in groups.items()})
    return {
        "prompt_ids": [p.id for p in prompts],
        "layers": layers,
        "gap": gap,
        "text_norm": [float(reference[layer].double().norm(dim=-1).mean()) for layer in layers],
        "pca": {"layer": pca_layer, **pca},
    }
