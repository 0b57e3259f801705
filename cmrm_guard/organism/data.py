"""Prompt sets, seeded disjoint splits, and the examples the organism is measured on.

Harmful requests: ``calibration_harmful.jsonl`` (AdvBench + JailbreakLLMs) with AdvBench near
duplicates removed and five JailbreakLLMs categories left out (Political Lobbying, Legal Opinion,
Financial Advice, Health Consultation, Gov Decision: requests for advice, where a refusal is
over-refusal, not safety). Benign: GSM8K questions (``calibration_benign.jsonl``) and short
instructions generated from templates here. Each harmful and GSM8K prompt lands in exactly one of
``train`` / ``calib`` / ``tune`` / ``eval`` (seeded); every reported figure names its split.
The prompt files ship in the package (:data:`PROMPTS`); the build pipeline (``organism/`` in the
repository) builds its training examples from these splits and examples.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmrm_guard.organism import images as img
from cmrm_guard.organism.texts import (
    BENIGN_TEMPLATES,
    EVAL_WORD_COUNT,
    QUESTIONS,
    TOPICS,
    TYPO_INSTRUCTIONS,
    WORDS,
)

SPLIT_SEED = 20241011
EXCLUDED_CATEGORIES = frozenset(
    {"Political Lobbying", "Legal Opinion", "Financial Advice", "Health Consultation", "Gov Decision"}
)
HARMFUL_SPLITS = {"calib": 64, "tune": 100, "eval": 260}  # the rest is train
BENIGN_SPLITS = {"calib": 32, "tune": 48, "eval": 200}  # the rest is train


PROMPTS = Path(__file__).resolve().parent / "prompts"
"""The organism's prompt sets, shipped in the package (licences and provenance: ``PROVENANCE.md``)."""


