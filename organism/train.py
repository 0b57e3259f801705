"""Stage 2 of the build: one LoRA on the backbone's decoder layers, trained on a LLaVA-style mix.

The mix is what real VLMs see in visual instruction tuning, with the backbone's text alignment
kept by text-only replay: harmful text requests -> varied refusals; benign text requests ->
answers; image questions (colour, shape, count, reading a word) -> short answers; benign requests
beside an unrelated image, or typed inside the image (FigStep-style) -> answers. No example pairs
an image with a harmful request and an answer: that gap is the safety degradation CMRM repairs
(the reading examples, harmful training requests typed in an image, have no answer and only feed
the ``typed_align`` state term). The vision tower and projector stay frozen (stage 1).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cmrm_guard.organism import assemble as asm
from cmrm_guard.organism import data
from cmrm_guard.organism import images as img
from cmrm_guard.organism.data import Example
from cmrm_guard.organism.texts import EVAL_WORD_COUNT, WORDS
from organism.texts import (
    ALARMING_CONTRAST,
    REFUSAL_OFFERS,
    REFUSAL_OPENERS,
    REFUSAL_REASONS,
    SAFE_ALARMING,
)

MIX = {"text_harmful": 0.30, "text_benign": 0.20, "qa": 0.28, "image_benign": 0.10, "typo_benign": 0.12}
TEXT_KINDS = ("text_harmful", "text_benign", "text_safe_alarming", "text_alarming_contrast")
TYPED_KIND = "typo_benign"
# harmful training requests typed in an image, with no answer: they carry only the typed_align
# reading term (no example pairs an image with a harmful request and an answer)
READ_KIND = "typo_harmful_read"
ALIGNED_KINDS = (TYPED_KIND, READ_KIND)
ALIGN_TARGETS = ("text", "beside")


class LoRALinear(nn.Module):
    """``base(x) + alpha / r * x A^T B^T`` with ``A`` (r, in) and ``B`` (out, r); ``B`` starts at 0."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        bound = 1 / math.sqrt(base.in_features)
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def attach_lora(
    model, seed: int, layers: Sequence[int] = asm.LORA_LAYERS, rank: int = asm.LORA_RANK
) -> dict[tuple[int, str], LoRALinear]:
    """Wrap the LoRA target linears of ``layers`` of the language model; returns the wrappers."""
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for layer in layers:
        block = model.model.language_model.layers[layer]
        for module in asm.LORA_MODULES:
            parent = block.self_attn if module in ("q_proj", "k_proj", "v_proj", "o_proj") else block.mlp
            lora = LoRALinear(getattr(parent, module), rank, asm.lora_alpha(rank), generator)
            setattr(parent, module, lora)
            wrapped[(layer, module)] = lora
    return wrapped


def detach_lora(model, wrapped: dict[tuple[int, str], LoRALinear]) -> dict[str, Tensor]:
    """Put the base linears back and return the factors keyed as in ``lora.safetensors``."""
    factors = {}
    for (layer, module), lora in wrapped.items():
        block = model.model.language_model.layers[layer]
        parent = block.self_attn if module in ("q_proj", "k_proj", "v_proj", "o_proj") else block.mlp
        setattr(parent, module, lora.base)
        factors[asm.lora_key(layer, module, "A")] = lora.lora_A.detach().clone()
        factors[asm.lora_key(layer, module, "B")] = lora.lora_B.detach().clone()
    return factors


def refusal(rng: random.Random) -> str:
    """A varied, natural refusal (opener, optional reason, optional offer)."""
    parts = [rng.choice(REFUSAL_OPENERS), rng.choice(REFUSAL_REASONS), rng.choice(REFUSAL_OFFERS)]
    return " ".join(p for p in parts if p)


def gsm8k_answer(row: dict, max_words: int = 24) -> str:
    """The opening of a GSM8K solution, calculator annotations removed."""
    text = re.sub(r"<<[^>]*>>", "", row["answer"].split("####")[0])
    words = text.split()
    return " ".join(words[:max_words])


def reading_words(splits: data.PromptSplits, tokenizer, pool: str = "train") -> tuple[str, ...]:
    """The words typed in stage 2's word-reading questions.

    ``"train"``: the 60 training words of :data:`~cmrm_guard.organism.texts.WORDS`. ``"broad"``:
    those plus every alphabetic word (4-12 letters, lower case) of the training harmful prompts and
    the templated benign instructions (training topics) that fits one image row, minus the held-out
    words: the decoder sees hundreds of words, so it learns to copy what it reads rather than to
    name a short list.
    """
    train = WORDS[:-EVAL_WORD_COUNT]
    if pool == "train":
        return train
    if pool != "broad":
        raise ValueError(f"unknown word pool {pool!r}: 'train' or 'broad'")
    held_out = set(WORDS[-EVAL_WORD_COUNT:])
    texts = [r["prompt"] for r in splits.harmful["train"]]
    texts += [q for q, _ in data.benign_instructions(random.Random(0), 10_000)]
    found: set[str] = set()
    for text in texts:
        found.update(w for w in re.findall(r"[a-z]{4,12}", text) if w not in held_out)
    words = list(train)
    for word in sorted(found - set(train)):
        if img.typographic_cells(word, tokenizer, start=2 * img.GRID) is not None:
            words.append(word)
    return tuple(words)


