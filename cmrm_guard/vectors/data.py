"""Calibration data: JSONL prompt files, the shipped default set, and images made for bare prompts.

A prompt file is JSON Lines, one object per line: ``{"prompt": str, "image": optional path}`` (an
image path is relative to the file's folder; ``id`` and other fields are kept). Prompts that come
without an image get one made for them (``image_mode``): ``"typographic"`` renders the request
itself with Pillow (FigStep-style), ``"blank"`` / ``"noise"`` make a content-free image. Only the
text-only and corrupted twins enter a CMRM vector, so the made image matters through its size (the
number of image tokens) and as the multimodal input of diagnostics.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from cmrm_guard.adapters.conversation import Conversation, uninformative_image
from cmrm_guard.errors import ConfigError, ConversationError
from cmrm_guard.typography import render_text_image

IMAGE_MODES = ("typographic", "blank", "noise")
DEFAULT_CALIBRATION_FILE = "calibration_harmful_128.jsonl"


def read_prompts_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL prompt file; image paths become absolute.

    Raises:
        ConversationError: naming the file and line of a malformed record.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConversationError(f"cannot read prompt file {str(path)!r}: {error.strerror}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConversationError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConversationError(f"{path}:{number}: each line needs a non-empty string 'prompt'")
        image = record.get("image")
        if image is not None:
            if not isinstance(image, str):
                raise ConversationError(f"{path}:{number}: 'image' must be a file path string")
            image_path = (path.parent / image).resolve()
            if not image_path.is_file():
                raise ConversationError(f"{path}:{number}: image {image!r} not found at {image_path}")
            record["image"] = str(image_path)
        records.append(record)
    if not records:
        raise ConversationError(f"prompt file {str(path)!r} holds no records")
    return records


def default_calibration_records() -> list[dict[str, Any]]:
    """The shipped default calibration set: 128 harmful requests (see ``cmrm_guard/data/PROVENANCE.md``)."""
    with resources.as_file(resources.files("cmrm_guard.data") / DEFAULT_CALIBRATION_FILE) as path:
        return read_prompts_jsonl(path)


def default_calibration_ids() -> frozenset[str]:
    """Ids of the default calibration prompts (evaluation sets must not contain them)."""
    return frozenset(str(r["id"]) for r in default_calibration_records())


def select_records(
    records: Sequence[dict[str, Any]], num_samples: int | None, *, seed: int = 0
) -> list[dict[str, Any]]:
    """``num_samples`` records drawn with a seeded shuffle (all of them, in order, when ``None``)."""
    if num_samples is None:
        return list(records)
    if num_samples < 1 or num_samples > len(records):
        raise ConfigError(f"num_samples={num_samples}: expected 1..{len(records)} (the records available)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in sorted(order[:num_samples])]


def calibration_conversations(
    records: Iterable[dict[str, Any]],
    *,
    image_mode: str = "typographic",
    image_size: tuple[int, int] = (336, 336),
    seed: int = 0,
) -> list[Conversation]:
    """Turn prompt records into single-turn image+text conversations for :func:`calibrate`."""
    if image_mode not in IMAGE_MODES:
        raise ConfigError(f"image_mode={image_mode!r}: expected one of {', '.join(IMAGE_MODES)}")
    conversations = []
    for index, record in enumerate(records):
        prompt = record["prompt"]
        image: Any = record.get("image")
        if image is None:
            if image_mode == "typographic":
                image = render_text_image(prompt, size=image_size)
            else:
                grey = (0.5, 0.5, 0.5)
                image = uninformative_image(image_size, image_mode, grey, (0.25, 0.25, 0.25), seed + index)
        conversations.append(
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}],
                }
            ]
        )
    return conversations
