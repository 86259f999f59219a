"""``resnest-summary``: parameters, GFLOPs and stage shapes of zoo models."""
import argparse
import sys

from .. import list_models
from ..models.summary import model_summary, zoo_table
from . import setup_logging
from .cli import command, positive_int


def build_parser():
    parser = argparse.ArgumentParser(
        prog="resnest-summary",
        description="Print parameters (BN statistics included, as published), multiply-add "
                    "GFLOPs and per-stage output shapes of ResNeSt models.",
        epilog="Example: resnest-summary resnest50 --size 224;  resnest-summary --table")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"model names (default: all). Choices: {', '.join(list_models())}")
    parser.add_argument("--size", type=int, default=None,
                        help="input height/width (default: the model's eval size; 224 for "
                             "--table)")
    parser.add_argument("--classes", type=positive_int, default=1000, help="output classes (1000)")
    parser.add_argument("--table", action="store_true",
                        help="one Markdown table for the models (as in README)")
    return parser


@command("resnest-summary")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        print(f"resnest-summary: unknown model(s) {unknown}; choose from "
              f"{', '.join(list_models())}", file=sys.stderr)
        return 2
    if args.size is not None and args.size < 32:
        print("resnest-summary: --size must be at least 32", file=sys.stderr)
        return 2
    names = args.models or list_models()
    if args.table:
        sys.stdout.write(zoo_table(names, args.size or 224) + "\n")
    else:
        for name in names:
            sys.stdout.write(model_summary(name, args.size, args.classes) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
