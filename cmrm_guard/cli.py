"""The ``cmrm-guard`` command line: a thin shell over the library.

Commands: ``demo``, ``calibrate``, ``push``, ``pull``, ``inspect``, ``eval``. Errors print one line to
stderr and exit with status 2 (no traceback); Hub endpoint and token come from the usual
``HF_ENDPOINT`` / ``HF_TOKEN`` environment or ``--token``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cmrm_guard.errors import CMRMError, ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def check_device_map(device_map: str | None) -> None:
    """Refuse a CUDA ``--device-map`` when this torch has no usable CUDA device (before any model loads)."""
    if not device_map or not device_map.strip().lower().startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = (
            "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        )
        raise ConfigError(
            f"--device-map {device_map!r}: {why}; use --device-map cpu, or install a CUDA build of torch"
        )


def _hub_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0; got {text!r}")
    return value


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers {text!r}: expected comma-separated integers like 0,1,2"
        ) from None


def at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, refused with a message naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its own messages
    return parse


def strength(text: str) -> float:
    """An argparse ``type``: a finite number >= 0 (a steering strength), refused naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


strength.__name__ = "finite number >= 0"


def _organism_available() -> str:
    """Empty when the organism can run here, else why not."""
    from cmrm_guard.organism import assemble, backbone

    missing = backbone.missing_dependencies()
    if missing:
        return f"{', '.join(missing)} not installed: {backbone.INSTALL}"
    try:
        backbone.gguf_path()
    except (ImportError, FileNotFoundError) as error:
        return str(error).splitlines()[0]
    if not (assemble.PARTS / "vision.safetensors").exists():
        return f"the organism's shipped parts are not in {assemble.PARTS}"
    return ""


def _demo(args: argparse.Namespace) -> None:
    if not args.tiny:
        missing = _organism_available()
        if not missing:
            from cmrm_guard.organism.demo import run_organism_demo

            if args.max_new_tokens is None:
                run_organism_demo()
            else:
                run_organism_demo(max_new_tokens=args.max_new_tokens)
            return
        print(f"model organism unavailable ({missing}); running the tiny-model demo instead")
    from cmrm_guard.demo import run_demo

    run_demo(model_type=args.model_type, max_new_tokens=args.max_new_tokens or 12)


def _calibrate(args: argparse.Namespace) -> None:
    import torch

    from cmrm_guard.steered import SteeredVLM
    from cmrm_guard.vectors import data
    from cmrm_guard.vectors.calibrate import calibrate

    records = []
    for path in args.data or []:
        records.extend(data.read_prompts_jsonl(path))
    if not records:
        records = data.default_calibration_records()
    records = data.select_records(records, args.num_samples, seed=args.seed)
    kwargs = {}
    if args.dtype != "auto":
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.device_map:
        check_device_map(args.device_map)
        kwargs["device_map"] = args.device_map
    svlm = SteeredVLM.from_pretrained(args.model, revision=args.revision, **kwargs)
    size = svlm.adapter.default_image_size(svlm.processor)
    conversations = data.calibration_conversations(
        records, image_mode=args.image_mode, image_size=size, seed=args.seed
    )
    pack = calibrate(
        svlm,
        conversations,
        estimator=args.estimator,
        batch_size=args.batch_size,
        corruption=args.corruption,
        layers=args.layers,
        alpha=args.alpha,
        application=args.application,
        progress=None if not args.quiet else False,
        noise_seed=args.seed,
    )
    if args.revision:
        pack.meta = pack.meta.model_copy(update={"base_model_revision": args.revision})
    folder = pack.save_pretrained(args.output)
    print(f"saved {pack!r} to {folder}")


def _push(args: argparse.Namespace) -> None:
    from cmrm_guard.vectors.pack import VectorPack

    pack = VectorPack.from_pretrained(Path(args.pack))  # always the local folder
    commit = pack.push_to_hub(
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        timeout_s=args.timeout,
    )
    print(f"pushed {args.pack} to {args.repo_id}: {commit}")


def _pull(args: argparse.Namespace) -> None:
    from cmrm_guard.vectors.pack import VectorPack

    pack = VectorPack.from_hub(args.repo_id, revision=args.revision, token=args.token, timeout_s=args.timeout)
    print(f"pulled {args.repo_id} at commit {pack.meta.revision}: {pack!r}")
    if args.output:
        folder = pack.save_pretrained(args.output)
        print(f"saved to {folder}")


def _inspect(args: argparse.Namespace) -> None:
    from cmrm_guard.vectors.pack import VectorPack

    pack = VectorPack.from_pretrained(
        args.pack, revision=args.revision, token=args.token, timeout_s=args.timeout
    )
    print(f"provenance: {pack.provenance}")
    print(pack.meta.model_dump_json(indent=2, exclude_none=True))
    print("per-layer norms:")
    for layer, norm in pack.layer_norms().items():
        print(f"  layer {layer:>3}: {norm:.4f}")


def _eval(args: argparse.Namespace) -> None:
    from cmrm_guard.eval.command import run

    run(args)


