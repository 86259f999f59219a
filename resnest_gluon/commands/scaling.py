"""``resnest-scaling``: modelled Horovod scaling efficiency of each ResNeSt depth (Markdown).

Prints the tables of ``docs/scaling.md``: ring-allreduce time of each depth's gradient against
its compute time per step at the published per-GPU batch, fp32 and fp16 gradients, for the
given worker count, link speeds and Horovod fusion settings. Per-GPU img/s are estimates from
published numbers (sources printed under the tables) unless measured ones are given.
"""
import argparse
import sys

from ..config import DistConfig
from ..training.scaling import (
    DEPTHS,
    PUBLISHED_RESNET50,
    Scenario,
    estimated_img_per_s,
    inputs_table,
    model_inputs,
    scaling_table,
    sources_text,
    speed_ratios,
)
from . import setup_logging
from .cli import command


def _pairs(values, convert, what):
    out = {}
    for item in values or ():
        name, sep, raw = item.partition("=")
        if not sep or name not in DEPTHS:
            raise ValueError(f"{what} takes MODEL=VALUE with MODEL one of {', '.join(DEPTHS)}; "
                             f"got {item!r}")
        try:
            value = convert(raw)
        except ValueError:
            raise ValueError(f"{what}: {raw!r} is not a number (in {item!r})") from None
        if value <= 0:
            raise ValueError(f"{what}: {item!r} must be positive")
        out[name] = value
    return out


def build_parser():
    defaults = DistConfig()
    parser = argparse.ArgumentParser(
        prog="resnest-scaling",
        description="Model Horovod ring-allreduce time against compute time per step for each "
                    "ResNeSt depth and print Markdown tables (see docs/scaling.md).",
        epilog="Example: resnest-scaling --workers 64 --bandwidth-gbit 25 100 "
               "--img-per-s resnest50=850 resnest101=420")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"depths (default: all of {', '.join(DEPTHS)})")
    parser.add_argument("--workers", type=int, default=64, help="GPUs in the ring (64)")
    parser.add_argument("--bandwidth-gbit", type=float, nargs="+", default=[25.0, 100.0],
                        help="network bandwidth per node in Gbit/s (25 100)")
    parser.add_argument("--fusion-mb", type=float, default=defaults.fusion_threshold_mb,
                        help="Horovod fusion threshold in MiB, 0 = off (config default "
                             f"dist.fusion_threshold_mb={defaults.fusion_threshold_mb:g})")
    parser.add_argument("--cycle-ms", type=float, default=defaults.cycle_time_ms,
                        help="Horovod cycle time in ms (config default "
                             f"dist.cycle_time_ms={defaults.cycle_time_ms:g})")
    parser.add_argument("--latency-us", type=float, default=None,
                        help="latency of one allreduce call in microseconds (default: NCCL's "
                             "ring model for --workers and --gpus-per-node)")
    parser.add_argument("--gpus-per-node", type=int, default=8,
                        help="GPUs per node, for the default latency (8)")
    parser.add_argument("--overlap", type=float, default=1.0,
                        help="fraction of the backward pass that hides communication, shown "
                             "beside no overlap (1.0)")
    parser.add_argument("--backward-fraction", type=float, default=2.0 / 3.0,
                        help="share of the step spent in backward (2/3)")
    parser.add_argument("--method", choices=["timm", "flops"], default="timm",
                        help="ResNeSt speed relative to ResNet-50: timm's measured training "
                             "throughputs (default) or our multiply-add ratio")
    parser.add_argument("--gpu", nargs="*", default=None, metavar="REFERENCE",
                        choices=[r.name for r in PUBLISHED_RESNET50],
                        help="published GPU references to tabulate (default: all; none with "
                             "--img-per-s alone)")
    parser.add_argument("--img-per-s", nargs="+", metavar="MODEL=IMG_S",
                        help="measured training img/s per GPU, tabulated as 'measured'")
    parser.add_argument("--batch", nargs="+", metavar="MODEL=BATCH",
                        help="per-GPU batch instead of the published one")
    return parser


def _check(args):
    unknown = [m for m in args.models if m not in DEPTHS]
    if unknown:
        return f"unknown model(s) {unknown}; choose from {', '.join(DEPTHS)}"
    if args.workers < 1:
        return "--workers must be >= 1"
    if min(args.bandwidth_gbit) <= 0:
        return "--bandwidth-gbit values must be > 0"
    if args.fusion_mb < 0 or args.cycle_ms <= 0:
        return "--fusion-mb must be >= 0 and --cycle-ms > 0"
    if args.latency_us is not None and args.latency_us < 0:
        return "--latency-us must be >= 0"
    if not 0 <= args.overlap <= 1 or not 0 < args.backward_fraction <= 1:
        return "--overlap must be in [0, 1] and --backward-fraction in (0, 1]"
    return None


@command("resnest-scaling")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    problem = _check(args)
    try:
        measured = _pairs(args.img_per_s, float, "--img-per-s")
        batches = _pairs(args.batch, int, "--batch")
    except ValueError as err:
        problem = str(err)
    if problem:
        print(f"resnest-scaling: {problem}", file=sys.stderr)
        return 2
    scenario = Scenario(workers=args.workers, bandwidths_gbit=tuple(args.bandwidth_gbit),
                        fusion_mb=args.fusion_mb, cycle_ms=args.cycle_ms,
                        latency_s=None if args.latency_us is None else args.latency_us * 1e-6,
                        gpus_per_node=args.gpus_per_node, overlap=args.overlap,
                        backward_fraction=args.backward_fraction)
    names = args.models or list(DEPTHS)
    models = [model_inputs(name, batches.get(name)) for name in names]
    wanted = args.gpu if args.gpu is not None else (
        [] if measured else [r.name for r in PUBLISHED_RESNET50])
    references = [r for r in PUBLISHED_RESNET50 if r.name in wanted]
    ratios = {method: speed_ratios(models, method) for method in ("timm", "flops")}
    throughput = estimated_img_per_s(ratios[args.method], references)
    if measured:
        throughput["measured"] = measured
    out = [f"### Inputs ({args.workers} workers)", "",
           inputs_table(models, scenario, throughput, ratios)]
    for ref in references:
        out += ["", f"### {ref.name}: {ref.description}; ResNet-50 "
                    f"{ref.resnet50_img_per_s:g} img/s/GPU (estimated ResNeSt img/s)", "",
                scaling_table(models, scenario, throughput[ref.name])]
    if measured:
        out += ["", "### measured: img/s/GPU given on the command line", "",
                scaling_table(models, scenario, measured)]
    out += ["", "Sources and assumptions:", ""]
    out += sources_text(args.method if references else None, scenario, measured)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
