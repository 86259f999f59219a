"""``scripts/bench_model.py``: model speed and memory against the other implementations.

For each model: images/s of inference and of a full training step (forward, backward, NAG
update), hybridized with static memory; peak resident memory of each; achieved GFLOP/s from
the project's FLOP counter and its fraction of this machine's sgemm GFLOP/s. The same network
is measured in the peers named by ``--against``: the authors' own Gluon package (``resnest``),
gluoncv, and timm's PyTorch model when an interpreter with torch and timm is at hand (same
batch, size, dtype and threads; DropBlock off everywhere). Every measurement runs in a fresh
process (its peak memory is its own), the implementations interleaved, ``--rounds`` times;
the table shows medians. Our ResNet-D-50 is measured alongside, so that the split-attention
networks' FLOP rate can be read against a plain ResNet's. ``--serving`` adds our serving and
precision paths (oneDNN-fused export, onnxruntime, bfloat16 AMP inference and training) with
their logit differences.
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
from collections import defaultdict
from importlib import metadata

import mxnet as mx
import numpy as np

from ..errors import UserError
from ..models.extension import CONV3X3_OP
from ..peers import authors_twin, gluoncv_twin, randomize_batchnorm, timm_name
from ..timing import median_step_seconds
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


def build(impl, name, classes=1000, overrides=None, mode="infer"):
    """Our network, or the authors' or gluoncv's ResNeSt class with the same spec.

    ``overrides`` changes architecture fields of the zoo spec (``radix``, ``cardinality``,
    ``bottleneck_width``, ...), as ``model.overrides`` does in a config. Ours is what the
    trainer and ``verify.py`` build on this CPU for ``mode``'s dtype (the compiled
    split-attention operator and the Winograd convolutions in float32, MXNet's
    own operators in bfloat16; exports trace MXNet's own in their place).
    """
    if impl == "ours":
        from ..models import get_model
        from ..models.splat import implementations_for
        choice = implementations_for("cpu", dtype="bfloat16" if mode.endswith("bf16")
                                     else "float32")
        return get_model(name, classes=classes, **{**choice, **dict(overrides or {})})
    if impl == "authors":
        return authors_twin(name, classes, overrides)
    return gluoncv_twin(name, classes, overrides)


MODES = ("infer", "train")
PEERS = ("authors", "gluoncv", "timm")
# The plain ResNet whose FLOP rate the split-attention networks are read against.
FLOP_REFERENCE = "resnet50d"
_TIMM_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "timm_measure.py")
# Serving and precision paths of our network, measured with --serving.
SERVING_MODES = ("verify-fused", "export-fused", "onnxruntime", "infer-bf16", "train-bf16")
_SERVING_LABELS = {
    "verify-fused": ("oneDNN-fused Gluon graph (`verify.py` on CPUs)", "infer"),
    "export-fused": ("exported, oneDNN-fused (`export.py --fuse`)", "infer"),
    "onnxruntime": ("ONNX export on onnxruntime", "infer"),
    "infer-bf16": ("bfloat16 AMP inference", "infer"),
    "train-bf16": ("bfloat16 AMP training step", "train"),
}


def _seeded_network(impl, name, overrides, mode):
    """The network with seeded weights and non-trivial BatchNorm statistics (so that the
    serving paths' folding of BatchNorm is exercised when their logits are compared)."""
    mx.random.seed(0)
    return randomize_batchnorm(build(impl, name, overrides=overrides, mode=mode), seed=0,
                               magnitude=3.0)


def _inference_step(impl, name, mode, x, overrides, workdir):
    """A function running one inference batch on ``mode``'s path, and the logits on x."""
    from ..export import export_onnx, export_symbol, load_exported, onnx_session
    from ..models.fusion import fuse_for_cpu_inference
    net = _seeded_network(impl, name, overrides, mode)
    if mode == "infer":
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode == "verify-fused":
        fuse_for_cpu_inference(net, x)
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


def _training_step(impl, name, mode, x, y, overrides):
    """A function running one training step (forward, loss, backward, NAG update)."""
    from mxnet import autograd, gluon
    if mode == "train-bf16":
        from mxnet.contrib import amp
        amp.init(target_dtype="bfloat16")
    net = _seeded_network(impl, name, overrides, mode)
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
        trainer.step(x.shape[0])
        mx.nd.waitall()
    return step


def _step_for(impl, name, mode, batch, size, overrides):
    """The step function of ``mode`` on a seeded batch, and the logits (inference modes)."""
    import tempfile
    mx.random.seed(1)
    x = mx.nd.random.uniform(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % 1000)
    if mode.startswith("train"):
        return _training_step(impl, name, mode, x, y, overrides), None
    with tempfile.TemporaryDirectory() as workdir:
        return _inference_step(impl, name, mode, x, overrides, workdir)


def measure(impl, name, mode, batch, size, repeats, warmup=2, overrides=None,
            logits_file=None):
    """One measurement in this process; returns a dict (img/s, peak MB).

    Parameters
    ----------
    impl : {"ours", "authors", "gluoncv"}
    name : str
        Zoo name; ``overrides`` (dict) changes architecture fields of its spec.
    mode : str
        "infer" (forward pass, hybridized static), "train" (forward + backward + NAG update),
        or a serving/precision path of :data:`SERVING_MODES`: the network fused in place by
        oneDNN (what ``verify.py`` evaluates on CPUs), the oneDNN-fused export reloaded as a
        SymbolBlock, onnxruntime on the ONNX export, bfloat16 AMP inference or training.
    batch, size : int
        Batch size and square input size.
    repeats, warmup : int
        Timed and untimed iterations; the median of the timed ones is reported.
    logits_file : str, optional
        Inference modes save the logits of the (seeded) network on the (seeded) batch here.
    """
    step, logits = _step_for(impl, name, mode, batch, size, overrides)
    if logits_file and logits is not None:
        np.save(logits_file, logits)
    seconds = median_step_seconds(step, repeats, warmup)
    return {"img_per_s": batch / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def profile_operators(impl, name, mode, batch, size, steps=3, warmup=2):
    """Milliseconds per step of every MXNet operator of ``mode`` (MXNet's aggregate profiler).

    Run it with ``MXNET_EXEC_BULK_EXEC_INFERENCE=0`` and ``MXNET_EXEC_BULK_EXEC_TRAIN=0`` in
    the environment (see :func:`profile_in_subprocess`), or bulked segments hide operators.
    Returns ``{"ops": {operator: ms per step}, "step_ms": wall ms per step}``.
    """
    import tempfile
    step, _ = _step_for(impl, name, mode, batch, size, None)
    for _ in range(warmup):
        step()
    with tempfile.TemporaryDirectory() as tmp:
        mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                               filename=os.path.join(tmp, "profile.json"))
        mx.profiler.set_state("run")
        tic = time.perf_counter()
        for _ in range(steps):
            step()
        step_ms = (time.perf_counter() - tic) / steps * 1e3
        mx.profiler.set_state("stop")
        stats = json.loads(mx.profiler.dumps(format="json"))
    ops = {op: value["Total"] / steps for op, value in stats["Time"].get("operator", {}).items()}
    return {"ops": ops, "step_ms": step_ms}


def _last_line(command, env, what):
    """The last line ``command`` prints (every child here ends with its result); its stderr in
    a RuntimeError naming ``what`` if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def sgemm_in_subprocess(threads):
    """:func:`sgemm_gflops` with ``threads`` OpenMP threads (MXNet reads them at start)."""
    return float(_last_line([sys.executable, "-c", "from resnest_gluon.commands.bench_model "
                             "import sgemm_gflops; print(sgemm_gflops())"],
                            thread_environment(threads), "sgemm measurement"))


def thread_environment(threads):
    """This process's environment with ``threads`` OpenMP threads (MXNet and torch read it)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads))


def timm_versions(python):
    """``("timm X, torch Y", None)`` when ``python`` can measure timm, else ``(None, why)``
    (its last error line)."""
    try:
        done = subprocess.run([python, "-c", "import torch, timm; print(f'timm "
                               "{timm.__version__}, torch {torch.__version__}')"],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, str(error)
    if done.returncode == 0:
        return done.stdout.strip(), None
    lines = done.stderr.strip().splitlines()
    return None, lines[-1] if lines else f"exit {done.returncode}"


def _measure_command(impl, name, mode, batch, size, repeats, overrides, logits_file,
                     torch_python, threads):
    if impl == "timm":
        return [torch_python or sys.executable, _TIMM_SCRIPT, timm_name(name, overrides), mode,
                str(batch), str(size), str(repeats), str(threads)]
    command = [sys.executable, "-m", "resnest_gluon.commands.bench_model", "--measure", impl,
               mode, name, "--batch-size", str(batch), "--size", str(size), "--repeats",
               str(repeats), "--overrides", json.dumps(overrides or {})]
    return command + (["--logits", logits_file] if logits_file else [])


def measure_in_subprocess(impl, name, mode, batch, size, repeats, overrides=None,
                          logits_file=None, torch_python=None, threads=None):
    """:func:`measure` in a fresh Python process, so that its peak memory is its own.

    ``impl="timm"`` runs ``timm_measure.py`` with ``torch_python`` (default: this
    interpreter); ``threads`` (default: all cores) sets OMP_NUM_THREADS for either.
    """
    threads = threads or os.cpu_count()
    command = _measure_command(impl, name, mode, batch, size, repeats, overrides, logits_file,
                               torch_python, threads)
    return json.loads(_last_line(command, thread_environment(threads),
                                 f"benchmark of {name} ({impl}, {mode})"))


# Forward passes' worth of FLOPs in a step: a training step costs about 3 (forward, and the
# backward pass's two products per layer).
FORWARDS_PER_STEP = {"infer": 1, "train": 3}
# MXNet's names of the convolutions (the fused graph's and the Winograd operator's included),
# forward and backward.
CONVOLUTION_OPS = ("Convolution", "_backward_Convolution", "_sg_mkldnn_conv", CONV3X3_OP,
                   "_backward_" + CONV3X3_OP)


def profile_in_subprocess(impl, name, mode, batch, size, threads=None):
    """:func:`profile_operators` in a fresh process with MXNet's operator bulking off."""
    env = dict(thread_environment(threads or os.cpu_count()),
               MXNET_EXEC_BULK_EXEC_INFERENCE="0", MXNET_EXEC_BULK_EXEC_TRAIN="0")
    command = [sys.executable, "-m", "resnest_gluon.commands.bench_model", "--measure", impl,
               mode, name, "--batch-size", str(batch), "--size", str(size), "--profile"]
    return json.loads(_last_line(command, env, f"profile of {name} ({impl}, {mode})"))


def _convolution_ceiling(profile, batch, flops, mode):
    """Convolution ms per step, their GFLOP/s, and the img/s with every other op free."""
    conv_ms = sum(ms for op, ms in profile["ops"].items() if op in CONVOLUTION_OPS)
    work = flops * batch * FORWARDS_PER_STEP[mode]
    return conv_ms, work / conv_ms / 1e6, batch / conv_ms * 1e3


def _possessive(word):
    return word + ("'" if word.endswith("s") else "'s")


def format_profile(name, profiles, batch, flops, top=24):
    """Markdown: the ``top`` operators (ms per step) of every profiled (impl, mode), and what
    the convolutions alone would allow against each peer's measured step."""
    columns = sorted(profiles, key=lambda key: (MODES.index(key[1]), key[0] != "ours"))
    ops = sorted({op for result in profiles.values() for op in result["ops"]},
                 key=lambda op: -max(profiles[key]["ops"].get(op, 0) for key in columns))
    lines = [f"| {name} operator | " + " | ".join(f"{impl} {mode} ms" for impl, mode in columns)
             + " |", "|---" * (len(columns) + 1) + "|"]
    for op in ops[:top]:
        cells = [f"{profiles[key]['ops'][op]:.1f}" if op in profiles[key]["ops"] else ""
                 for key in columns]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| all operators | " + " | ".join(
        f"{sum(profiles[key]['ops'].values()):.0f}" for key in columns) + " |")
    lines.append("| step (wall) | " + " | ".join(
        f"{profiles[key]['step_ms']:.0f}" for key in columns) + " |")
    lines.append("")
    for mode in MODES:
        if ("ours", mode) not in profiles:
            continue
        conv_ms, rate, ceiling = _convolution_ceiling(profiles["ours", mode], batch, flops, mode)
        share = 100 * conv_ms / profiles["ours", mode]["step_ms"]
        peers = "; ".join(f"{ceiling / (batch / profiles[impl, m]['step_ms'] * 1e3):.2f}x "
                          f"{_possessive(impl)} profiled step" for impl, m in columns
                          if m == mode and impl != "ours")
        lines.append(f"- {mode}: our convolutions take {conv_ms:.0f} ms ({share:.0f}% of the "
                     f"step) at {rate:.0f} GFLOP/s; with every other operator free, ours would "
                     f"run at {ceiling:.1f} img/s" + (f" = {peers}" if peers else ""))
    return "\n".join(lines)


