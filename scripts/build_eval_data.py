"""Rebuild the shipped evaluation sets (``cmrm_guard/eval/data``) from the full prompt sets.

A development script, not part of the package. Run from the repository root:
``python scripts/build_eval_data.py`` (it reads ``cmrm_guard/organism/prompts``, or the folder given
as its argument). Output is deterministic; see ``cmrm_guard/eval/data/PROVENANCE.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cmrm_guard"
HERE = PACKAGE / "eval" / "data"
SOURCE = PACKAGE / "organism" / "prompts"
EVAL_HARMFUL_ROWS = 200
NEAR_DUPLICATE_JACCARD = 0.6  # stricter than the runtime check (0.8): the shipped set keeps well clear


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def words(text: str) -> frozenset[str]:
    return frozenset(normalise(text).split())


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(shared: Path) -> None:
    calibration = read(PACKAGE / "data" / "calibration_harmful_128.jsonl")
    calibration_ids = {r["id"] for r in calibration}
    calibration_words = [words(r["prompt"]) for r in calibration]
    pool = [r for r in read(shared / "calibration_harmful.jsonl") if r["id"] not in calibration_ids]
    pool.sort(key=lambda r: hashlib.sha256(f"cmrm-guard-eval:{r['id']}".encode()).hexdigest())
    chosen: list[dict] = []
    chosen_words: list[frozenset[str]] = []
    for row in pool:
        w = words(row["prompt"])
        if any(jaccard(w, c) >= NEAR_DUPLICATE_JACCARD for c in calibration_words + chosen_words):
            continue
        chosen.append({k: row[k] for k in ("id", "prompt", "category", "source", "license")})
        chosen_words.append(w)
        if len(chosen) == EVAL_HARMFUL_ROWS:
            break
    write(HERE / "eval_harmful.jsonl", sorted(chosen, key=lambda r: r["id"]))
    xstest = read(shared / "overrefusal_xstest.jsonl")
    write(
        HERE / "xstest.jsonl",
        [{k: r[k] for k in ("id", "prompt", "label", "type", "source", "license")} for r in xstest],
    )
    gsm8k = read(shared / "calibration_benign.jsonl")
    write(
        HERE / "gsm8k.jsonl",
        [{k: r[k] for k in ("id", "prompt", "final_answer", "source", "license")} for r in gsm8k],
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
