"""``scripts/verify.py``: top-1 / top-5 of a model on RecordIO validation shards.

Counts are exact: every image once across ranks (also under horovodrun), summed, and the number
of images is printed. An unreadable record stops it (exit 2, naming the shards) unless
--allow-bad-records, which scores the other images and says how many were left out. Published
Gluon weights load through the converter.
"""
import argparse
import json
import logging
import sys

import mxnet as mx

from ..data import ShardSet
from ..models.fusion import fuse_for_cpu_inference
from ..paths import atomic_write, make_parent
from ..training.devices import default_context
from ..training.dist import init_distributed
from ..training.evaluate import evaluate
from . import setup_logging
from .cli import command, non_negative_int, positive_int
from .common import add_eval_arguments, add_model_arguments, load_network, settings_from_args

log = logging.getLogger("verify")


def build_parser():
    parser = argparse.ArgumentParser(prog="verify.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    add_model_arguments(parser)
    parser.add_argument("--rec-val", required=True,
                        help="validation shards: .rec, shard prefix, glob or folder")
    add_eval_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=2, help="decoding processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--per-class-csv", help="write per-class accuracy here")
    parser.add_argument("--plain-graph", action="store_true",
                        help="on CPUs, evaluate the plain graph the training loop evaluates "
                             "(bit-equal to it) instead of the oneDNN-fused one (BatchNorm "
                             "folded into the convolutions: faster, logits within ~1e-6)")
    parser.add_argument("--allow-bad-records", action="store_true",
                        help="score the readable images when some records are unreadable "
                             "(they are left out and counted); without it they are an error")
    return parser


@command("verify")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dist = init_distributed()
    setup_logging(rank=dist.rank)
    if args.per_class_csv and dist.rank == 0:   # a bad path: before the evaluation, not after
        make_parent(args.per_class_csv, "--per-class-csv")
    ctx = default_context(dist.local_rank)
    net, config = load_network(args, ctx)
    settings = settings_from_args(args, config)
    shards = ShardSet(args.rec_val)
    _prepare_graph(net, ctx, settings, args)
    result = evaluate(net, shards, dist, settings, args.batch_size, args.workers,
                      net.classes, ctx, per_class=bool(args.per_class_csv),
                      max_unreadable=None if args.allow_bad_records else 0)
    if dist.rank != 0:
        return 0
    if args.json:
        print(json.dumps({"top1": result["top1"], "top5": result["top5"],
                          "images": result["images"], "unreadable": result["unreadable"],
                          **settings.to_dict()}), flush=True)
    else:
        left_out = (f" ({result['unreadable']} of {len(shards)} records unreadable, left out)"
                    if result["unreadable"] else "")
        print(f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  on "
              f"{result['images']} images{left_out}  (size {settings.size}, crop ratio "
              f"{settings.crop_ratio:.3f}, {settings.interpolation}, {dist.size} worker(s))",
              flush=True)
    if args.per_class_csv:
        atomic_write(args.per_class_csv, lambda handle: handle.write(_per_class_csv(result)))
    return 0


def _prepare_graph(net, ctx, settings, args):
    """Hybridize ``net`` for the evaluation: on CPUs fused by oneDNN unless --plain-graph
    (GPUs have no such pass)."""
    if ctx.device_type != "cpu" or args.plain_graph:
        net.hybridize(static_alloc=True, static_shape=True)
        return
    sample = mx.nd.zeros((args.batch_size, 3, settings.size, settings.size), ctx=ctx)
    fuse_for_cpu_inference(net, sample)
    log.info("evaluating the oneDNN-fused graph (BatchNorm folded; --plain-graph for the "
             "training loop's graph)")


def _per_class_csv(result) -> str:
    lines = ["class,correct,images,accuracy"]
    for label, (correct, total) in enumerate(result["per_class"]):
        accuracy = correct / total if total else float("nan")
        lines.append(f"{label},{int(correct)},{int(total)},{accuracy:.6f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