def measurement_plan(names, against, serving=False, flop_reference=FLOP_REFERENCE):
    """The (model, impl, mode) measurements of one round, in the order they run.

    Each model is measured by us and by every peer in ``against`` (timm only where it has the
    model); ``flop_reference`` (ours only) is added once when it is not among ``names``.
    """
    plan = []
    for name in names:
        impls = ["ours"] + [peer for peer in against if peer != "timm" or timm_name(name)]
        plan += [(name, impl, mode) for impl in impls for mode in MODES]
        plan += [(name, "ours", mode) for mode in SERVING_MODES] if serving else []
    if flop_reference and flop_reference not in names:
        plan += [(flop_reference, "ours", mode) for mode in MODES]
    return plan


def _versions(timm_version):
    """Versions of the peers, for the table's labels (timm's as :func:`timm_versions` read
    it)."""
    versions = {"timm": timm_version or "?"}
    for impl, package in (("authors", "resnest"), ("gluoncv", "gluoncv")):
        try:
            versions[impl] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[impl] = "?"
    return versions


def _summarize(name, samples, flops, peak, logits):
    """One row: medians over the rounds of every (impl, mode) measured for ``name``."""
    row = {"model": name, "sgemm": peak, "gflops_per_image": flops / 1e9}
    for (model, impl, mode), results in samples.items():
        if model == name:
            row[f"{impl}_{mode}"] = statistics.median(r["img_per_s"] for r in results)
            row[f"{impl}_{mode}_mb"] = statistics.median(r["peak_mb"] for r in results)
    reference = logits.get((name, "infer"))
    if reference is not None:
        row["max_abs_logit"] = float(np.abs(reference).max())
        for mode in SERVING_MODES:
            if (name, mode) in logits:
                row[f"ours_{mode}_diff"] = float(np.abs(logits[name, mode] - reference).max())
    for impl in ("ours",) + PEERS:
        for mode, forwards in FORWARDS_PER_STEP.items():
            if f"{impl}_{mode}" in row:
                row[f"{impl}_{mode}_gflops"] = row[f"{impl}_{mode}"] * forwards * flops / 1e9
    return row