_TIMEOUT_HELP = "total deadline of the Hub transfer in seconds (default $CMRM_GUARD_HUB_TIMEOUT_S, else 120)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cmrm-guard``."""
    from cmrm_guard import package_version

    parser = _Parser(prog="cmrm-guard", description="CMRM safety steering for vision-language models")
    parser.add_argument("--version", action="version", version=f"cmrm-guard {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="unsteered vs steered answers on the model organism (or an embedded tiny model)"
    )
    demo.add_argument("--tiny", action="store_true", help="use the embedded tiny random model")
    demo.add_argument("--model-type", default="llava", help="tiny architecture to build (default llava)")
    demo.add_argument(
        "--max-new-tokens",
        type=at_least(1),
        default=None,
        help="tokens per side-by-side answer (default: 20 on the organism, 12 on the tiny model)",
    )
    demo.set_defaults(run=_demo)

    calib = commands.add_parser("calibrate", help="compute a dataset-level vector pack for a model")
    calib.add_argument("model", help="Hub model id or local model folder")
    calib.add_argument("--output", "-o", required=True, type=Path, help="folder to write the pack to")
    calib.add_argument(
        "--data", nargs="+", type=Path, help="JSONL prompt files (default: the shipped 128 harmful prompts)"
    )
    calib.add_argument(
        "--num-samples", type=at_least(1), default=None, help="draw this many records (seeded)"
    )
    calib.add_argument("--estimator", choices=("mean", "pc1"), default="mean")
    calib.add_argument("--corruption", choices=("blank", "noise"), default="blank")
    calib.add_argument(
        "--layers", type=_layers, default=None, help="comma-separated decoder layers (default: all)"
    )
    calib.add_argument(
        "--alpha", type=strength, default=1.0, help="default strength stored in the pack (finite, >= 0)"
    )
    calib.add_argument("--application", choices=("increment", "every_layer"), default="increment")
    calib.add_argument("--batch-size", type=at_least(1), default=8)
    calib.add_argument(
        "--image-mode",
        choices=("typographic", "blank", "noise"),
        default="typographic",
        help="image made for prompts without one",
    )
    calib.add_argument("--revision", default=None, help="model revision")
    calib.add_argument("--dtype", choices=DTYPES, default="auto")
    calib.add_argument("--device-map", default=None, help='e.g. "auto" (needs accelerate)')
    calib.add_argument("--seed", type=int, default=0)
    calib.add_argument("--quiet", action="store_true", help="no progress bar")
    calib.set_defaults(run=_calibrate)

    push = commands.add_parser("push", help="upload a pack folder to a Hub repo in one commit")
    push.add_argument("pack", help="pack folder")
    push.add_argument("repo_id", help="namespace/name")
    push.add_argument("--private", action="store_true", default=None)
    push.add_argument("--token", default=None)
    push.add_argument("--revision", default=None, help="branch (created if missing)")
    push.add_argument("--commit-message", default="Upload CMRM vector pack")
    push.add_argument("--create-pr", action="store_true")
    push.add_argument("--timeout", type=_hub_timeout, default=None, help=_TIMEOUT_HELP)
    push.set_defaults(run=_push)

    pull = commands.add_parser("pull", help="download a pack into the Hub cache (and optionally a folder)")
    pull.add_argument("repo_id", help="namespace/name (always the Hub, never a local folder)")
    pull.add_argument("--revision", default=None, help="branch, tag or commit sha")
    pull.add_argument("--token", default=None)
    pull.add_argument("--output", "-o", type=Path, default=None, help="also save the pack to this folder")
    pull.add_argument("--timeout", type=_hub_timeout, default=None, help=_TIMEOUT_HELP)
    pull.set_defaults(run=_pull)

    inspect = commands.add_parser("inspect", help="print a pack's metadata and per-layer norms")
    inspect.add_argument(
        "pack", help="pack folder or Hub repo id (with --revision: always the Hub; ./path: always local)"
    )
    inspect.add_argument("--revision", default=None)
    inspect.add_argument("--token", default=None)
    inspect.add_argument("--timeout", type=_hub_timeout, default=None, help=_TIMEOUT_HELP)
    inspect.set_defaults(run=_inspect)

    from cmrm_guard.eval.command import add_parser as add_eval_parser

    add_eval_parser(commands, DTYPES).set_defaults(run=_eval)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cmrm-guard``; returns the exit status.

    Every error is one line on stderr and exit status 2, never a traceback: cmrm-guard's own errors and
    ``OSError``/``ValueError`` as their message, anything else prefixed with its type (set
    ``CMRM_GUARD_TRACEBACK=1`` to see the traceback of those). Ctrl-C exits with 130.
    """
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CMRMError, OSError, ValueError) as error:
        print(f"cmrm-guard {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmrm-guard {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (the CLI's promise: one line, status 2)
        import os

        if os.environ.get("CMRM_GUARD_TRACEBACK"):
            raise
        print(
            f"cmrm-guard {args.command}: error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
