"""Calibration cost: peak memory vs ``output_hidden_states=True``, and batched vs one-by-one throughput.

Model: a LLaVA whose decoder has SmolLM2-135M's shape (random weights; see bench_steering.py).

- Memory: each measurement runs in a fresh subprocess; the figure is the growth of the process's
  peak RSS during the calibration pass over the RSS after loading the model. ``calibrate`` keeps
  only the last prompt token per layer (and asks for one position of logits); the baseline is what
  a straightforward implementation does: ``model(**inputs, output_hidden_states=True)`` and then
  ``hidden_states[l][:, -1]``. Prompts of ~1k tokens.
- Throughput: samples per second of ``calibrate`` at ``batch_size=8`` vs ``batch_size=1`` on the
  same prompts (12-24 words), same process, rounds interleaved, at two prompt shapes: LLaVA-1.5's
  576 image tokens per image (image tokens are most of a real VLM prompt) and 16 image tokens (a
  tiny image, the organism's scale: text tokens dominate). Batching gains where the corrupted twins
  of a batch share their prefix (template + the blank image), run once per batch
  (``cmrm_guard/shared_prefix.py``); the decoder's matrix products themselves are compute-bound on
  2 cores and gain little from larger batches.

Run: ``python benchmarks/bench_calibration.py``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import LLAVA_1_5_GEOMETRY, RESULTS, bench_vlm, report

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "birds",
    "sing",
    "in",
    "the",
    "tall",
    "green",
    "tree",
]


def _svlm(image_geometry: tuple[int, int] | None = None):
    from cmrm_guard import SteeredVLM

    model, processor = bench_vlm(image_geometry=image_geometry)
    return SteeredVLM(model, processor)


def _words(count: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i) % len(WORDS)] for i in range(count))


def _long_prompt(tokens: int, seed: int, tokenizer) -> str:
    """Text of about ``tokens`` tokens for ``tokenizer`` (the longest word prefix not over it)."""
    low, high = 1, tokens
    while low < high:
        mid = (low + high + 1) // 2
        if len(tokenizer(_words(mid, seed), add_special_tokens=False)["input_ids"]) <= tokens:
            low = mid
        else:
            high = mid - 1
    return _words(low, seed)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(method: str, tokens: int, samples: int) -> None:
    """Runs in a subprocess: prints the peak-RSS growth (MB) of one calibration pass."""
    from cmrm_guard import calibrate
    from cmrm_guard.testing import tiny_image

    torch.set_num_threads(2)
    svlm = _svlm()
    chats = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": tiny_image(i)},
                    {"type": "text", "text": _long_prompt(tokens, i, svlm.processor.tokenizer)},
                ],
            }
        ]
        for i in range(samples)
    ]
    prompt_tokens = int(svlm.encode(chats[:1])["input_ids"].shape[1])
    before = _peak_rss_mb()
    with torch.inference_mode():
        if method == "calibrate":
            calibrate(svlm, chats, batch_size=samples, progress=False)
        else:  # the straightforward way: every position of every layer, full logits
            text = [svlm.adapter.text_only_twin(c) for c in chats]
            corrupt = [svlm.adapter.corrupted_twin(c, svlm.processor, "blank") for c in chats]
            inputs = svlm.encode(text + corrupt)
            states = svlm.model(**inputs, output_hidden_states=True).hidden_states
            _ = [h[:samples, -1] - h[samples:, -1] for h in states[1:]]
    print(json.dumps({"growth_mb": _peak_rss_mb() - before, "prompt_tokens": prompt_tokens}))


def measure_memory(tokens: int, samples: int) -> dict[str, float]:
    results = {}
    for method in ("calibrate", "output_hidden_states"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                method,
                "--tokens",
                str(tokens),
                "--samples",
                str(samples),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    calib, naive = results["calibrate"], results["output_hidden_states"]
    return {
        "prompt tokens": calib["prompt_tokens"],
        "calibrate peak RSS growth, MB": calib["growth_mb"],
        "output_hidden_states peak RSS growth, MB": naive["growth_mb"],
        "memory ratio calibrate / output_hidden_states": calib["growth_mb"] / naive["growth_mb"],
    }


def measure_throughput(samples: int, rounds: int, image_geometry, label: str) -> dict[str, float]:
    from cmrm_guard import calibrate

    svlm = _svlm(image_geometry)
    prompts = [{"prompt": _words(12 + (i % 5) * 3, i)} for i in range(samples)]
    calibrate(svlm, prompts[:2], batch_size=2, progress=False)  # warm-up
    times: dict[int, list[float]] = {1: [], 8: []}
    for r in range(rounds):
        for batch in (1, 8) if r % 2 == 0 else (8, 1):
            start = time.perf_counter()
            calibrate(svlm, prompts, batch_size=batch, progress=False)
            times[batch].append(time.perf_counter() - start)
    one, eight = statistics.median(times[1]), statistics.median(times[8])
    ratios = sorted(a / b for a, b in zip(times[1], times[8], strict=True))
    return {
        f"{label}: one-by-one samples/s": samples / one,
        f"{label}: batch_size=8 samples/s": samples / eight,
        f"{label}: throughput ratio batched / one-by-one": one / eight,
        f"{label}: ratio, lowest round": ratios[0],
        f"{label}: ratio, highest round": ratios[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", choices=["calibrate", "output_hidden_states"])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--throughput-samples", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "calibration.json")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.tokens, args.samples)
        return
    torch.set_num_threads(2)
    results = measure_memory(args.tokens, args.samples)
    results.update(
        measure_throughput(args.throughput_samples, args.rounds, LLAVA_1_5_GEOMETRY, "576 image tokens")
    )
    results.update(measure_throughput(args.throughput_samples, args.rounds, None, "16 image tokens"))
    report(results, args.output, precision=3)


if __name__ == "__main__":
    main()
