"""``scripts/bench_model.py``: model speed and memory against gluoncv's implementation.

For each model: images/s of inference and of a full training step (forward, backward, NAG
update), hybridized with static memory; peak resident memory of the training process; achieved
GFLOP/s from the project's FLOP counter and its fraction of this machine's sgemm GFLOP/s, all
measured in the same run. ``--serving`` adds our serving and precision paths (oneDNN-fused
export, onnxruntime, bfloat16 AMP inference and training) with their logit differences.
gluoncv's ResNeSt built with the same spec is measured the same way (same batch, size, dtype,
threads), each measurement in a fresh process so that peak memory is its own; warm-up
excluded, median of the repetitions.
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

from ..peers import gluoncv_twin, randomize_batchnorm
from . import setup_logging
from .cli import command

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
    if impl == "ours":
        from ..models import get_model
        return get_model(name, classes=classes, **dict(overrides or {}))
    return gluoncv_twin(name, classes, overrides)


MODES = ("infer", "train")
# Serving and precision paths of our network, measured with --serving.
SERVING_MODES = ("export-fused", "onnxruntime", "infer-bf16", "train-bf16")


def _seeded_network(impl, name, overrides):
    """The network with seeded weights and non-trivial BatchNorm statistics (so that the
    serving paths' folding of BatchNorm is exercised when their logits are compared)."""
    mx.random.seed(0)
    return randomize_batchnorm(build(impl, name, overrides=overrides), seed=0, magnitude=3.0)


def _time(step, repeats, warmup):
    times = []
    for i in range(warmup + repeats):
        tic = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)


def _inference_step(impl, name, mode, x, overrides, workdir):
    """A function running one inference batch on ``mode``'s path, and the logits on x."""
    from ..export import export_onnx, export_symbol, load_exported, onnx_session
    net = _seeded_network(impl, name, overrides)
    if mode == "infer":
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode == "infer-bf16":
        from ..models.precision import to_precision
        net = to_precision(net, "bfloat16", input_shape=x.shape)
    elif mode == "export-fused":
        result = export_symbol(net, os.path.join(workdir, "fused"), x.shape[2], x.shape[0],
                               sample=x, fuse=True)
        net = load_exported(result.symbol_file, result.params_file)
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode == "onnxruntime":
        result = export_symbol(net, os.path.join(workdir, "plain"), x.shape[2], x.shape[0],
                               sample=x)
        onnx_file = os.path.join(workdir, "model.onnx")
        export_onnx(result.symbol_file, result.params_file, x.shape, onnx_file, x)
        session = onnx_session(onnx_file)
        feed = {session.get_inputs()[0].name: x.asnumpy()}
        return (lambda: session.run(None, feed)), session.run(None, feed)[0]
    return (lambda: net(x).wait_to_read()), net(x).asnumpy()