def run(names, against=("authors", "gluoncv"), batch=32, size=224, repeats=5, rounds=3,
        serving=False, flop_reference=FLOP_REFERENCE, torch_python=None, threads=None):
    """Rows of measurements (medians over ``rounds``), one per model, flop_reference last.

    FLOP rates use the project's multiply-add counter x 2. With ``serving``, each row also
    has our network's :data:`SERVING_MODES` and, for the inference paths, the max abs
    difference of their logits from the float32 network's (first round).
    """
    import tempfile

    from ..models import count_flops, get_model
    threads = threads or os.cpu_count()
    peak = sgemm_in_subprocess(threads)
    log.info("sgemm: %.0f GFLOP/s; %d threads", peak, threads)
    plan = measurement_plan(names, against, serving, flop_reference)
    samples, logits = defaultdict(list), {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for name, impl, mode in plan:
                logits_file = None
                if impl == "ours" and round_index == 0 and name in names:
                    logits_file = os.path.join(tmp, f"{name}-{mode}.npy")
                result = measure_in_subprocess(impl, name, mode, batch, size, repeats,
                                               logits_file=logits_file,
                                               torch_python=torch_python, threads=threads)
                samples[name, impl, mode].append(result)
                if logits_file and os.path.exists(logits_file):
                    logits[name, mode] = np.load(logits_file)
                log.info("round %d/%d %s %s %s: %.2f img/s, peak %.0f MB", round_index + 1,
                         rounds, name, impl, mode, result["img_per_s"], result["peak_mb"])
    models = list(dict.fromkeys(name for name, _, _ in plan))    # names, then the reference
    return [_summarize(name, samples, 2 * count_flops(get_model(name), size), peak, logits)
            for name in models]


_IMPL_LABELS = {"ours": "ours", "authors": "authors' Gluon (resnest {})",
                "gluoncv": "gluoncv {}", "timm": "timm {} ({})"}


def _impl_label(impl, name, versions):
    if impl == "timm":
        return _IMPL_LABELS[impl].format(timm_name(name), versions.get("timm", "?"))
    return _IMPL_LABELS[impl].format(versions.get(impl, "?"))


def _speed_lines(rows, versions):
    lines = ["| model | impl | infer img/s | train img/s | infer peak MB | train peak MB | "
             "infer GFLOP/s (% sgemm) | train GFLOP/s (% sgemm) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        impls = [impl for impl in ("ours",) + PEERS if f"{impl}_infer" in r]
        for impl in impls:
            cells = [f"{r[f'{impl}_{m}']:.2f}" for m in MODES]
            cells += [f"{r[f'{impl}_{m}_mb']:.0f}" for m in MODES]
            cells += [f"{r[f'{impl}_{m}_gflops']:.0f} "
                      f"({100 * r[f'{impl}_{m}_gflops'] / r['sgemm']:.0f}%)" for m in MODES]
            lines.append(f"| {r['model']} | {_impl_label(impl, r['model'], versions)} | "
                         + " | ".join(cells) + " |")
        for peer in impls[1:]:
            cells = [f"**{r[f'ours_{m}'] / r[f'{peer}_{m}']:.2f}x**" for m in MODES]
            cells += [f"{r[f'ours_{m}_mb'] / r[f'{peer}_{m}_mb']:.2f}x" for m in MODES]
            lines.append(f"| {r['model']} | ours / {peer} | " + " | ".join(cells) + " | | |")
    return lines


def _flop_rate_lines(rows, flop_reference):
    reference = next((r for r in rows if r["model"] == flop_reference), None)
    if reference is None:
        return []
    lines = []
    for r in rows:
        if r is not reference:
            rates = [100 * r[f"ours_{m}_gflops"] / reference[f"ours_{m}_gflops"] for m in MODES]
            lines.append(f"- {r['model']}'s FLOP rate / {flop_reference}'s (ours): inference "
                         f"{rates[0]:.0f}%, training {rates[1]:.0f}%")
    return [""] + lines if lines else []


def machine_name():
    """The CPU's model name (from /proc/cpuinfo) and core count."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _serving_lines(rows):
    serving = [r for r in rows if "ours_train-bf16" in r]
    if not serving:
        return []
    lines = ["", "| model | path | img/s | vs hybridized float32 | peak MB | "
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
    return lines


def format_table(rows, batch, size, versions=None, rounds=1, repeats=1, threads=None,
                 flop_reference=FLOP_REFERENCE):
    """The Markdown tables: every implementation and our ratios to each, the FLOP rates
    against ``flop_reference``, then (if measured) our serving paths."""
    lines = _speed_lines(rows, versions or {})
    sgemm = rows[0]["sgemm"] if rows else 0
    lines.append(f"\n({machine_name()}; {threads or os.cpu_count()} threads; batch {batch}, "
                 f"{size}x{size}, float32, hybridized static (timm: eager), DropBlock off; "
                 f"sgemm {sgemm:.0f} GFLOP/s; median of {rounds} fresh process(es) per cell, "
                 f"each the median of {repeats} timed step(s); memory is each process's peak "
                 f"RSS)")
    return "\n".join(lines + _flop_rate_lines(rows, flop_reference) + _serving_lines(rows))


def _parse_against(text):
    peers = [peer.strip() for peer in text.split(",") if peer.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise UserError(f"--against: unknown implementation(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(PEERS)}")
    return peers


def _usable_peers(peers, torch_python):
    """``peers`` without timm when no interpreter with torch and timm is at hand (logged), and
    timm's version where it is."""
    if "timm" not in peers:
        return peers, None
    version, reason = timm_versions(torch_python or sys.executable)
    if reason:
        log.warning("timm left out: %s cannot import torch and timm (%s); give "
                    "--torch-python an interpreter that can", torch_python or sys.executable,
                    reason)
        return [peer for peer in peers if peer != "timm"], None
    return peers, version

def _profiles(names, peers, batch, size, threads, top):
    from ..models import count_flops, get_model
    tables = []
    for name in names:
        profiles = {(impl, mode): profile_in_subprocess(impl, name, mode, batch, size, threads)
                    for impl in ["ours"] + list(peers) for mode in MODES}
        flops = 2 * count_flops(get_model(name), size)
        tables.append(format_profile(name, profiles, batch, flops, top))
    tables.append(f"\n({machine_name()}; batch {batch}, {size}x{size}, float32, hybridized "
                  f"static; MXNet profiler, operator bulking off; 3 profiled steps)")
    return "\n\n".join(tables)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


@command("bench-model")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("models", nargs="*", default=["resnest50"], help="zoo names")
    parser.add_argument("--against", default="authors,gluoncv,timm",
                        help="comma-separated peers measured beside ours: authors (the "
                             "authors' Gluon package, resnest), gluoncv, timm (PyTorch; left "
                             "out with a warning unless --torch-python, or this interpreter, "
                             "imports torch and timm). Default: %(default)s")
    parser.add_argument("--torch-python", default=None, metavar="PYTHON",
                        help="interpreter with torch and timm for the timm measurements "
                             "(default: this one)")
    parser.add_argument("--batch-size", type=_positive, default=32)
    parser.add_argument("--size", type=_positive, default=224)
    parser.add_argument("--repeats", type=_positive, default=5,
                        help="timed iterations per measurement (median; 2 warm-up excluded)")
    parser.add_argument("--rounds", type=_positive, default=3,
                        help="fresh processes per cell, the implementations interleaved; the "
                             "table shows the median (default: %(default)s)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="OpenMP threads of every implementation (default: all cores)")
    parser.add_argument("--flop-reference", default=FLOP_REFERENCE, metavar="MODEL",
                        help="plain network measured alongside (ours) to read the FLOP rates "
                             "against; '' for none (default: %(default)s)")
    parser.add_argument("--serving", action="store_true",
                        help="also measure our serving and precision paths: the oneDNN-fused "
                             "export, onnxruntime on the ONNX export, bfloat16 AMP inference "
                             "and training, with their logit differences from float32")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: MXNet's per-operator profile (ms per step, "
                             "bulking off) of ours and the MXNet peers, and the speed our "
                             "convolutions alone would allow")
    parser.add_argument("--profile-top", type=_positive, default=24, metavar="N",
                        help="with --profile: the N costliest operators per table (24)")
    parser.add_argument("--measure", nargs=2, metavar=("IMPL", "MODE"),
                        help=argparse.SUPPRESS)   # internal: one measurement, JSON out
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--logits", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure and args.profile:
        impl, mode = args.measure
        print(json.dumps(profile_operators(impl, args.models[0], mode, args.batch_size,
                                           args.size)))
        return 0
    if args.measure:
        impl, mode = args.measure
        print(json.dumps(measure(impl, args.models[0], mode, args.batch_size, args.size,
                                 args.repeats, overrides=json.loads(args.overrides),
                                 logits_file=args.logits)))
        return 0
    setup_logging()
    from ..models import get_spec
    for name in args.models + ([args.flop_reference] if args.flop_reference else []):
        get_spec(name)                      # an unknown name fails here, in one line
    peers = _parse_against(args.against)
    if args.profile:
        print(_profiles(args.models, [p for p in peers if p != "timm"], args.batch_size,
                        args.size, args.threads, args.profile_top))
        return 0
    peers, timm_version = _usable_peers(peers, args.torch_python)
    rows = run(args.models, peers, args.batch_size, args.size, args.repeats, args.rounds,
               args.serving, args.flop_reference, args.torch_python, args.threads)
    print(format_table(rows, args.batch_size, args.size, _versions(timm_version),
                       args.rounds, args.repeats, args.threads, args.flop_reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
