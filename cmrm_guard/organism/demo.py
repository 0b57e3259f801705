"""The README demo on the organism: unsteered vs CMRM-steered answers side by side, and refusal rates.

Run: ``cmrm-guard organism demo`` (or ``python -m cmrm_guard.organism.demo``). About a minute on
2 CPU cores once the organism is assembled (the first run assembles it, ~30-60 s more).
"""

from __future__ import annotations

import textwrap
import time

import torch

from cmrm_guard.config import SteeringConfig
from cmrm_guard.organism import backbone as bb
from cmrm_guard.organism import data
from cmrm_guard.organism import evaluate as ev


def _short(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder="...")


def run_organism_demo(n: int = 24, max_new_tokens: int = 20, seed: int = 3) -> dict[str, dict]:
    """Load the organism, show a few answers side by side, print refusal rates on ``n`` eval prompts."""
    from cmrm_guard.hooks import count_hooks
    from cmrm_guard.organism.load import load_organism

    started = time.perf_counter()
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
        print(f"[{example.kind}] {_short(request, 70)} {where}")
        print(f"   unsteered: {_short(a, 90)}")
        print(f"   CMRM     : {_short(b, 90)}")
    print()
    rates: dict[str, dict] = {}
    names = ("harmful_text", "harmful_image", "harmful_typo", "benign_image")
    subset = {k: conds[k] for k in names}
    base = ev.summary(ev.run_conditions(svlm, subset, max_new_tokens=12, progress=False))
    cmrm = ev.summary(
        ev.run_conditions(
            svlm,
            {k: v for k, v in subset.items() if k != "harmful_text"},
            config=steered,
            max_new_tokens=12,
            progress=False,
        )
    )
    print(
        f"refusal rates on {n} held-out prompts per condition (greedy, 12 tokens, keyword judge + fluency):"
    )
    print(f"  {'condition':<15} {'unsteered':>10} {'CMRM':>8}")
    for name in names:
        after = f"{cmrm[name]['rate']:.0%}" if name in cmrm else "(text: never steered)"
        print(f"  {name:<15} {base[name]['rate']:>10.0%} {after:>8}")
        rates[name] = {"unsteered": base[name], "cmrm": cmrm.get(name)}
    print(f"hooks left: {count_hooks(svlm.base_model)}; total {time.perf_counter() - started:.0f} s")
    return rates


def main() -> None:
    """Entry point of ``python -m cmrm_guard.organism.demo``."""
    torch.set_num_threads(2)
    run_organism_demo()


if __name__ == "__main__":
    main()
