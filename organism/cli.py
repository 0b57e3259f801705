"""``python -m organism {build,sweep,evaluate,probe}``: the organism's research pipeline.

Run from the repository root (the ``organism`` package is not installed with the library). The
shipped organism's demo is the library's ``cmrm-guard demo``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _build(args: argparse.Namespace) -> None:
    from organism.build import DEFAULTS, build_organism

    _threads(args)
    # every build setting the command line names (the parser's dests are DEFAULTS' keys)
    overrides = {k: v for k in DEFAULTS if (v := getattr(args, k, None)) is not None}
    if args.vision_clip == 0:
        overrides["vision_clip"] = None  # 0 on the command line: no clipping
    meta = build_organism(args.out, **overrides)
    print(json.dumps(meta["build"], indent=2))


def _evaluate(args: argparse.Namespace) -> None:
    from organism.pipeline import evaluate_organism

    _threads(args)
    evaluate_organism(
        args.parts, n=args.n or None, split=args.split, sample_level=args.sample_level, output=args.out
    )


def _sweep(args: argparse.Namespace) -> None:
    from organism.pipeline import calibrate_and_sweep

    _threads(args)
    calibrate_and_sweep(args.parts, n=args.n, refine=not args.no_refine, output=args.out)


def _probe(args: argparse.Namespace) -> None:
    from cmrm_guard.organism.load import load_organism
    from organism import results_dir
    from organism.probe import format_probe, run_probe

    _threads(args)
    result = run_probe(load_organism(args.parts, vectors=None), n=args.n, split=args.split)
    print(format_probe(result))
    target = results_dir(args.parts) / f"probe_{args.split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {target}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m organism``."""
    from cmrm_guard.cli import at_least

    parser = argparse.ArgumentParser(
        prog="python -m organism", description="build and measure the SmolLM2 model organism"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="retrain the organism's parts (seeded)")
    build.add_argument(
        "--out", default=None, help="folder of the parts (default: the shipped cmrm_guard/organism/parts)"
    )
    build.add_argument("--vision-steps", type=at_least(1), default=None)
    build.add_argument(
        "--vision-clip",
        type=float,
        default=None,
        help="stage 1's gradient-norm clip (default: none, as the shipped tower was trained; 1.0 makes "
        "stage 1's glyph accuracy independent of float rounding; 0: none)",
    )
    build.add_argument("--lora-examples", type=at_least(1), default=None)
    build.add_argument(
        "--safe-alarming",
        type=at_least(0),
        default=None,
        help="safe requests that sound unsafe, answered, and as many harmful ones in the same words, "
        "refused (default 0, as shipped)",
    )
    build.add_argument("--seed", type=int, default=None)
    build.add_argument("--modality-offset", type=float, default=None)
    build.add_argument(
        "--curriculum",
        choices=("joint", "sequential"),
        default=None,
        help="stage 2: one shuffled mix (joint) or text safety then image instructions (sequential, default)",
    )
    build.add_argument(
        "--stage-b-text-share",
        type=float,
        default=None,
        help="sequential: text examples replayed in the image phase, as a share of its image examples (0-1, default 0.25)",
    )
    build.add_argument(
        "--word-pool", choices=("train", "broad"), default=None, help="words of stage 2's reading questions"
    )
    build.add_argument(
        "--stage-b-trains",
        choices=("lora", "projector"),
        default=None,
        help="sequential: what the image phase trains",
    )
    build.add_argument("--stage-b-lr", type=float, default=None, help="sequential: lr of the image phase")
    build.add_argument(
        "--typed-align",
        type=float,
        default=None,
        help="weight of pulling typed prompts' states toward their twins' (default 2; 0: off)",
    )
    build.add_argument(
        "--typed-align-target",
        choices=("text", "beside"),
        default=None,
        help="what --typed-align pulls typed prompts toward: the request as text or beside an image (default)",
    )
    build.add_argument(
        "--typed-align-harmful",
        type=int,
        default=None,
        help="harmful training requests typed in an image, seen only by the --typed-align term "
        "(default 252: every training request)",
    )
    build.add_argument(
        "--typed-align-harmful-phase",
        choices=("A", "B"),
        default=None,
        help="sequential: phase of the --typed-align-harmful requests (B: image phase, default)",
    )
    build.add_argument(
        "--lora-first-layer",
        type=int,
        default=None,
        help="first decoder layer of the LoRA (default 0: every layer)",
    )
    build.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 4)")
    build.add_argument(
        "--typed-phase",
        choices=("A", "B"),
        default=None,
        help="sequential: phase of the benign requests typed in an image (B: image phase, default)",
    )
    build.add_argument(
        "--reuse-vision-from",
        default=None,
        help="skip stage 1: a parts folder (e.g. cmrm_guard/organism/parts: its tower, the modality "
        "offset removed) or a "
        "stage-1 file (~/.cache/cmrm-guard/organism-build/vision_stage1_seed0.safetensors)",
    )
    build.set_defaults(run=_build)
    evaluate = sub.add_parser("evaluate", help="refusal rates and image-QA accuracy, unsteered and steered")
    evaluate.add_argument("--n", type=at_least(0), default=200, help="cap per condition (0: the whole split)")
    evaluate.add_argument("--sample-level", action="store_true", help="also evaluate sample-level CMRM")
    evaluate.add_argument(
        "--split",
        default="eval",
        choices=("eval", "tune", "xstest"),
        help="eval (default), tune, or xstest: XSTest as an untouched over-refusal check",
    )
    evaluate.add_argument(
        "--out",
        default=None,
        help="folder of the harness output: results.json, results.md, plots, images "
        "(default ~/.cache/cmrm-guard/organism-evaluation-<split>)",
    )
    evaluate.set_defaults(run=_evaluate)
    sweep = sub.add_parser("sweep", help="calibrate the pack (calib split) and sweep alpha (tune split)")
    sweep.add_argument(
        "--n", type=at_least(1), default=48, help="prompts per set on the tune split (default 48)"
    )
    sweep.add_argument(
        "--out",
        default=None,
        help="folder of the harness output (default ~/.cache/cmrm-guard/organism-sweep)",
    )
    sweep.add_argument(
        "--no-refine",
        action="store_true",
        help="choose on the grid alone (skip the second stage: the grid's admissible settings on the "
        "whole tune split, every typed request under each of the 4 typed instructions)",
    )
    sweep.set_defaults(run=_sweep)
    probe = sub.add_parser(
        "probe",
        help="per-layer linear probe: is harmfulness read along the text direction (text / beside / typed)?",
    )
    probe.add_argument(
        "--n",
        type=at_least(2),
        default=96,
        help="harmful and benign prompts per condition (half fit, half test)",
    )
    probe.add_argument("--split", default="tune", choices=("tune", "eval"))
    probe.set_defaults(run=_probe)
    for command in (evaluate, sweep, probe):
        command.add_argument(
            "--parts",
            default=None,
            help="parts folder to measure (default: the shipped cmrm_guard/organism/parts; results then go "
            "to organism/results, otherwise beside the parts)",
        )
    for command in (build, evaluate, sweep, probe):
        command.add_argument("--threads", type=at_least(1), default=2, help="torch CPU threads (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m organism``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
