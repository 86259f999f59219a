"""``scripts/train.py``: train ResNeSt with the published recipe (single process or horovodrun).

    horovodrun -np 64 -H host1:8,... python scripts/train.py --config configs/resnest50.yaml \\
        --workdir runs/resnest50 data.train=/data/imagenet/train data.val=/data/imagenet/val

A relaunch with the same --workdir resumes from the newest complete checkpoint.
"""
import argparse
import logging
import os
import sys

from ..config import load_config
from ..training import fit
from . import setup_logging
from .cli import command

log = logging.getLogger("train")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1],
        epilog="Overrides are section.key=value, e.g. train.epochs=90 train.batch_size=64 "
               "optim.lr=0.4 data.num_classes=100 model.name=resnest101. See "
               "resnest_gluon/config.py for every key and its default.")
    parser.add_argument("--config", help="YAML config (deltas over the defaults)")
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics, curves, best/final params")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


@command("train", interrupted="interrupted; relaunch to resume from the last checkpoint")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    setup_logging(args.verbose, rank)
    summary = fit(load_config(args.config, args.overrides), args.workdir)
    if rank == 0:
        last = summary.get("last_eval") or {}
        log.info("%s at step %d%s; outputs in %s", summary["status"], summary["global_step"],
                 f", val top-1 {100 * last['top1']:.2f}% on {last['images']} images"
                 if last else "", args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