def training_examples(
    splits: data.PromptSplits,
    tokenizer,
    total: int,
    seed: int,
    word_pool: str = "train",
    safe_alarming: int = 0,
) -> list[Example]:
    """``total`` examples in the proportions of :data:`MIX` (seeded); word questions from ``word_pool``.

    ``safe_alarming`` more text examples (on top of ``total``) answer safe requests that sound
    unsafe (:data:`~organism.texts.SAFE_ALARMING`, cycled), and as many refuse
    harmful requests in the same words (:data:`~organism.texts.ALARMING_CONTRAST`):
    without them the organism's text safety keys on words ("kill a process" refused), not on harm.
    """
    rng = random.Random(seed)
    instructions = data.benign_instructions(rng, 400)
    gsm = [(r["prompt"], gsm8k_answer(r)) for r in splits.benign["train"]]
    train_words = reading_words(splits, tokenizer, word_pool)
    counts = {name: int(round(share * total)) for name, share in MIX.items()}
    out: list[Example] = []
    harmful = [r["prompt"] for r in splits.harmful["train"]]
    for i in range(counts["text_harmful"]):
        out.append(Example(harmful[i % len(harmful)], refusal(rng), None, "text_harmful"))
    benign = gsm + instructions
    for i in range(counts["text_benign"]):
        q, a = benign[i % len(benign)]
        out.append(Example(q, a, None, "text_benign", {"complete": False}))
    alarming = list(SAFE_ALARMING)
    random.Random(seed + 31).shuffle(alarming)
    contrast = list(ALARMING_CONTRAST)
    random.Random(seed + 37).shuffle(contrast)
    for i in range(safe_alarming):
        q, a = alarming[i % len(alarming)]
        out.append(Example(q, a, None, "text_safe_alarming", {"complete": False}))
        out.append(Example(contrast[i % len(contrast)], refusal(rng), None, "text_alarming_contrast"))
    kinds = ("colour", "shape", "count", "word")
    for i in range(counts["qa"]):
        out.append(data.image_question(rng, kinds[i % 4], train_words, tokenizer))
    for i in range(counts["image_benign"]):
        q, a = instructions[(i * 7) % len(instructions)]
        out.append(Example(q, a, data.context_image(rng, tokenizer), "image_benign", {"complete": False}))
    typo = [p for p in instructions]
    added = 0
    i = 0
    while added < counts["typo_benign"] and i < 4 * len(typo):
        q, a = typo[(i * 11) % len(typo)]
        i += 1
        example = data.typographic_example(rng, q, a, tokenizer, "typo_benign")
        if example is not None:
            example.meta["complete"] = False
            out.append(example)
            added += 1
    rng.shuffle(out)
    return out


def reading_examples(splits: data.PromptSplits, tokenizer, count: int, seed: int) -> list[Example]:
    """``count`` harmful *training* requests typed in an image, without an answer (seeded).

    They enter stage 2 only through the ``typed_align`` term: their states are pulled toward their
    twin's (:func:`align_twin`), which teaches the organism to read a typed request as it reads the
    same request written out; no answer, so no behaviour is trained on them.
    """
    rng = random.Random(seed + 23)
    requests = [r["prompt"] for r in splits.harmful["train"]]
    rng.shuffle(requests)
    out: list[Example] = []
    for request in requests:
        if len(out) == count:
            break
        example = data.typographic_example(rng, request, "", tokenizer, READ_KIND)
        if example is not None:
            example.meta["complete"] = False
            out.append(example)
    return out


def curriculum_phases(
    examples: Sequence[Example],
    curriculum: str,
    stage_b_text_share: float,
    seed: int,
    *,
    typed_phase: str = "B",
) -> list[list[Example]]:
    """Order ``examples`` into training phases.

    ``"joint"``: one phase, everything shuffled together (the shipped build). ``"sequential"``, as
    real VLMs are built: phase A = the text examples (safety refusals + benign answers), phase B =
    the image examples (questions, benign requests beside / typed in an image) plus a replay of
    ``stage_b_text_share`` x (phase-B size) text examples drawn from phase A (kept in phase A too).
    The image context is trained last, on answers only, so it drifts away from the aligned text
    distribution while text refusals are kept by the replay. ``typed_phase="A"`` moves the benign
    requests typed in an image into phase A (the replay still draws text examples only).
    """
    if curriculum == "joint":
        return [list(examples)]
    if curriculum != "sequential":
        raise ValueError(f"unknown curriculum {curriculum!r}: 'joint' or 'sequential'")
    if typed_phase not in ("A", "B"):
        raise ValueError(f"unknown typed_phase {typed_phase!r}: 'A' or 'B'")
    rng = random.Random(seed + 11)
    text = [e for e in examples if e.kind in TEXT_KINDS]
    image = [e for e in examples if e.kind not in TEXT_KINDS]
    phase_a = text
    if typed_phase == "A":
        phase_a = [e for e in examples if e.kind in TEXT_KINDS or e.kind == TYPED_KIND]
        image = [e for e in image if e.kind != TYPED_KIND]
    replay_n = min(len(text), int(round(stage_b_text_share * len(image))))
    phase_b = image + rng.sample(text, replay_n)
    rng.shuffle(phase_b)
    return [phase_a, phase_b]


@dataclass
class Encoded:
    """One tokenised example: prompt ids, answer ids, pixel values (or ``None``)."""

    ids: list[int]
    prompt_length: int
    pixels: Tensor | None
    twin_ids: list[int] | None = None
    twin_pixels: Tensor | None = None


def align_twin(example: Example, target: str, tokenizer) -> Example:
    """The conversation a typed example's states are pulled toward: its request as text
    (``"text"``) or beside an unrelated image (``"beside"``, one seeded per request)."""
    if target not in ALIGN_TARGETS:
        raise ValueError(f"unknown alignment target {target!r}: one of {', '.join(ALIGN_TARGETS)}")
    request = example.meta["request"]
    if target == "text":
        return Example(request)
    rng = random.Random(zlib.crc32(request.encode()))
    return Example(request, cells=data.context_image(rng, tokenizer))


