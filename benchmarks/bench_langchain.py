"""LangChain overhead: ChatSteeredVLM.invoke / stream vs direct SteeredVLM.generate, one run.

Same model, same prompt (an image question), same number of new tokens (min = max, greedy), in the
same process, interleaved paired rounds with the order alternated. The LangChain side includes all
it does per call: message conversion, base64 image decoding, callbacks, tool-free parsing, metadata.
Model: a LLaVA whose language decoder has SmolLM2-135M's shape (random weights), as in
``bench_steering.py``. Goal: invoke / direct <= 1.05. The paired end-to-end ratio is noisy on shared CPUs, so the
LangChain layer's own per-call work is also timed alone (generation stubbed out) and turned into a ratio.

Run: ``python benchmarks/bench_langchain.py [--rounds 6] [--new-tokens 16]``
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
from pathlib import Path

import torch
from common import RESULTS, bench_vlm, random_vectors, report, timed
from langchain_core.messages import HumanMessage

from cmrm_guard import SteeredVLM
from cmrm_guard.langchain import ChatSteeredVLM
from cmrm_guard.testing import tiny_image

PROMPT = "Look at the picture carefully and tell me, step by step, what the person in it should do next."


def run(rounds: int, new_tokens: int) -> dict[str, float]:
    model, processor = bench_vlm()
    svlm = SteeredVLM(model, processor, vectors=random_vectors())
    fixed = {"min_new_tokens": new_tokens}
    llm = ChatSteeredVLM(steered=svlm, max_tokens=new_tokens, generation_kwargs=fixed)
    image = tiny_image(0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}
    ]
    message = HumanMessage(
        content=[{"type": "image", "base64": b64, "mime_type": "image/png"}, {"type": "text", "text": PROMPT}]
    )
    conditions = {
        "direct": lambda: svlm.generate([conversation], max_new_tokens=new_tokens, do_sample=False, **fixed),
        "invoke": lambda: llm.invoke([message]),
        "stream": lambda: [None for _ in llm.stream([message])],
    }
    direct_text = svlm.generate([conversation], max_new_tokens=new_tokens, do_sample=False, **fixed).texts[0]
    assert llm.invoke([message]).content == direct_text  # same work, same answer
    for fn in conditions.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in conditions}
    names = list(conditions)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(conditions[name]))
    out: dict[str, float] = {}
    for name in ("invoke", "stream"):
        paired = [t / d for t, d in zip(times[name], times["direct"], strict=True)]
        out[f"langchain {name}/direct paired median"] = statistics.median(paired)
        out[f"langchain {name}/direct paired min"] = min(paired)
        out[f"langchain {name}/direct paired max"] = max(paired)
    out["direct median s"] = statistics.median(times["direct"])
    out["invoke median s"] = statistics.median(times["invoke"])
    out["invoke - direct median, ms"] = (
        statistics.median(times["invoke"]) - statistics.median(times["direct"])
    ) * 1e3
    # LangChain's own per-call work, without the (noisy) generation: the same invoke on a wrapper of
    # the same model whose generate() returns the output computed above at once (best of 7 x 50)
    ready = svlm.generate([conversation], max_new_tokens=new_tokens, do_sample=False, **fixed)
    stub = SteeredVLM(model, processor, vectors=svlm.vectors)
    stub.generate = lambda *args, **kwargs: ready  # type: ignore[method-assign]
    stub_llm = ChatSteeredVLM(steered=stub, max_tokens=new_tokens)
    best = min(timed(lambda: [stub_llm.invoke([message]) for _ in range(50)]) / 50 for _ in range(7))
    out["langchain per-call work (no generation), ms"] = best * 1e3
    out["invoke/direct from per-call work"] = 1 + best / statistics.median(times["direct"])
    out["new tokens"] = new_tokens
    out["rounds"] = rounds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS / "langchain.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = run(args.rounds, args.new_tokens)
    report(results, args.output)


if __name__ == "__main__":
    main()
