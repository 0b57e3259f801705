"""The ``cmrm-guard`` command line: a thin shell over the library.

Errors print one line to stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cmrm_guard.errors import CMRMError


def _demo(args: argparse.Namespace) -> None:
    from cmrm_guard.demo import run_demo

    run_demo(model_type=args.model_type, max_new_tokens=args.max_new_tokens)


def _inspect(args: argparse.Namespace) -> None:
    from cmrm_guard.vectors.pack import VectorPack

    pack = VectorPack.from_pretrained(args.pack, revision=args.revision)
    print(pack.meta.model_dump_json(indent=2))
    print("per-layer norms:")
    for layer, norm in pack.layer_norms().items():
        print(f"  layer {layer:>3}: {norm:.4f}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cmrm-guard``."""
    from cmrm_guard import __version__
    from cmrm_guard.tiny import TINY_MODEL_TYPES

    parser = argparse.ArgumentParser(prog="cmrm-guard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cmrm-guard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the offline demo on an embedded tiny model")
    demo.add_argument("--model-type", default="llava", choices=TINY_MODEL_TYPES)
    demo.add_argument("--max-new-tokens", type=int, default=12)
    demo.set_defaults(run=_demo)
    inspect = commands.add_parser("inspect", help="print a vector pack's metadata and per-layer norms")
    inspect.add_argument("pack", help="pack directory or Hub repo id")
    inspect.add_argument("--revision", default=None)
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cmrm-guard``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CMRMError, OSError) as error:
        print(f"cmrm-guard {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmrm-guard {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
