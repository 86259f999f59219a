"""``scripts/bench_model.py``: model speed and memory against gluoncv's implementation.

For each model: images/s of inference and of a full training step (forward, backward, NAG
update), hybridized with static memory; peak resident memory of the training process; achieved
GFLOP/s from the project's FLOP counter and its fraction of this machine's sgemm GFLOP/s, all
measured in the same run. gluoncv's ResNeSt built with the same spec is measured the same way
(same batch, size, dtype, threads), each measurement in a fresh process so that peak memory
is its own; warm-up excluded, median of the repetitions.
"""
import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

import mxnet as mx
import numpy as np

from . import setup_logging

log = logging.getLogger("bench_model")


def sgemm_gflops(n=2048, repeats=5):
    """GFLOP/s (2 per multiply-add) of an n x n float32 matrix product, best of ``repeats``.

    Through ``FullyConnected``, i.e. oneDNN's GEMM, the kernels the convolutions use
    (``mx.nd.dot`` goes to OpenBLAS, 5x slower here).
    """
    a = mx.nd.random.uniform(shape=(n, n))
    b = mx.nd.random.uniform(shape=(n, n))

    def product():
        return mx.nd.FullyConnected(a, b, num_hidden=n, no_bias=True)

    product().wait_to_read()
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        product().wait_to_read()
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best / 1e9


def build(impl, name, classes=1000, overrides=None):
    """Our network, or gluoncv's ResNeSt class with the same spec.

    ``overrides`` changes architecture fields of the zoo spec (``radix``, ``cardinality``,
    ``bottleneck_width``, ...), as ``model.overrides`` does in a config.
    """
    import dataclasses
    from ..models import get_model, get_spec
    overrides = dict(overrides or {})
    if impl == "ours":
        return get_model(name, classes=classes, **overrides)
    from gluoncv.model_zoo.resnest import Bottleneck, ResNeSt
    s = dataclasses.replace(get_spec(name), **overrides)
    return ResNeSt(Bottleneck, list(s.layers), radix=max(s.radix, 1), cardinality=s.cardinality,
                   bottleneck_width=s.bottleneck_width, deep_stem=s.deep_stem,
                   stem_width=s.stem_width, avg_down=s.avg_down, avd=s.avd,
                   avd_first=s.avd_first, use_splat=s.radix > 0, final_drop=s.final_drop,
                   classes=classes, name_prefix="resnest_")


def measure(impl, name, mode, batch, size, repeats, warmup=2, overrides=None):
    """One measurement in this process; returns a dict (img/s, peak MB).

    Parameters
    ----------
    impl : {"ours", "gluoncv"}
    name : str
        Zoo name; ``overrides`` (dict) changes architecture fields of its spec.
    mode : {"infer", "train"}
        Forward pass only, or forward + backward + NAG update.
    batch, size : int
        Batch size and square input size.
    repeats, warmup : int
        Timed and untimed iterations; the median of the timed ones is reported.
    """
    from mxnet import autograd, gluon
    net = build(impl, name, overrides=overrides)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % 1000)
    times = []
    if mode == "infer":
        for i in range(warmup + repeats):
            tic = time.perf_counter()
            net(x).wait_to_read()
            if i >= warmup:
                times.append(time.perf_counter() - tic)
    else:
        trainer = gluon.Trainer(net.collect_params(), "nag",
                                {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4})
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        for i in range(warmup + repeats):
            tic = time.perf_counter()
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(batch)
            mx.nd.waitall()
            if i >= warmup:
                times.append(time.perf_counter() - tic)
    seconds = statistics.median(times)
    return {"img_per_s": batch / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def measure_in_subprocess(impl, name, mode, batch, size, repeats, overrides=None):
    """:func:`measure` in a fresh Python process, so that its peak memory is its own."""
    command = [sys.executable, "-m", "resnest_gluon.commands.bench_model", "--measure", impl,
               mode, name, "--batch-size", str(batch), "--size", str(size), "--repeats",
               str(repeats), "--overrides", json.dumps(overrides or {})]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {name} ({impl}, {mode}) failed:\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(names, batch=32, size=224, repeats=5):
    """Rows of measurements; FLOP rates use the project's multiply-add counter x 2."""
    from ..models import count_flops, get_model
    peak = sgemm_gflops()
    log.info("sgemm: %.0f GFLOP/s", peak)
    rows = []
    for name in names:
        flops = 2 * count_flops(get_model(name), size)        # FLOPs per image (2 per MAC)
        row = {"model": name, "sgemm": peak}
        for impl in ("ours", "gluoncv"):
            for mode in ("infer", "train"):
                result = measure_in_subprocess(impl, name, mode, batch, size, repeats)
                row[f"{impl}_{mode}"] = result["img_per_s"]
                row[f"{impl}_{mode}_mb"] = result["peak_mb"]
                log.info("%s %s %s: %.2f img/s, peak %.0f MB", name, impl, mode,
                         result["img_per_s"], result["peak_mb"])
        # training costs about 3x the forward pass
        row["ours_infer_gflops"] = row["ours_infer"] * flops / 1e9
        row["ours_train_gflops"] = row["ours_train"] * 3 * flops / 1e9
        rows.append(row)
    return rows


def format_table(rows, batch, size):
    lines = ["| model | impl | infer img/s | train img/s | train peak MB | infer GFLOP/s "
             "(% sgemm) | train GFLOP/s (% sgemm) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | ours | {r['ours_infer']:.2f} | {r['ours_train']:.2f} | "
                     f"{r['ours_train_mb']:.0f} | {r['ours_infer_gflops']:.0f} "
                     f"({100 * r['ours_infer_gflops'] / r['sgemm']:.0f}%) | "
                     f"{r['ours_train_gflops']:.0f} "
                     f"({100 * r['ours_train_gflops'] / r['sgemm']:.0f}%) |")
        lines.append(f"| {r['model']} | gluoncv | {r['gluoncv_infer']:.2f} | "
                     f"{r['gluoncv_train']:.2f} | {r['gluoncv_train_mb']:.0f} | | |")
        lines.append(f"| {r['model']} | ours / gluoncv | "
                     f"{r['ours_infer'] / r['gluoncv_infer']:.2f}x | "
                     f"{r['ours_train'] / r['gluoncv_train']:.2f}x | "
                     f"{r['ours_train_mb'] / r['gluoncv_train_mb']:.2f}x | | |")
    sgemm = rows[0]["sgemm"] if rows else 0
    lines.append(f"\n(batch {batch}, {size}x{size}, float32, hybridized static; sgemm "
                 f"{sgemm:.0f} GFLOP/s; {os.cpu_count()} cores; median of the repeats)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("models", nargs="*", default=["resnest50"], help="zoo names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", nargs=2, metavar=("IMPL", "MODE"),
                        help=argparse.SUPPRESS)   # internal: one measurement, JSON out
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        impl, mode = args.measure
        print(json.dumps(measure(impl, args.models[0], mode, args.batch_size, args.size,
                                 args.repeats, overrides=json.loads(args.overrides))))
        return 0
    setup_logging()
    rows = run(args.models, args.batch_size, args.size, args.repeats)
    print(format_table(rows, args.batch_size, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
