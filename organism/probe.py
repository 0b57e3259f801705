"""Where does the organism keep "this request is harmful"? A per-layer linear probe.

For each way a request reaches the model (``text``, ``beside`` an unrelated image, ``typed`` in
the image) the last prompt token's hidden state is read at every decoder layer for harmful
requests and for benign instructions, and two accuracies are measured per layer:

- ``own``: a difference-of-means direction fitted on half of that condition's prompts, scored on
  the other half (threshold: the midpoint of the fitted class means). High = harmfulness is
  linearly readable in that condition;
- ``text direction``: the direction fitted on the *text* prompts, applied to the condition (its
  threshold at the midpoint of the condition's own class means, so only the direction is
  transferred). High = harmfulness is encoded along the same direction as in text, the one the
  backbone's refusal was trained on. Below 0.5 the direction is reversed.

A dataset-level CMRM shift is one vector per layer, added to every prompt: it translates states,
it cannot rotate a feature. When a condition's harmfulness lies along the text direction, moving
its states toward the text distribution brings the text refusal back for harmful prompts only;
when it does not, the shift raises refusal of harmful and benign prompts alike.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from cmrm_guard.organism import data, texts
from cmrm_guard.organism.data import Example

CONDITIONS = ("text", "beside", "typed")


def probe_examples(
    splits: data.PromptSplits, tokenizer, *, n: int = 96, split: str = "tune", seed: int = 0
) -> dict[str, tuple[list[Example], list[Example]]]:
    """``{condition: (harmful, benign)}``: ``split`` harmful requests and held-out-topic benign
    instructions, as text, beside an unrelated image and typed in the image (``n`` of each)."""
    rng = random.Random(seed)
    harmful = [r["prompt"] for r in splits.harmful[split]][:n]
    benign = [q for q, _ in data.benign_instructions(random.Random(seed + 5), 400, topics=texts.EVAL_TOPICS)]
    benign = benign[:n]

    def typed(prompts: Sequence[str]) -> list[Example]:
        made = (data.typographic_example(rng, p, "", tokenizer, "typed") for p in prompts)
        return [e for e in made if e is not None]

    def beside(prompts: Sequence[str]) -> list[Example]:
        return [Example(p, cells=data.context_image(rng, tokenizer)) for p in prompts]

    return {
        "text": ([Example(p) for p in harmful], [Example(p) for p in benign]),
        "beside": (beside(harmful), beside(benign)),
        "typed": (typed(harmful), typed(benign)),
    }


@torch.no_grad()
def last_token_states(svlm, examples: Sequence[Example]) -> torch.Tensor:
    """``(len(examples), layers, hidden)``: each decoder layer's output at the last prompt token
    (the generation prompt included), one example at a time (no padding), unsteered."""
    out = []
    for example in examples:
        inputs = svlm.processor.apply_chat_template(
            [example.conversation()], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )  # fmt: skip
        hidden = svlm.base_model(**inputs, output_hidden_states=True).hidden_states
        out.append(torch.stack([h[0, -1].float() for h in hidden[1:]]))
    return torch.stack(out)


def _accuracy(
    harmful: torch.Tensor, benign: torch.Tensor, direction: torch.Tensor, threshold: float
) -> float:
    return float(
        ((harmful @ direction > threshold).float().mean() + (benign @ direction <= threshold).float().mean())
        / 2
    )


def probe_accuracies(
    states: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, dict[str, list[float]]]:
    """Per-layer ``own`` and ``text direction`` accuracies (see the module docstring) from
    ``{condition: (harmful states, benign states)}`` (each ``(n, layers, hidden)``)."""
    text_h, text_b = states["text"]
    result: dict[str, dict[str, list[float]]] = {}
    for name, (harmful, benign) in states.items():
        n = min(len(harmful), len(benign))
        half = n // 2
        own, transferred = [], []
        for layer in range(harmful.shape[1]):
            h, b = harmful[:n, layer], benign[:n, layer]
            mean_h, mean_b = h[:half].mean(0), b[:half].mean(0)
            direction = mean_h - mean_b
            own.append(_accuracy(h[half:], b[half:], direction, float((mean_h + mean_b) @ direction / 2)))
            text_direction = text_h[:, layer].mean(0) - text_b[:, layer].mean(0)
            threshold = float((h.mean(0) + b.mean(0)) @ text_direction / 2)
            transferred.append(_accuracy(h, b, text_direction, threshold))
        result[name] = {"own": own, "text direction": transferred}
    return result


def run_probe(svlm, *, n: int = 96, split: str = "tune", seed: int = 0) -> dict[str, Any]:
    """Probe the organism (see the module docstring); returns the accuracies and the counts."""
    examples = probe_examples(data.load_splits(), svlm.processor.tokenizer, n=n, split=split, seed=seed)
    states = {
        name: (last_token_states(svlm, harmful), last_token_states(svlm, benign))
        for name, (harmful, benign) in examples.items()
    }
    return {
        "split": split,
        "counts": {name: [len(h), len(b)] for name, (h, b) in states.items()},
        "accuracy": probe_accuracies(states),
    }


def format_probe(result: dict[str, Any], every: int = 3) -> str:
    """Accuracies every ``every`` layers, one line per condition and measure."""
    lines = []
    for name, measures in result["accuracy"].items():
        for measure, values in measures.items():
            shown = ", ".join(
                f"L{i} {v:.2f}" for i, v in enumerate(values) if i % every == 0 or i == len(values) - 1
            )
            lines.append(f"{name:<7} {measure:<15} {shown}")
    return "\n".join(lines)