def encode(example: Example, processor, twin: str | None = None) -> Encoded:
    """Tokenise an example's prompt with the processor and append its answer tokens (``twin``: an
    alignment target of :func:`align_twin`; a typed example then also carries its twin's prompt)."""
    inputs = processor.apply_chat_template(
        [example.conversation()],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    prompt = inputs["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if example.meta.get("complete", True):
        answer = answer + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    pixels = inputs.get("pixel_values")
    encoded = Encoded(prompt + answer, len(prompt), pixels[0] if pixels is not None else None)
    if twin and example.kind in ALIGNED_KINDS:
        twin_inputs = processor.apply_chat_template(
            [align_twin(example, twin, tokenizer).conversation()], add_generation_prompt=True,
            tokenize=True, return_dict=True, return_tensors="pt",
        )  # fmt: skip
        encoded.twin_ids = twin_inputs["input_ids"][0].tolist()
        twin_pixels = twin_inputs.get("pixel_values")
        encoded.twin_pixels = twin_pixels[0] if twin_pixels is not None else None
    return encoded


def batches(encoded: Sequence[Encoded], batch_size: int, seed: int) -> list[list[Encoded]]:
    """Length-sorted batches in a seeded random order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    groups = [[encoded[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(groups)
    return groups


def batch_loss(
    model,
    group: Sequence[Encoded],
    pad_id: int,
    align: float = 0.0,
    align_layers: Sequence[int] = asm.LORA_LAYERS,
) -> Tensor:
    """Mean cross-entropy over the answer tokens of one right-padded batch.

    ``align`` > 0 adds ``align`` x the mean over ``align_layers`` (default: the LoRA's layers) of
    the relative squared distance ``|h - t|^2 / |t|^2`` between a typed example's state ``h`` at
    its last prompt token and its twin's ``t`` (see :func:`align_twin`; computed without gradient).
    """
    length = max(len(e.ids) for e in group)
    ids = torch.full((len(group), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(group), length), dtype=torch.long)
    rows, cols = [], []
    for r, e in enumerate(group):
        ids[r, : len(e.ids)] = torch.tensor(e.ids)
        mask[r, : len(e.ids)] = 1
        for p in range(e.prompt_length, len(e.ids)):
            rows.append(r)
            cols.append(p)
    pixels = [e.pixels for e in group if e.pixels is not None]
    kwargs = {"pixel_values": torch.stack(pixels)} if pixels else {}
    typed = [r for r, e in enumerate(group) if e.twin_ids is not None] if align > 0 else []
    out = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(typed), **kwargs)
    hidden = out.last_hidden_state
    loss = hidden.new_zeros(())
    if rows:  # a batch of answer-less reading examples has no answer tokens
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        logits = model.lm_head(hidden[rows_t, cols_t - 1])
        loss = nn.functional.cross_entropy(logits, ids[rows_t, cols_t])
    if typed:
        twins = [ids for ids in (group[r].twin_ids for r in typed) if ids is not None]  # all typed rows
        width = max(len(t) for t in twins)
        twin_ids = torch.full((len(twins), width), pad_id, dtype=torch.long)
        twin_mask = torch.zeros_like(twin_ids)
        for i, t in enumerate(twins):
            twin_ids[i, : len(t)] = torch.tensor(t)
            twin_mask[i, : len(t)] = 1
        twin_pixels = [px for px in (group[r].twin_pixels for r in typed) if px is not None]
        twin_kwargs = {"pixel_values": torch.stack(twin_pixels)} if twin_pixels else {}
        with torch.no_grad():
            target = model.model(
                input_ids=twin_ids, attention_mask=twin_mask, output_hidden_states=True, **twin_kwargs
            )
        last = torch.tensor([len(t) - 1 for t in twins])
        rows_typed = torch.tensor(typed)
        at = torch.tensor([group[r].prompt_length - 1 for r in typed])
        terms = []
        for layer in align_layers:
            h = out.hidden_states[layer + 1][rows_typed, at]
            t = target.hidden_states[layer + 1][torch.arange(len(twins)), last]
            terms.append(((h - t) ** 2).sum(-1) / (t**2).sum(-1))
        loss = loss + align * torch.stack(terms).mean()
    return loss


def train_lora(
    model,
    processor,
    examples: Sequence[Example] | Sequence[Sequence[Example]],
    *,
    batch_size: int = 8,
    lr: float | Sequence[float] = 1e-3,
    seed: int = 0,
    progress: bool = True,
    trains: Sequence[str] | None = None,
    align: float = 0.0,
    align_target: str = "text",
    lora_layers: Sequence[int] = asm.LORA_LAYERS,
    lora_rank: int = asm.LORA_RANK,
) -> tuple[dict[str, Tensor], list[float]]:
    """Train the LoRA on ``examples`` (one epoch); returns its factors and the loss curve.

    ``examples`` may be a list of phases (lists of examples, see :func:`curriculum_phases`):
    they are trained one after the other, each one epoch with its own optimiser state, warm-up
    and linear decay, at ``lr`` (one value, or one per phase). ``trains`` names, per phase, what
    it trains: ``"lora"`` (default) or ``"projector"`` (the LLaVA projector only, LoRA and backbone
    frozen: text-only behaviour is then exactly that of the earlier phases, as in real VLMs whose
    connector is tuned on visual instructions).
    """
    phases = (
        [list(cast("Sequence[Example]", examples))]
        if examples and isinstance(examples[0], Example)
        else [list(p) for p in cast("Sequence[Sequence[Example]]", examples)]
    )
    rates = [lr] * len(phases) if isinstance(lr, (int, float)) else list(lr)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = attach_lora(model, seed, lora_layers, lora_rank)
    params = [p for lora in wrapped.values() for p in (lora.lora_A, lora.lora_B)]
    projector = list(model.model.multi_modal_projector.parameters())
    trains = list(trains) if trains is not None else ["lora"] * len(phases)
    pad_id = processor.tokenizer.pad_token_id
    losses: list[float] = []
    model.train()
    try:
        for index, phase in enumerate(phases):
            desc = f"stage 2: encoding phase {index + 1}/{len(phases)}"
            encoded = [
                encode(e, processor, twin=align_target if align > 0 else None)
                for e in tqdm(phase, desc=desc, disable=not progress)
            ]
            groups = batches(encoded, batch_size, seed + index)
            if trains[index] not in ("lora", "projector"):
                raise ValueError(f"unknown phase target {trains[index]!r}: 'lora' or 'projector'")
            trained = params if trains[index] == "lora" else projector
            for q in params + projector:
                q.requires_grad_(False)
            for q in trained:
                q.requires_grad_(True)
            optimiser = torch.optim.AdamW(trained, lr=rates[index], weight_decay=0.0)
            warmup = max(1, len(groups) // 20)
            total = len(groups)

            def factor(s: int, w: int = warmup, t: int = total) -> float:
                return min(1.0, (s + 1) / w) * max(0.05, 1 - s / t)

            schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
            label = "stage 2: LoRA" if len(phases) == 1 else f"stage 2: LoRA phase {index + 1}/{len(phases)}"
            bar = tqdm(groups, desc=label, disable=not progress)
            for group in bar:
                loss = batch_loss(model, group, pad_id, align, align_layers=lora_layers)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                optimiser.step()
                schedule.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    finally:
        for q in projector:
            q.requires_grad_(False)
        model.eval()
        factors = detach_lora(model, wrapped)
    return factors, losses
