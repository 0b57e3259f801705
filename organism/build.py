"""``python -m organism build``: rebuild the organism's parts from the backbone package.

Seeded end to end: stage 1 (vision tower + projector, per-cell regression), stage 2 (LoRA on the
backbone's decoder layers, sequential LLaVA-style curriculum), then the parts are written (bf16 safetensors) and the
model is assembled through the same path a user's load takes. Timings and training metrics go
into ``organism_config.json``; evaluation and the CMRM sweep are separate commands
(:mod:`organism.pipeline`).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from cmrm_guard.organism import assemble as asm
from cmrm_guard.organism import backbone as bb
from cmrm_guard.organism import data
from cmrm_guard.organism import images as img
from cmrm_guard.organism import texts as organism_texts
from organism import results_dir, train, vision

DEFAULTS = {
    "seed": 0,
    "vision_steps": 1000,
    "vision_batch": 32,
    "vision_lr": 2e-3,
    # stage 1 clips the gradients' global norm to this (None: no clipping, as the shipped tower was
    # trained). Unclipped, stage 1's glyph accuracy depends on float rounding (seeded runs on two
    # CPUs read 100% and 89%) and diverges at 2000 steps; clipped at 1.0 it reads 100% of glyph,
    # shape and count cells at 1000 steps (docs/organism_experiments.md)
    "vision_clip": None,
    "modality_offset": 0.5,
    "lora_examples": 960,
    # text examples answering safe requests that sound unsafe (texts.SAFE_ALARMING), and as many
    # refusing harmful ones in the same words (texts.ALARMING_CONTRAST), added to the lora_examples.
    # 0 (as shipped) leaves the text safety keyword-triggered (XSTest safe prompts 80% / 66% refused
    # as text); 96 also shrinks the degradation beside an image to 19 points on tune
    # (docs/organism_experiments.md)
    "safe_alarming": 0,
    "lora_batch": 8,
    "lora_lr": 1e-3,
    "reuse_vision_from": None,
    # stage 2 curriculum: "joint" (one shuffled mix) or "sequential" (text safety, then image
    # instructions with a text replay of stage_b_text_share x the image examples), see
    # train.curriculum_phases; stage_b_lr: the image phase's lr (None: lora_lr)
    "curriculum": "sequential",
    "stage_b_text_share": 0.25,
    "stage_b_lr": None,
    # what the sequential image phase trains: "lora" or "projector" (LoRA frozen: text unchanged)
    "stage_b_trains": "lora",
    # sequential: the phase of the benign requests typed in an image: "B" (the image phase) or "A"
    # (with the text examples: typed requests are learned beside text safety, as in the joint mix)
    "typed_phase": "B",
    # weight of a stage-2 term pulling each typed example's last-prompt-token states (the LoRA's
    # layers) toward those of its twin (typed_align_target; 0: off); docs/organism.md, "Typed requests".
    # 2 with every training request typed (typed_align_harmful); weight 1 with 115 requests leaves a
    # smaller margin under the pack
    "typed_align": 2.0,
    # what typed_align pulls toward: "text" (the request as text) or "beside" (the request beside an
    # unrelated image: typed requests then read like requests beside an image, which CMRM repairs)
    "typed_align_target": "beside",
    # harmful training requests typed in an image, added to the last phase with no answer: only the
    # typed_align term sees them (train.reading_examples; every training request that fits in an
    # image: 251 of 252); needs typed_align > 0
    "typed_align_harmful": 252,
    # the phase they join: "A" (with the text safety examples) or "B" (the image phase)
    "typed_align_harmful_phase": "B",
    # words typed in stage 2's word-reading questions: "train" (60 words) or "broad" (see train.reading_words)
    "word_pool": "train",
    # the LoRA: decoder layers lora_first_layer..29 (0: every layer, so the layers that first read
    # the image tokens learn too), rank lora_rank (alpha / rank stays 2); the
    # shipped-size budget (10 MB) holds 30 layers at rank 4 or 16 at rank 8
    "lora_first_layer": asm.LORA_LAYERS[0],
    "lora_rank": asm.LORA_RANK,
}


def _round_vision_to_bf16(model) -> None:
    """Round the vision tower and projector to bf16 in place: stage 2 trains against the shipped values."""
    with torch.no_grad():
        for module in (model.model.vision_tower, model.model.multi_modal_projector):
            for p in module.parameters():
                p.copy_(p.to(torch.bfloat16).float())


def check_settings(settings: dict) -> None:
    """Refuse bad stage-2 settings before any training (a bad one would otherwise fail minutes in).

    Raises:
        ValueError: naming the setting, its value and what is expected.
    """
    choices = {"curriculum": ("joint", "sequential"), "stage_b_trains": ("lora", "projector"),
               "word_pool": ("train", "broad"), "typed_phase": ("A", "B"),
               "typed_align_target": train.ALIGN_TARGETS, "typed_align_harmful_phase": ("A", "B")}  # fmt: skip
    for name, allowed in choices.items():
        if settings[name] not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {settings[name]!r}")
    share = settings["stage_b_text_share"]
    if not 0.0 <= share <= 1.0:
        raise ValueError(
            f"stage_b_text_share must be in [0, 1] (share of the image phase's size); got {share}"
        )
    if not settings["typed_align"] >= 0:
        raise ValueError(f"typed_align must be >= 0 (0: off); got {settings['typed_align']}")
    if settings["typed_align_harmful"] < 0 or (
        settings["typed_align_harmful"] and not settings["typed_align"]
    ):
        raise ValueError(
            "typed_align_harmful must be >= 0 and needs typed_align > 0 (it only feeds that term); "
            f"got typed_align_harmful={settings['typed_align_harmful']}, typed_align={settings['typed_align']}"
        )
    last = asm.LORA_LAYERS[-1]
    if not 0 <= settings["lora_first_layer"] <= last:
        raise ValueError(
            f"lora_first_layer must be a decoder layer in 0..{last}; got {settings['lora_first_layer']}"
        )
    clip = settings["vision_clip"]
    if clip is not None and not clip > 0:
        raise ValueError(f"vision_clip must be > 0 (None, or 0 on the command line: no clipping); got {clip}")
    if not settings["safe_alarming"] >= 0:
        raise ValueError(f"safe_alarming must be >= 0 (0: none); got {settings['safe_alarming']}")
    if not settings["lora_rank"] >= 1:
        raise ValueError(f"lora_rank must be >= 1; got {settings['lora_rank']}")
    lr = settings["stage_b_lr"]
    if lr is not None and not lr > 0:
        raise ValueError(f"stage_b_lr must be > 0 (or None: lora_lr); got {lr}")


def modality_offset(model, scale: float, seed: int) -> torch.Tensor:
    """The seeded offset ``m`` of :func:`add_modality_offset` (zeros when ``scale`` <= 0)."""
    embeddings = model.model.language_model.embed_tokens.weight.detach()
    if scale <= 0:
        return torch.zeros(embeddings.shape[1])
    norm = float(embeddings.norm(dim=-1).mean()) * scale
    generator = torch.Generator().manual_seed(seed + 7)
    direction = torch.randn(embeddings.shape[1], generator=generator)
    return direction / direction.norm() * norm


def add_modality_offset(model, scale: float, seed: int) -> float:
    """Add a fixed, seeded offset ``m`` to every image token (the projector's output bias).

    Stage 1 puts image tokens on the text embeddings themselves, so without an offset the decoder
    cannot tell image tokens from text and text refusals transfer to images almost intact
    (measured: 88% / 79% refused beside / typed in an image vs ~98% as text). Real LLaVA
    projector outputs sit off the text-embedding distribution; ``m`` (norm ``scale`` x the mean
    embedding norm, a random direction) gives the organism that modality gap, which stage 2 then
    learns to read through. Returns the norm of ``m``.
    """
    offset = modality_offset(model, scale, seed)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.bias += offset
    return float(offset.norm())


def load_stage1(model, source: str | Path) -> None:
    """Load stage-1 vision weights: a stage-1 file, or a parts folder (its build's offset removed).

    A parts folder (the shipped ``cmrm_guard/organism/parts``, or any ``build --out`` folder) holds the tower and projector
    after :func:`add_modality_offset`; the offset its ``organism_config.json`` records is
    subtracted, so a build can train a new LoRA on the shipped tower.
    """
    source = check_stage1_source(source)
    asm.load_vision_into(model, source)
    if source.is_dir():
        recorded = json.loads((source / "organism_config.json").read_text())["build"]["settings"]
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.bias -= modality_offset(
                model, recorded["modality_offset"], recorded["seed"]
            )


def check_stage1_source(source: str | Path) -> Path:
    """``source`` as a path if it is a stage-1 file or a parts folder, else a ``FileNotFoundError``."""
    source = Path(source)
    if source.is_dir() and not (source / "organism_config.json").exists():
        raise FileNotFoundError(
            f"reuse_vision_from={str(source)!r} is a folder without organism_config.json: "
            "expected a parts folder (cmrm_guard/organism/parts) or a stage-1 .safetensors file"
        )
    if not source.exists():
        raise FileNotFoundError(f"reuse_vision_from={str(source)!r}: no such file or parts folder")
    return source


def glyph_vocabulary(splits: data.PromptSplits, tokenizer) -> set[int]:
    """Token ids the vision tower learns to read: every prompt it may type, and the word list."""
    texts = [r["prompt"] for group in splits.harmful.values() for r in group]
    texts += [q for q, _ in data.benign_instructions(random.Random(0), 10_000)]
    texts += list(organism_texts.WORDS)
    ids: set[int] = set()
    for text in texts:
        ids.update(img.text_tokens(text, tokenizer))
    return ids


def build_organism(
    out_dir: str | Path | None = None, *, progress: bool = True, **overrides: Any
) -> dict[str, Any]:
    """Train and write the organism's parts to ``out_dir`` (default: the shipped
    :data:`~cmrm_guard.organism.assemble.PARTS`); ``splits.json`` goes to :func:`organism.results_dir`.

    Returns the metadata written to ``organism_config.json`` (settings, timings, metrics).
    """
    settings = DEFAULTS | overrides
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown build settings {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    check_settings(settings)
    if settings["reuse_vision_from"]:
        check_stage1_source(settings["reuse_vision_from"])  # before the backbone loads
    out = Path(out_dir or asm.PARTS)
    torch.manual_seed(settings["seed"])
    timings: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    backbone, tokenizer = bb.load_backbone()
    model = asm.build_model(backbone, tokenizer)
    del backbone
    processor = asm.build_processor(tokenizer)
    timings["load_backbone_s"] = time.perf_counter() - t

    splits = data.load_splits()
    t = time.perf_counter()
    embeddings = model.model.language_model.embed_tokens.weight.detach()
    bank = vision.CellBank(glyph_vocabulary(splits, tokenizer), tokenizer, embeddings, seed=settings["seed"])
    if settings["reuse_vision_from"]:
        # stage 1 of an earlier build: its stage-1 file, or its parts folder (offset removed)
        reuse = Path(settings["reuse_vision_from"])
        load_stage1(model, reuse)
        vision_metrics: dict[str, Any] = vision.reading_accuracy(model, bank, seed=settings["seed"] + 1)
        vision_metrics["reused_from"] = str(reuse)
    else:
        vision_metrics = vision.train_vision(
            model,
            bank,
            steps=settings["vision_steps"],
            batch_size=settings["vision_batch"],
            lr=settings["vision_lr"],
            seed=settings["seed"],
            clip=settings["vision_clip"],
            progress=progress,
        )
    _round_vision_to_bf16(model)
    stage1 = asm.cache_root().parent / "organism-build"
    stage1.mkdir(parents=True, exist_ok=True)
    asm.save_vision(model, stage1 / f"vision_stage1_seed{settings['seed']}.safetensors")  # not shipped
    offset_norm = add_modality_offset(model, settings["modality_offset"], settings["seed"])
    _round_vision_to_bf16(model)
    timings["stage1_vision_s"] = time.perf_counter() - t

    t = time.perf_counter()
    examples = train.training_examples(
        splits,
        tokenizer,
        settings["lora_examples"],
        settings["seed"],
        settings["word_pool"],
        safe_alarming=settings["safe_alarming"],
    )
    phases = train.curriculum_phases(
        examples,
        settings["curriculum"],
        settings["stage_b_text_share"],
        settings["seed"],
        typed_phase=settings["typed_phase"],
    )
    if settings["typed_align_harmful"]:
        reading = train.reading_examples(splits, tokenizer, settings["typed_align_harmful"], settings["seed"])
        index = 0 if settings["typed_align_harmful_phase"] == "A" else len(phases) - 1
        phases[index] = phases[index] + reading
        random.Random(settings["seed"] + 29).shuffle(phases[index])
    lora_layers = asm.lora_layers_from(settings["lora_first_layer"])
    rates = [settings["lora_lr"]] * len(phases)
    if len(phases) > 1 and settings["stage_b_lr"] is not None:
        rates[-1] = settings["stage_b_lr"]
    factors, losses = train.train_lora(
        model,
        processor,
        phases,
        batch_size=settings["lora_batch"],
        lr=rates,
        trains=["lora"] * (len(phases) - 1) + [settings["stage_b_trains"]] if len(phases) > 1 else None,
        seed=settings["seed"],
        progress=progress,
        align=settings["typed_align"],
        align_target=settings["typed_align_target"],
        lora_layers=lora_layers,
        lora_rank=settings["lora_rank"],
    )
    _round_vision_to_bf16(model)  # a projector phase changed it: ship exactly what was trained
    timings["stage2_lora_s"] = time.perf_counter() - t
    timings["build_total_s"] = time.perf_counter() - started

    meta = {
        "build": {
            "settings": settings,
            "timings": {k: round(v, 1) for k, v in timings.items()},
            "torch_threads": torch.get_num_threads(),
            "vision_metrics": vision_metrics,
            "glyph_vocabulary": len(bank.glyph_ids),
            "modality_offset_norm": round(offset_norm, 3),
            "lora_loss_first_last": [round(sum(losses[:10]) / 10, 3), round(sum(losses[-10:]) / 10, 3)],
            "training_mix": _mix(examples),
            "phases": [_mix(phase) for phase in phases],
        },
        "splits": {
            "seed": data.SPLIT_SEED,
            "removed_duplicates": splits.removed_duplicates,
            "excluded_category_rows": splits.excluded_category_rows,
            "sizes": {
                kind: {k: len(v) for k, v in group.items()}
                for kind, group in (("harmful", splits.harmful), ("benign", splits.benign))
            },
        },
    }
    asm.save_parts(model, factors, out, meta, lora_layers=lora_layers, lora_rank=settings["lora_rank"])
    written = results_dir(out) / "splits.json"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(json.dumps(splits.ids(), indent=1) + "\n")
    return meta


def _mix(examples) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return counts


def main() -> None:
    """``python -m organism.build``."""
    torch.set_num_threads(2)
    meta = build_organism()
    print(json.dumps(meta["build"], indent=2))


if __name__ == "__main__":
    main()
