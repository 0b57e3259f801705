"""``cmrm-guard eval``: build prompts, packs, conditions and judges from command-line arguments.

The parser lives in :mod:`cmrm_guard.cli`; this module turns its namespace into a
:func:`~cmrm_guard.eval.runner.run_evaluation` call and prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from cmrm_guard.errors import ConfigError


def floats(text: str) -> list[float]:
    """``"0.5,1"`` -> ``[0.5, 1.0]`` (empty text: no value)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers like 0.5,1.0") from None


def _packs(specs: list[str]) -> dict[str, str]:
    packs: dict[str, str] = {}
    for index, spec in enumerate(specs):
        name, sep, source = spec.partition("=")
        if not sep or not name or "/" in name or Path(spec).exists():
            name, source = ("pack" if index == 0 else f"pack{index + 1}"), spec
        if name in packs:
            raise ConfigError(f"--pack name {name!r} given twice; name them NAME=PATH")
        packs[name] = source
    return packs


def load_chat_model(target: str, kwargs_json: str | None) -> Any:
    """Build a chat model from ``"module:attribute"`` (a class or factory) and JSON keyword arguments."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"--llm-judge {target!r}: expected 'module:ClassName', e.g. langchain_ollama:ChatOllama"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"--llm-judge {target!r}: cannot import it ({error})") from None
    kwargs = json.loads(kwargs_json) if kwargs_json else {}
    if not isinstance(kwargs, dict):
        raise ConfigError("--llm-judge-kwargs must be a JSON object")
    return factory(**kwargs)


def _prompts(args: argparse.Namespace) -> list[Any]:
    from cmrm_guard.eval.prompts import load_prompt_set

    prompts = []
    for kind, sources in (("harmful", args.harmful), ("benign", args.benign), ("utility", args.utility)):
        for source in sources or []:
            prompts += load_prompt_set(source, kind, style=args.style, n=args.num, seed=args.seed)
    if not prompts:
        raise ConfigError("no prompts: give --harmful, --benign and/or --utility sets")
    return prompts


def _calibration_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    from cmrm_guard.vectors import data

    records = data.default_calibration_records()
    for path in args.calibration_data or []:
        records += data.read_prompts_jsonl(path)
    return records


def run(args: argparse.Namespace) -> None:
    """Run ``cmrm-guard eval`` for parsed ``args``."""
    from cmrm_guard.eval.runner import EvalResults

    if args.report_only:
        results = EvalResults.load(args.output)
        paths = results.write_report(results.path.parent if results.path else args.output)
        print(results.table())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return
    if not args.model:
        raise ConfigError("give the model to evaluate (a Hub id or a local folder)")
    import torch

    from cmrm_guard.eval import conditions as cond
    from cmrm_guard.eval.judges import LLMJudge, RefusalPhraseJudge
    from cmrm_guard.eval.prompts import check_disjoint, exclude_overlaps
    from cmrm_guard.eval.runner import run_evaluation
    from cmrm_guard.steered import SteeredVLM

    prompts = _prompts(args)
    calibration = _calibration_records(args)
    if args.drop_overlap:
        prompts, dropped = exclude_overlaps(prompts, calibration, near_duplicate=args.near_duplicate)
        if dropped:
            print(f"dropped {len(dropped)} prompt(s) that overlap the calibration prompts")
    if not prompts:
        raise ConfigError("no evaluation prompt left after dropping the overlaps")
    check_disjoint(prompts, calibration, near_duplicate=args.near_duplicate)  # before loading the model
    judges: list[Any] = [RefusalPhraseJudge()]
    if args.llm_judge:
        try:
            judges.insert(0, LLMJudge(load_chat_model(args.llm_judge, args.llm_judge_kwargs)))
        except TypeError as error:
            raise ConfigError(str(error)) from None
    kwargs: dict[str, Any] = {}
    if args.dtype != "auto":
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.device_map:
        kwargs["device_map"] = args.device_map
    svlm = SteeredVLM.from_pretrained(args.model, revision=args.revision, **kwargs)
    packs: dict[str, Any] = _packs(args.pack or [])
    if args.calibrate:
        from cmrm_guard.vectors import data
        from cmrm_guard.vectors.calibrate import calibrate

        chosen = data.select_records(calibration, min(args.calibrate, len(calibration)), seed=args.seed)
        size = svlm.adapter.default_image_size(svlm.processor)
        conversations = data.calibration_conversations(chosen, image_size=size, seed=args.seed)
        name = "calibrated" if packs else "pack"
        packs[name] = calibrate(
            svlm, conversations, batch_size=args.batch_size, progress=False if args.quiet else None
        )
    conditions = cond.default_conditions(
        args.alphas if packs else (),
        packs=list(packs),
        sample_alphas=args.sample_alphas,
        include_text_only=not args.no_text_only,
        application=args.application,
    )
    results = run_evaluation(
        svlm,
        prompts,
        conditions,
        judges=judges,
        packs=packs,
        output=args.output,
        resume=not args.no_resume,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        calibration=calibration,
        near_duplicate=args.near_duplicate,
        diagnostics=not args.no_diagnostics,
        diagnostic_prompts=args.diagnostic_prompts,
        pca_layer=args.pca_layer,
        progress=None if not args.quiet else False,
    )
    print(results.table())
    print(f"wrote {results.path} and the report beside it")


def add_parser(commands: Any, dtypes: tuple[str, ...]) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``cmrm-guard``'s subparsers."""
    from cmrm_guard.eval.prompts import BUILTIN_SETS, STYLES

    sets = ", ".join(BUILTIN_SETS)
    parser = commands.add_parser(
        "eval",
        help="measure what CMRM does: unsafe rate, over-refusal, utility, representation gap",
        description="Evaluate a VLM unsteered, text-only and steered (alpha sweep, sample-level); "
        f"writes results.json, results.md and plots/. Shipped prompt sets: {sets}; or JSONL files.",
    )
    parser.add_argument("model", nargs="?", help="Hub model id or local model folder")
    parser.add_argument(
        "--output", "-o", required=True, type=Path, help="results folder (resumed if it exists)"
    )
    parser.add_argument(
        "--pack", action="append", help="vector pack folder or Hub id, or NAME=PACK (repeatable)"
    )
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="calibrate a pack on N calibration prompts first (--calibration-data or the shipped set)")  # fmt: skip
    parser.add_argument(
        "--alphas", type=floats, default=[0.5, 1.0], help="dataset-level alphas (default 0.5,1.0)"
    )
    parser.add_argument(
        "--sample-alphas", type=floats, default=[1.0], help="sample-level alphas ('' for none)"
    )
    parser.add_argument("--application", choices=("increment", "every_layer"), default=None)
    parser.add_argument("--no-text-only", action="store_true", help="skip the text-only twin condition")
    parser.add_argument(
        "--harmful", nargs="*", default=["harmful"], help="harmful sets / JSONL (default harmful)"
    )
    parser.add_argument(
        "--benign", nargs="*", default=["xstest_safe"], help="benign-but-sensitive sets / JSONL"
    )
    parser.add_argument("--utility", nargs="*", default=["gsm8k", "shapes"], help="utility sets / JSONL")
    parser.add_argument("--style", choices=STYLES, default="figstep", help="image for prompts without one")
    parser.add_argument("--num", type=int, default=50, help="prompts drawn per set (seeded; default 50)")
    parser.add_argument("--calibration-data", nargs="+", type=Path,
                        help="JSONL the pack was calibrated on (checked disjoint, with the shipped set)")  # fmt: skip
    parser.add_argument(
        "--drop-overlap", action="store_true", help="drop overlapping prompts instead of failing"
    )
    parser.add_argument(
        "--near-duplicate", type=float, default=0.8, help="word-Jaccard threshold (default 0.8)"
    )
    parser.add_argument("--llm-judge", metavar="MODULE:CLASS", help="LangChain chat model as primary judge")
    parser.add_argument(
        "--llm-judge-kwargs", metavar="JSON", help='e.g. \'{"model": "llama3:8b", "temperature": 0}\''
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--diagnostic-prompts", type=int, default=16)
    parser.add_argument("--pca-layer", type=int, default=None)
    parser.add_argument("--no-diagnostics", action="store_true")
    parser.add_argument("--no-resume", action="store_true", help="start over even if results exist")
    parser.add_argument(
        "--report-only", action="store_true", help="only redraw table and plots from results.json"
    )
    parser.add_argument("--revision", default=None, help="model revision")
    parser.add_argument("--dtype", choices=dtypes, default="auto")
    parser.add_argument("--device-map", default=None, help='e.g. "auto" (needs accelerate)')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser
