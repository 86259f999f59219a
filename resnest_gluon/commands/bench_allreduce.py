"""``resnest-bench-allreduce``: measured allreduce of one gradient vs the model (``--help``).

Run under ``horovodrun`` (or ``resnest-launch``) on the hosts to measure. Every rank builds
the network, sets its gradients and times the trainer's gradient allreduce, the one a
training step makes (same fusion threshold and cycle time as training, Horovod's fp16
compression or none), after a barrier, ``--repeats`` times after one warm-up. Rank 0 prints a
table of the median time (the mean over ranks of each repeat) next to what
:func:`resnest_gluon.training.scaling.allreduce_seconds` (``resnest-scaling``) predicts for
``--bandwidth-gbit``, ``--latency-us`` and ``--wire-efficiency``, with the float16 cast
measured here (the time to compress the gradient and decompress it, in this process) and
``--host-floor-ms`` (the same allreduce measured where the link does not limit it), and with
``--json`` writes the rows.
"""
import argparse
import json
import sys
import time

import mxnet as mx
import numpy as np

from ..config import DistConfig
from ..models import get_model
from ..training.dist import init_distributed
from ..training.scaling import allreduce_seconds, fused_buffers, gradient_bytes
from . import setup_logging
from .cli import command, positive_float, positive_int


def build_parser() -> argparse.ArgumentParser:
    defaults = DistConfig()
    parser = argparse.ArgumentParser(
        prog="resnest-bench-allreduce", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--model", default="resnest50", help="zoo model (resnest50)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed allreduces (5)")
    parser.add_argument("--compression", nargs="+", choices=["none", "fp16"],
                        default=["none", "fp16"], help="gradient compression(s) to measure")
    parser.add_argument("--bandwidth-gbit", type=positive_float, default=None,
                        help="the link's bandwidth per host, for the modelled column")
    parser.add_argument("--latency-us", type=float, default=100.0,
                        help="per-call latency alpha for the model (100 us)")
    parser.add_argument("--wire-efficiency", type=positive_float, default=1448 / 1514,
                        help="data share of the link's bits (TCP, 1500-byte MTU: 0.956)")
    parser.add_argument("--fusion-mb", type=float, default=defaults.fusion_threshold_mb,
                        help=f"HOROVOD_FUSION_THRESHOLD in MiB ({defaults.fusion_threshold_mb:g}, "
                             f"as training)")
    parser.add_argument("--cycle-ms", type=float, default=defaults.cycle_time_ms,
                        help=f"HOROVOD_CYCLE_TIME ({defaults.cycle_time_ms:g}, as training)")
    parser.add_argument("--host-floor-ms", nargs="+", default=[], metavar="COMPRESSION=MS",
                        help="the hosts' own time for the ring, e.g. none=207 fp16=390: this "
                             "measurement's ring time (measured minus half a cycle and the "
                             "cast) on an unlimited link")
    parser.add_argument("--json", default=None, help="also write the rows here (rank 0)")
    return parser


def gradient_parameters(model: str):
    """The trainable parameters of ``model``, initialised, with every gradient set to 1."""
    net = get_model(model)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 64, 64)))          # completes deferred shapes
    params = {name: p for name, p in net.collect_params().items() if p.grad_req != "null"}
    for param in params.values():
        param.grad()[:] = 1.0
    return params


def time_allreduce(dist, params, fp16: bool, repeats: int):
    """Seconds of each of ``repeats`` gradient allreduces (mean over ranks), after a warm-up."""
    trainer = dist.make_trainer(params, "sgd", {"learning_rate": 0.0}, fp16_allreduce=fp16)
    times = []
    for _ in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        trainer.allreduce_grads()
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    return dist.allreduce_sum(times[1:], name=f"times{int(fp16)}") / dist.size


def time_compression(params, repeats: int) -> float:
    """Median seconds to cast every gradient to float16 and back (Horovod's fp16
    compression), here, without the network."""
    grads = [p.grad() for p in params.values()]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for grad in grads:
            grad.astype("float16").astype("float32").wait_to_read()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def _floors(items):
    floors = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            floors[name] = float(value) * 1e-3
        except ValueError:
            sep = ""
        if not sep or name not in ("none", "fp16"):
            raise ValueError(f"--host-floor-ms takes none=MS or fp16=MS, got {item!r}")
    return floors


def measure(args, dist, floors=None):
    """Rows ``{compression, gradient_mb, buffers, compress_ms, measured_ms, ring_ms,
    modelled_ms}`` (``ring_ms``: measured less half a cycle and the cast); ``floors``: host
    floor seconds per compression."""
    floors = floors or {}
    params = gradient_parameters(args.model)
    values = sum(int(np.prod(p.shape)) for p in params.values())
    fusion_bytes, cycle_s = args.fusion_mb * 2**20, args.cycle_ms * 1e-3
    rows = []
    for compression in args.compression:
        fp16 = compression == "fp16"
        nbytes = gradient_bytes(values, fp16)
        measured = float(np.median(time_allreduce(dist, params, fp16, args.repeats)))
        compress = time_compression(params, args.repeats) if fp16 else 0.0
        modelled = None
        if args.bandwidth_gbit:
            modelled = allreduce_seconds(nbytes, dist.size, args.bandwidth_gbit * 1e9,
                                         args.latency_us * 1e-6, fusion_bytes, len(params),
                                         cycle_s, args.wire_efficiency, compress,
                                         floors.get(compression, 0.0))
        rows.append({"compression": compression, "workers": dist.size,
                     "bandwidth_gbit": args.bandwidth_gbit, "gradient_mb": nbytes / 1e6,
                     "buffers": fused_buffers(nbytes, fusion_bytes, len(params)),
                     "compress_ms": compress * 1e3,
                     "measured_ms": measured * 1e3,
                     "ring_ms": (measured - cycle_s / 2 - compress) * 1e3,
                     "modelled_ms": None if modelled is None else modelled * 1e3})
    return rows


def format_rows(rows) -> str:
    """The Markdown table of :func:`measure`'s rows."""
    lines = ["| link (Gbit/s) | compression | gradient (MB) | buffers | fp16 cast (ms) | "
             "measured (ms) | modelled (ms) | measured / modelled |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        modelled = row["modelled_ms"]
        ratio = f"{row['measured_ms'] / modelled:.2f}" if modelled else ""
        lines.append(f"| {row['bandwidth_gbit'] or ''} | {row['compression']} | "
                     f"{row['gradient_mb']:.1f} | {row['buffers']} | {row['compress_ms']:.0f} | "
                     f"{row['measured_ms']:.0f} | "
                     f"{'' if modelled is None else f'{modelled:.0f}'} | {ratio} |")
    return "\n".join(lines)


@command("bench_allreduce")
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        floors = _floors(args.host_floor_ms)
    except ValueError as err:
        parser.error(str(err))
    setup_logging()
    dist = init_distributed(DistConfig(fusion_threshold_mb=args.fusion_mb,
                                       cycle_time_ms=args.cycle_ms))
    rows = measure(args, dist, floors)
    if dist.rank == 0:
        print(format_rows(rows))
        if args.json:
            with open(args.json, "w") as out:
                json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
