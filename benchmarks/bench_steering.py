"""Steering overhead: dataset- and sample-level CMRM generate vs unsteered generate, one run.

Model: a LLaVA whose language decoder has SmolLM2-135M's shape (30 layers, hidden 576, 9 heads,
3 KV heads, vocab 49152), random weights (compute is what matters here), tiny CLIP tower. Prints
ratios measured in the same process on the same inputs, interleaved paired rounds with the order
rotated each round, plus per-call microbenchmarks (cost per layer call, set-up per call), which
resolve overheads far below this machine's 3-6% end-to-end noise.

Run: ``python benchmarks/bench_steering.py [--rounds 8] [--new-tokens 32]``
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import RESULTS, SMOLLM2_135M, bench_vlm, best_per_call, random_vectors, report, timed
from torch import nn

from cmrm_guard import SteeredVLM, SteeringConfig
from cmrm_guard.hooks import PromptPositions, steer
from cmrm_guard.testing import tiny_image

PROMPTS = [
    "Look at the picture carefully and tell me, step by step, what the person in it should do next.",
    "Describe every object you can see in this image, its colour and where it is placed.",
    "What is written in this image? Read it out and then explain what it asks for.",
    "Is there anything unusual in the picture? Answer in two short sentences please.",
]


class StandIn(nn.Module):
    """A decoder layer stand-in: returns its input, accepts a decoder layer's keyword arguments."""

    def forward(self, hidden: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return hidden


class FilledCache:
    """What layer 0's pre-hook reads from a KV cache: how many tokens it already holds."""

    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def micro(hidden: int, n_layers: int) -> dict[str, float]:
    """Microseconds our hook adds per layer call, and steer() set-up per call, on stand-in layers."""
    layers = nn.ModuleList([StandIn() for _ in range(n_layers)])
    shifts = {i: torch.randn(hidden) for i in range(n_layers)}
    prompt = PromptPositions.from_attention_mask(torch.ones(4, 45, dtype=torch.long))
    results: dict[str, float] = {}
    with torch.inference_mode():
        for name, shape, cached in (
            ("decode (4,1,H)", (4, 1, hidden), 45),
            ("prefill (4,45,H)", (4, 45, hidden), 0),
        ):
            x = torch.randn(*shape)
            bare = best_per_call(lambda x=x: layers[1](x))
            with steer(layers, shifts, prompt):
                layers[0](x, past_key_values=FilledCache(cached))  # sets this forward's positions
                hooked = best_per_call(lambda x=x: layers[1](x))
            results[f"hook cost per layer call, {name}, us"] = (hooked - bare) * 1e6

        def setup() -> None:
            with steer(layers, shifts, prompt):
                pass

        results[f"steer() enter+exit, {n_layers} layers, ms"] = best_per_call(setup, calls=200) * 1e3
    return results


def end_to_end(rounds: int, new_tokens: int, batch_sizes: tuple[int, ...]) -> dict[str, float]:
    model, processor = bench_vlm()
    svlm = SteeredVLM(model, processor, vectors=random_vectors())
    off = SteeringConfig(enabled=False)
    dataset = SteeringConfig(mode="dataset", alpha=1.0)
    sample = SteeringConfig(mode="sample", alpha=1.0)
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    out: dict[str, float] = {}
    for batch in batch_sizes:
        chats = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": tiny_image(i)},
                        {"type": "text", "text": PROMPTS[i % 4]},
                    ],
                }
            ]
            for i in range(batch)
        ]
        conditions = {
            "unsteered": lambda chats=chats: svlm.generate(chats, config=off, **gen),
            "dataset": lambda chats=chats: svlm.generate(chats, config=dataset, **gen),
            "sample": lambda chats=chats: svlm.generate(chats, config=sample, **gen),
            "twin prefill": lambda chats=chats: svlm.twin_differences(chats),
        }
        for fn in conditions.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in conditions}
        names = list(conditions)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                times[name].append(timed(conditions[name]))
        base = times["unsteered"]
        for name in ("dataset", "sample"):
            paired = [c / b for c, b in zip(times[name], base, strict=True)]
            out[f"B={batch} {name}/unsteered paired median"] = statistics.median(paired)
            out[f"B={batch} {name}/unsteered paired min"] = min(paired)
            out[f"B={batch} {name}/unsteered paired max"] = max(paired)
        share = statistics.median(t / b for t, b in zip(times["twin prefill"], base, strict=True))
        out[f"B={batch} sample-level goal (1 + twin prefill share)"] = 1 + share
        out[f"B={batch} unsteered median s"] = statistics.median(base)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--output", type=Path, default=RESULTS / "steering.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = micro(SMOLLM2_135M["hidden_size"], SMOLLM2_135M["num_hidden_layers"])
    results.update(end_to_end(args.rounds, args.new_tokens, tuple(args.batch_sizes)))
    report(results, args.output)


if __name__ == "__main__":
    main()
