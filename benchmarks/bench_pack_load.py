"""Pack load + attach time for a 32-layer x 4096 pack (LLaMA-7B's decoder shape). Goal: < 50 ms.

Model: a real ``LlavaForConditionalGeneration`` whose text config declares 32 decoder layers of
hidden size 4096, as LLaVA-1.5-7B's does, so the adapter finds and checks a real 32-layer stack
and ``VectorPack.validate_for`` compares against real config values. Attention and MLP are made
thin (1 head of width 8, intermediate size 8): attaching a pack never touches those weights (it
reads the config, the layer list and the pack files), and the thin model builds in about a second
instead of needing ~26 GB. Everything timed is the library's real code path:

- ``load``: ``VectorPack.from_pretrained(folder)`` (read 512 KiB of safetensors, sha256, checks);
- ``attach``: ``svlm.attach(pack)`` (validation against the model);
- ``load + attach``: ``svlm.attach(folder)``, the headline figure;
- ``construct``: ``SteeredVLM(model, processor, vectors=folder)`` (adapter, layer discovery too).

The folder is read from the page cache after the first round (as in any repeated attach).

Run: ``python benchmarks/bench_pack_load.py [--repeats 30]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, report

from cmrm_guard import SteeredVLM, VectorPack
from cmrm_guard.testing import build_tiny_vlm
from cmrm_guard.vectors.pack import PackMeta

LAYERS, HIDDEN = 32, 4096
THIN_7B_SHAPE = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "intermediate_size": 8,
}
GOAL_MS = 50.0


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run(repeats: int) -> dict[str, float]:
    model, processor = build_tiny_vlm("llava", text_overrides=THIN_7B_SHAPE)
    generator = torch.Generator().manual_seed(0)
    shifts = {i: torch.randn(HIDDEN, generator=generator) for i in range(LAYERS)}
    meta = PackMeta(
        base_model="thin-llava-7b-shape",
        model_type="llava",
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        layer_indices=list(range(LAYERS)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = VectorPack(shifts, meta).save_pretrained(Path(tmp) / "pack")
        svlm = SteeredVLM(model, processor)
        assert svlm.num_layers == LAYERS and svlm.hidden_size == HIDDEN
        pack = VectorPack.from_pretrained(folder)  # warm-up: page cache, imports
        svlm.attach(folder)
        times: dict[str, list[float]] = {"load": [], "attach": [], "load + attach": [], "construct": []}
        for _ in range(repeats):
            times["load"].append(_ms(lambda: VectorPack.from_pretrained(folder)))
            times["attach"].append(_ms(lambda: svlm.attach(pack)))
            times["load + attach"].append(_ms(lambda: svlm.attach(folder)))
            times["construct"].append(_ms(lambda: SteeredVLM(model, processor, vectors=folder)))
        size_mb = (folder / "shifts.safetensors").stat().st_size / 2**20
    out = {f"{name} ms (median)": statistics.median(values) for name, values in times.items()}
    out["load + attach ms (max)"] = max(times["load + attach"])
    out["load + attach / goal"] = out["load + attach ms (median)"] / GOAL_MS
    out["goal load + attach ms"] = GOAL_MS
    out["pack layers"] = LAYERS
    out["pack hidden"] = HIDDEN
    out["shifts.safetensors MiB"] = size_mb
    out["repeats"] = repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS / "pack_load.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = run(args.repeats)
    report(results, args.output, precision=3)


if __name__ == "__main__":
    main()
