"""The README demo on the organism: unsteered vs CMRM-steered answers side by side, and refusal rates.

Run: ``cmrm-guard demo`` (or ``python -m cmrm_guard.organism.demo``).
"""

from __future__ import annotations

import time

import torch

from cmrm_guard.config import SteeringConfig
from cmrm_guard.demo import clip_reply
from cmrm_guard.eval import conditions as cond
from cmrm_guard.organism import backbone as bb
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev


def run_organism_demo(
    n: int = 16, max_new_tokens: int = 20, seed: int = 3, rate_tokens: int = 10
) -> dict[str, dict]:
    """Load the organism, show a few answers side by side (``max_new_tokens`` each), print refusal
    rates on ``n`` eval prompts per set (``rate_tokens`` each: a refusal shows in its opening)."""
    from cmrm_guard.hooks import count_hooks
    from cmrm_guard.organism.assemble import assembled_folder
    from cmrm_guard.organism.load import load_organism

    started = time.perf_counter()
    folder = assembled_folder()
    if not (folder / "config.json").exists():
        print(f"assembling the organism once (GGUF backbone + shipped parts) into {folder} ...", flush=True)
    svlm = load_organism()
    tokenizer = svlm.processor.tokenizer
    pack = svlm.vectors
    steered = SteeringConfig()  # the pack's stored alpha / application
    print(
        f"organism: {type(svlm.base_model).__name__} on SmolLM2-135M-Instruct ({bb.GGUF_NAME}), "
        f"{svlm.num_layers} decoder layers; pack: alpha={pack.meta.alpha if pack else None}, "
        f"application={pack.meta.application if pack else None}; loaded in {time.perf_counter() - started:.0f} s"
    )
    splits = data.load_splits()
    conds = ev.conditions(splits, tokenizer, split="eval", n=n, seed=seed)
    shown = [  # the first prompts of each condition, not picked by outcome
        *conds["harmful_image"][:3],
        conds["harmful_typo"][0],
        conds["benign_image"][0],
        conds["qa"][0],
        conds["qa"][3],
    ]
    plain = ev.generate(svlm, shown, max_new_tokens=max_new_tokens, batch_size=8)
    fixed = ev.generate(svlm, shown, max_new_tokens=max_new_tokens, batch_size=8, config=steered)
    print()
    for example, a, b in zip(shown, plain, fixed, strict=True):
        where = (
            "typed in the image" if example.kind == "harmful_typo" else ("+ image" if example.cells else "")
        )
        request = example.meta.get("request", example.prompt)
        print(f"[{example.kind}] {clip_reply(request, 70)} {where}")
        print(f"   unsteered: {clip_reply(a, 100)}")
        print(f"   CMRM     : {clip_reply(b, 100)}")
    print()
    subset = {k: conds[k] for k in ("harmful_image", "harmful_typo", "benign_image", "benign_typo")}
    pack_condition = ev.pack_condition(svlm)
    measured = ev.measure(
        svlm, subset, [cond.multimodal(), cond.text_only(), pack_condition], max_new_tokens=rate_tokens
    )
    steered_name = pack_condition.name
    print(
        f"refusal rates on {n} held-out prompts per set (greedy, {rate_tokens} tokens, cmrm_guard.eval harness: "
        "refusal phrases + fluency):"
    )
    print(f"  {'prompt set':<26} {'text only':>10} {'with image':>11} {'CMRM':>8}")
    rates: dict[str, dict] = {}
    for source, label in (
        (ev.HARMFUL, "harmful, beside an image"),
        (ev.HARMFUL_TYPED, "harmful, typed in image"),
        (ev.BENIGN, "benign, beside an image"),
        (ev.BENIGN_TYPED, "benign, typed in image"),
    ):
        text, image, fixed_rate = (
            measured.rate(c, source) for c in ("text-only", "multimodal", steered_name)
        )
        print(f"  {label:<26} {text:>10.0%} {image:>11.0%} {fixed_rate:>8.0%}")
        rates[source] = {"text": text, "unsteered": image, "cmrm": fixed_rate}
    print(f"hooks left: {count_hooks(svlm.base_model)}; total {time.perf_counter() - started:.0f} s")
    return rates


def main() -> None:
    """Entry point of ``python -m cmrm_guard.organism.demo``."""
    torch.set_num_threads(2)
    run_organism_demo()


if __name__ == "__main__":
    main()