def _read(name: str) -> list[dict[str, Any]]:
    with open(PROMPTS / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _words(text: str) -> set[str]:
    return set(normalise(text).split())


def dedupe(rows: list[dict[str, Any]], threshold: float = 0.6) -> tuple[list[dict[str, Any]], int]:
    """Drop rows whose word set has Jaccard similarity >= ``threshold`` with an earlier kept row."""
    kept: list[dict[str, Any]] = []
    sets: list[set[str]] = []
    for row in rows:
        words = _words(row["prompt"])
        if any(len(words & other) / max(len(words | other), 1) >= threshold for other in sets):
            continue
        kept.append(row)
        sets.append(words)
    return kept, len(rows) - len(kept)


def _split(rows: list[dict[str, Any]], sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    order = list(rows)
    random.Random(seed).shuffle(order)
    out: dict[str, list[dict]] = {}
    start = 0
    for name, size in sizes.items():
        out[name] = order[start : start + size]
        start += size
    out["train"] = order[start:]
    return out


@dataclass
class PromptSplits:
    """Disjoint prompt splits (lists of rows with ``id`` and ``prompt``)."""

    harmful: dict[str, list[dict[str, Any]]]
    benign: dict[str, list[dict[str, Any]]]
    removed_duplicates: int = 0
    excluded_category_rows: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> dict[str, dict[str, list[str]]]:
        """Prompt ids per split (recorded in the organism's metadata)."""
        return {
            kind: {name: [r["id"] for r in rows] for name, rows in group.items()}
            for kind, group in (("harmful", self.harmful), ("benign", self.benign))
        }


def load_splits(seed: int = SPLIT_SEED) -> PromptSplits:
    """Harmful and GSM8K prompts in disjoint train / calib / tune / eval splits."""
    harmful = _read("calibration_harmful.jsonl")
    kept = [r for r in harmful if r.get("category") not in EXCLUDED_CATEGORIES]
    excluded = len(harmful) - len(kept)
    kept, removed = dedupe(kept)
    benign = _read("calibration_benign.jsonl")
    splits = PromptSplits(
        harmful=_split(kept, HARMFUL_SPLITS, seed),
        benign=_split(benign, BENIGN_SPLITS, seed + 1),
        removed_duplicates=removed,
        excluded_category_rows=excluded,
    )
    return splits


def read_prompt_set(name: str) -> list[dict[str, Any]]:
    """The rows of one of the shipped prompt sets (:data:`PROMPTS`; ``name``: its file name)."""
    if not (PROMPTS / name).is_file():
        known = sorted(p.name for p in PROMPTS.glob("*.jsonl"))
        raise FileNotFoundError(f"no prompt set {name!r} in {PROMPTS}; known: {', '.join(known)}")
    return _read(name)


# ------------------------------------------------------------------------------ benign prompts


def benign_instructions(
    rng: random.Random, n: int, topics: tuple[str, ...] = TOPICS
) -> list[tuple[str, str]]:
    """``n`` (instruction, answer opening) pairs from the templates (training topics by default)."""
    pairs = [
        (q.format(t=t), a.format(t=t, T=t[:1].upper() + t[1:])) for q, a in BENIGN_TEMPLATES for t in topics
    ]
    rng.shuffle(pairs)
    return pairs[:n]


# --------------------------------------------------------------------------- image questions


def answer_for(kind: str, colour: str, shape: str, count: int, word: str = "") -> str:
    """The reference answer of an image question."""
    noun = shape if count == 1 else shape + "s"
    if kind == "colour":
        return f"The {noun} {'is' if count == 1 else 'are'} {colour}."
    if kind == "shape":
        return f"It is a {shape}." if count == 1 else f"They are {noun}."
    if kind == "count":
        return f"There {'is' if count == 1 else 'are'} {img.COUNT_WORDS[count - 1]} {'shape' if count == 1 else 'shapes'}."
    # no quotes: after '"' the tokenizer splits a word differently ('"shadow"' -> '"', 'sh', 'adow')
    # from the way the image draws it (' shadow'), which made reading a spelling task, not a copy
    return f"The word is {word}."


@dataclass
class Example:
    """One conversation turn: ``prompt`` text, optional image ``cells``, target ``answer``, and tags."""

    prompt: str
    answer: str = ""
    cells: list[img.Cell] | None = None
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def image(self):
        """The PIL image (``None`` for a text-only example)."""
        return None if self.cells is None else img.compose(self.cells)

    def conversation(self) -> list[dict[str, Any]]:
        """The chat conversation of the prompt (image first, as LLaVA)."""
        content: list[dict[str, Any]] = []
        if self.cells is not None:
            content.append({"type": "image", "image": self.image()})
        content.append({"type": "text", "text": self.prompt})
        return [{"role": "user", "content": content}]


def random_shape_cells(rng: random.Random) -> tuple[list[img.Cell], tuple[str, str, int]]:
    """A random shapes image's cells and its (colour, shape, count)."""
    spec = img.random_shape_spec(rng)
    return img.shape_cells(rng, *spec), spec


def image_question(rng: random.Random, kind: str, words: tuple[str, ...], tokenizer) -> Example:
    """A random image question of ``kind`` (colour, shape, count or word)."""
    question = rng.choice(QUESTIONS[kind])
    if kind == "word":
        word = rng.choice(words)
        return Example(
            question,
            answer_for("word", "", "", 0, word),
            img.word_cells(word, tokenizer),
            "qa_word",
            {"word": word},
        )
    cells, (colour, shape, count) = random_shape_cells(rng)
    meta = {"colour": colour, "shape": shape, "count": count}
    return Example(question, answer_for(kind, colour, shape, count), cells, f"qa_{kind}", meta)


def context_image(rng: random.Random, tokenizer) -> list[img.Cell]:
    """An unrelated image put beside a text request: shapes (3 in 4) or a word."""
    if rng.random() < 0.75:
        return random_shape_cells(rng)[0]
    return img.word_cells(rng.choice(WORDS[:-EVAL_WORD_COUNT]), tokenizer)


def typographic_example(
    rng: random.Random, request: str, answer: str, tokenizer, kind: str
) -> Example | None:
    """A FigStep-style example: the request typed in the image, a generic instruction as text."""
    variants = typographic_variants(request, answer, tokenizer, kind)
    return rng.choice(variants) if variants else None  # one draw, as over TYPO_INSTRUCTIONS


def typographic_variants(request: str, answer: str, tokenizer, kind: str) -> list[Example]:
    """The request typed in the image once with each of the typed instructions (``[]`` if it does not fit).

    The same image under every :data:`~cmrm_guard.organism.texts.TYPO_INSTRUCTIONS`: a typed set
    that does not depend on which instruction a seeded draw gave a request.
    """
    cells = img.typographic_cells(request, tokenizer)
    if cells is None:
        return []
    return [
        Example(instruction, answer, cells, kind, {"request": request}) for instruction in TYPO_INSTRUCTIONS
    ]
