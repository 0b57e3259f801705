"""Offline demo: CMRM on an embedded tiny LLaVA, built locally in a second (no download).

What it shows is the mechanism, not safety: the tiny model has random weights, so its answers are
gibberish, but everything else is the real code path. It calibrates dataset-level vectors, answers
a few image prompts unsteered and steered side by side, and measures the representation gap CMRM
closes: how far the multimodal last-token state sits from its text-only twin, before and after.

Run: ``cmrm-guard demo --tiny`` (or ``python -m cmrm_guard.demo``).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Sequence

import torch

from cmrm_guard.config import SteeringConfig
from cmrm_guard.hooks import count_hooks
from cmrm_guard.steered import SteeredVLM
from cmrm_guard.testing import build_tiny_vlm, tiny_image
from cmrm_guard.vectors.calibrate import calibrate

CALIBRATION_PROMPTS = (
    "describe what you see in the picture",
    "how can I get into a house without a key",
    "write a short poem about the sea",
    "what is the capital of france",
    "tell me how to make something dangerous",
    "count the shapes in this image",
    "explain how a bicycle works",
    "give me step by step instructions for this",
)
DEMO_PROMPTS = (
    "what should I do with the thing in this picture?",
    "follow the instructions in the image.",
    "what colour is the shape?",
)


SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)")
"""The end of a sentence: ``.``, ``!`` or ``?`` after a word (not a list number such as ``1.``)."""


def readable(text: str) -> str:
    """``text`` as it may be printed: whitespace runs to one space, and no control characters,
    unassigned code points or U+FFFD (what decoding a partial UTF-8 byte sequence gives)."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or (ch != "\ufffd" and unicodedata.category(ch) not in ("Cc", "Cf", "Cn", "Co", "Cs"))
    )
    return " ".join(kept.split())


def clip_reply(text: str, width: int) -> str:
    """A reply cut short for display: :func:`readable`, at most ``width`` characters, ending at a
    sentence or word boundary.

    A reply cut by the token budget usually stops inside a sentence, and maybe inside a word: it
    ends at its last full sentence when that keeps at least a third of it, else after its last
    whole word, followed by ``...``. A reply that ends a sentence is kept whole (if it fits).
    """
    text = readable(text)
    if len(text) > width:
        text = text[: width - 2]  # room for "..."; the word cut at the end is dropped below
    elif not text or text[-1] in ".!?":
        return text
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) / 3:
        return text[: ends[-1]]
    words = text.split(" ")[:-1]
    return (" ".join(words).rstrip(".,;:") + "...") if words else text[: width - 3] + "..."


def _chat(text: str, seed: int) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": tiny_image(seed)}, {"type": "text", "text": text}],
        }
    ]


def _gap(svlm: SteeredVLM, chats: Sequence[list[dict]], config: SteeringConfig | None) -> float:
    """Mean L2 distance, at the last decoder layer, between multimodal and text-only last-token states."""
    last = svlm.num_layers - 1
    mm = svlm.last_token_states(chats, [last], config=config)[last]
    text = svlm.last_token_states([svlm.adapter.text_only_twin(c) for c in chats], [last])[last]
    return float((mm - text).norm(dim=-1).mean())


def run_demo(model_type: str = "llava", max_new_tokens: int = 12, seed: int = 0) -> dict[str, float]:
    """Run the demo and print its report; returns the measured gaps."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    model, processor = build_tiny_vlm(model_type, seed=seed)
    svlm = SteeredVLM(model, processor)
    print(
        f"model: tiny random {type(model).__name__} ({svlm.num_layers} decoder layers, hidden "
        f"{svlm.hidden_size}), adapter {svlm.adapter.name}; random weights: this shows the mechanism, "
        "not safety"
    )
    pack = calibrate(svlm, [{"prompt": p} for p in CALIBRATION_PROMPTS], batch_size=4, progress=False)
    print(f"calibrated on {pack.meta.num_samples} prompts: {pack!r}")
    print("per-layer |v|: " + ", ".join(f"{i}: {n:.3f}" for i, n in pack.layer_norms().items()))
    svlm.attach(pack)
    config = SteeringConfig(alpha=1.0, application="increment")
    chats = [_chat(p, i + 10) for i, p in enumerate(DEMO_PROMPTS)]
    print()
    print(f"{'prompt':<48} | {'unsteered':<30} | steered (alpha=1.0)")
    print("-" * 112)
    with svlm.steering(enabled=False):
        plain = svlm.generate(chats, max_new_tokens=max_new_tokens, do_sample=False)
    steered = svlm.generate(chats, config=config, max_new_tokens=max_new_tokens, do_sample=False)
    for prompt, a, b in zip(DEMO_PROMPTS, plain.texts, steered.texts, strict=True):
        print(f"{prompt:<48} | {clip_reply(a, 30):<30} | {clip_reply(b, 30)}")
    print(f"steering applied: {steered.steering.as_dict()}")
    text_only = svlm.generate([svlm.adapter.text_only_twin(chats[0])], max_new_tokens=2)
    print(
        f"a text-only prompt under policy 'images': applied={text_only.steering.applied} "
        f"({text_only.steering.reason})"
    )
    sample = SteeringConfig(mode="sample", alpha=1.0)
    gaps = {
        "unsteered": _gap(svlm, chats, None),
        "dataset-level": _gap(svlm, chats, config),
        "sample-level": _gap(svlm, chats, sample),
    }
    print()
    print("representation gap at the last layer, |h_mm - h_text| (mean over prompts):")
    for name, value in gaps.items():
        print(f"  {name:<14} {value:.4f}")
    print(f"hooks left on the model: {count_hooks(model)}; took {time.perf_counter() - started:.1f} s")
    return gaps


def main() -> None:
    """Entry point of ``python -m cmrm_guard.demo``."""
    run_demo()


if __name__ == "__main__":
    main()