def measure(impl, name, mode, batch, size, repeats, warmup=2, overrides=None,
            logits_file=None):
    """One measurement in this process; returns a dict (img/s, peak MB).

    Parameters
    ----------
    impl : {"ours", "gluoncv"}
    name : str
        Zoo name; ``overrides`` (dict) changes architecture fields of its spec.
    mode : str
        "infer" (forward pass, hybridized static), "train" (forward + backward + NAG update),
        or a serving/precision path of :data:`SERVING_MODES`: the oneDNN-fused export
        reloaded as a SymbolBlock, onnxruntime on the ONNX export, bfloat16 AMP inference or
        training.
    batch, size : int
        Batch size and square input size.
    repeats, warmup : int
        Timed and untimed iterations; the median of the timed ones is reported.
    logits_file : str, optional
        Inference modes save the logits of the (seeded) network on the (seeded) batch here.
    """
    import tempfile

    from mxnet import autograd, gluon
    mx.random.seed(1)
    x = mx.nd.random.uniform(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % 1000)
    if mode.startswith("train"):
        if mode == "train-bf16":
            from mxnet.contrib import amp
            amp.init(target_dtype="bfloat16")
        net = _seeded_network(impl, name, overrides)
        # static memory planning, like the trainer; AMP graphs are hybridized plainly there
        net.hybridize(**({} if mode == "train-bf16" else
                         {"static_alloc": True, "static_shape": True}))
        trainer = gluon.Trainer(net.collect_params(), "nag",
                                {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4})
        if mode == "train-bf16":
            amp.init_trainer(trainer)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def step():
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(batch)
            mx.nd.waitall()
    else:
        with tempfile.TemporaryDirectory() as workdir:
            step, logits = _inference_step(impl, name, mode, x, overrides, workdir)
        if logits_file:
            np.save(logits_file, logits)
    seconds = _time(step, repeats, warmup)
    return {"img_per_s": batch / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def measure_in_subprocess(impl, name, mode, batch, size, repeats, overrides=None,
                          logits_file=None):
    """:func:`measure` in a fresh Python process, so that its peak memory is its own."""
    command = [sys.executable, "-m", "resnest_gluon.commands.bench_model", "--measure", impl,
               mode, name, "--batch-size", str(batch), "--size", str(size), "--repeats",
               str(repeats), "--overrides", json.dumps(overrides or {})]
    if logits_file:
        command += ["--logits", logits_file]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {name} ({impl}, {mode}) failed:\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(names, batch=32, size=224, repeats=5, serving=False):
    """Rows of measurements; FLOP rates use the project's multiply-add counter x 2.

    With ``serving``, each row also has our network's :data:`SERVING_MODES` and, for the
    inference paths, the max abs difference of their logits from the float32 network's.
    """
    import tempfile

    from ..models import count_flops, get_model
    peak = sgemm_gflops()
    log.info("sgemm: %.0f GFLOP/s", peak)
    rows = []
    for name in names:
        flops = 2 * count_flops(get_model(name), size)        # FLOPs per image (2 per MAC)
        row = {"model": name, "sgemm": peak}
        with tempfile.TemporaryDirectory() as tmp:
            runs = [(impl, mode) for impl in ("ours", "gluoncv") for mode in MODES]
            runs += [("ours", mode) for mode in SERVING_MODES] if serving else []
            for impl, mode in runs:
                logits = os.path.join(tmp, f"{impl}-{mode}.npy")
                result = measure_in_subprocess(impl, name, mode, batch, size, repeats,
                                               logits_file=logits)
                row[f"{impl}_{mode}"] = result["img_per_s"]
                row[f"{impl}_{mode}_mb"] = result["peak_mb"]
                if impl == "ours" and os.path.exists(logits):
                    row[f"ours_{mode}_logits"] = np.load(logits)
                log.info("%s %s %s: %.2f img/s, peak %.0f MB", name, impl, mode,
                         result["img_per_s"], result["peak_mb"])
        reference = row.pop("ours_infer_logits")
        row["max_abs_logit"] = float(np.abs(reference).max())
        for mode in SERVING_MODES:
            logits = row.pop(f"ours_{mode}_logits", None)
            if logits is not None:
                row[f"ours_{mode}_diff"] = float(np.abs(logits - reference).max())
        # training costs about 3x the forward pass
        row["ours_infer_gflops"] = row["ours_infer"] * flops / 1e9
        row["ours_train_gflops"] = row["ours_train"] * 3 * flops / 1e9
        rows.append(row)
    return rows


_SERVING_LABELS = {
    "export-fused": ("exported, oneDNN-fused (`export.py --fuse`)", "infer"),
    "onnxruntime": ("ONNX export on onnxruntime", "infer"),
    "infer-bf16": ("bfloat16 AMP inference", "infer"),
    "train-bf16": ("bfloat16 AMP training step", "train"),
}


def format_table(rows, batch, size):
    """The Markdown tables: ours vs gluoncv, then (if measured) our serving paths."""
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
    serving = [r for r in rows if "ours_train-bf16" in r]
    if serving:
        lines += ["", "| model | path | img/s | vs hybridized float32 | peak MB | "
                  "max abs logit diff vs float32 |", "|---|---|---|---|---|---|"]
        for r in serving:
            lines.append(f"| {r['model']} | hybridized float32 (reference) | "
                         f"{r['ours_infer']:.2f} | 1.00x | {r['ours_infer_mb']:.0f} | "
                         f"0 (max abs logit {r['max_abs_logit']:.2f}) |")
            for mode in SERVING_MODES:
                label, reference = _SERVING_LABELS[mode]
                diff = r.get(f"ours_{mode}_diff")
                lines.append(f"| {r['model']} | {label} | {r['ours_' + mode]:.2f} | "
                             f"{r['ours_' + mode] / r['ours_' + reference]:.2f}x "
                             f"{'' if reference == 'infer' else '(vs float32 training)'} | "
                             f"{r['ours_' + mode + '_mb']:.0f} | "
                             f"{'' if diff is None else f'{diff:.2g}'} |")
    return "\n".join(lines)


@command("bench-model")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("models", nargs="*", default=["resnest50"], help="zoo names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed iterations per measurement (median; 2 warm-up excluded)")
    parser.add_argument("--serving", action="store_true",
                        help="also measure our serving and precision paths: the oneDNN-fused "
                             "export, onnxruntime on the ONNX export, bfloat16 AMP inference "
                             "and training, with their logit differences from float32")
    parser.add_argument("--measure", nargs=2, metavar=("IMPL", "MODE"),
                        help=argparse.SUPPRESS)   # internal: one measurement, JSON out
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--logits", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        impl, mode = args.measure
        print(json.dumps(measure(impl, args.models[0], mode, args.batch_size, args.size,
                                 args.repeats, overrides=json.loads(args.overrides),
                                 logits_file=args.logits)))
        return 0
    setup_logging()
    rows = run(args.models, args.batch_size, args.size, args.repeats, args.serving)
    print(format_table(rows, args.batch_size, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
