"""``scripts/gpu_check.py``: the prepared check of a GPU machine, one command, one table.

On a machine with GPUs it packs synthetic RecordIO shards, then trains a few hundred steps of
ResNeSt-50 under ``horovodrun -np <GPUs>`` for each precision (float32, float16 AMP) and each
split-attention product (``batch_dot``, ``broadcast_mul``), and reports images/s, GPU memory,
the first loss and the evaluation count of each. It exits non-zero when a run fails, a loss
is not finite, an evaluation misses images, or the two products disagree on the first loss
(they compute the same numbers from the same initial weights).

``--cpu-smoke`` runs the same plumbing on a CPU in a minute (ResNeSt-14 at 32 px, float32
and bfloat16, a few steps): what ``make test`` checks, since no GPU is lent to it.
"""
import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from ..training.metrics import read_metrics
from . import setup_logging
from .cli import command, positive_int

log = logging.getLogger("gpu_check")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRODUCTS = ("batch_dot", "broadcast_mul")


def make_shards(folder: str, train: int, val: int, classes: int, size: int, seed: int = 0):
    """Random-noise JPEGs (``size`` px) in shards ``folder/train`` and ``folder/val``."""
    import io

    from PIL import Image

    from ..data.recordio import RecordWriter, pack_record, shard_name
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    prefixes = {}
    for name, count in (("train", train), ("val", val)):
        prefix = os.path.join(folder, name)
        writer = RecordWriter(shard_name(prefix, 0, 1))
        for n in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
            writer.write(pack_record(n % classes, buffer.getvalue(), record_id=n))
        writer.commit()
        prefixes[name] = prefix
    return prefixes


def run_case(case: dict, data: dict, settings: argparse.Namespace, folder: str) -> dict:
    """Train one (precision, product) case in its own work directory; its summary row."""
    workdir = os.path.join(folder, f"{case['dtype']}-{case['product']}")
    shutil.rmtree(workdir, ignore_errors=True)
    overrides = [f"data.train={data['train']}", f"data.val={data['val']}",
                 f"model.name={settings.model}", f"data.num_classes={settings.classes}",
                 f"data.input_size={settings.size}", f"data.eval_size={settings.size}",
                 "data.crop_ratio=1.0", f"data.workers={settings.loader_workers}",
                 f"train.batch_size={settings.batch_size}", f"train.max_steps={settings.steps}",
                 "train.epochs=1000", f"train.log_every={settings.log_every}",
                 "train.eval_every=1", f"train.dtype={case['dtype']}",
                 f"model.attention_product={case['product']}", "optim.warmup_epochs=0",
                 "model.dropblock_prob=0.0"]
    train = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--workdir", workdir,
             *overrides]
    if settings.np > 1:
        train = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np",
                 str(settings.np), "-H", f"localhost:{settings.np}", *train]
    started = time.time()
    done = subprocess.run(train, capture_output=True, text=True, cwd=ROOT)
    row = dict(case, seconds=time.time() - started, error=None)
    if done.returncode != 0:
        row["error"] = f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or
                                                      ["(no output)"])[-1]
        return row
    # the final evaluation happens at max_steps only at an epoch's end: evaluate here
    verify = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "verify.py"),
                             "--config", os.path.join(workdir, "config.yaml"), "--params",
                             _newest_params(workdir), "--rec-val", data["val"], "--json",
                             "--batch-size", str(settings.batch_size)],
                            capture_output=True, text=True, cwd=ROOT)
    row.update(_summarise(os.path.join(workdir, "metrics.jsonl"), settings))
    if verify.returncode != 0:
        row["error"] = "verify failed: " + verify.stderr.strip().splitlines()[-1]
    else:
        row["eval_images"] = json.loads(verify.stdout.strip().splitlines()[-1])["images"]
    return row


def _newest_params(workdir: str) -> str:
    folder = os.path.join(workdir, "checkpoints")
    newest = sorted(name for name in os.listdir(folder) if name.startswith("step-"))[-1]
    return os.path.join(folder, newest, "model.params")


def _summarise(metrics_path: str, settings) -> dict:
    steps = [r for r in read_metrics(metrics_path) if r["kind"] == "step"]
    timed = steps[len(steps) // 4:] or steps     # the first quarter warms up
    return {"first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
            "img_per_s": statistics.median(r["img_per_s"] for r in timed),
            "gpu_memory_mb": max((r.get("gpu_memory_mb") or 0) for r in steps) or None,
            "host_memory_mb": max(r["peak_memory_mb"] for r in steps)}


# How far the two products' first losses may be apart (relative): rounding only.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}


def problems(rows, val_records: int):
    """What is wrong in the rows (empty when the machine passes)."""
    found = [f"{r['dtype']}/{r['product']}: {r['error']}" for r in rows if r["error"]]
    for r in rows:
        if r["error"]:
            continue
        if not (math.isfinite(r["first_loss"]) and math.isfinite(r["last_loss"])):
            found.append(f"{r['dtype']}/{r['product']}: loss not finite")
        if r.get("eval_images") != val_records:
            found.append(f"{r['dtype']}/{r['product']}: evaluated {r.get('eval_images')} of "
                         f"{val_records} images")
    by_dtype = {}
    for r in rows:
        if not r["error"]:
            by_dtype.setdefault(r["dtype"], []).append(r)
    for dtype, pair in by_dtype.items():
        if len(pair) == 2:
            a, b = (p["first_loss"] for p in pair)
            if abs(a - b) > TOLERANCE[dtype] * max(abs(a), 1.0):
                found.append(f"{dtype}: the products disagree on the first loss ({a:.6f} vs "
                             f"{b:.6f})")
    return found


def table(rows) -> str:
    lines = ["| precision | split attention | img/s | GPU memory MB | first loss | last loss "
             "| eval images |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['dtype']} | {r['product']} | failed: {r['error']} | | | | |")
            continue
        memory = f"{r['gpu_memory_mb']:.0f}" if r["gpu_memory_mb"] else "-"
        lines.append(f"| {r['dtype']} | {r['product']} | {r['img_per_s']:.1f} | {memory} | "
                     f"{r['first_loss']:.4f} | {r['last_loss']:.4f} | {r.get('eval_images')} |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0]
                                     .split(": ", 1)[1])
    parser.add_argument("--workdir", default="gpu_check_output", help="shards and runs")
    parser.add_argument("--np", type=positive_int, default=None,
                        help="processes (default: the GPUs MXNet sees)")
    parser.add_argument("--steps", type=positive_int, default=300, help="steps per run (300)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="per GPU (64)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the plumbing on a CPU: ResNeSt-14, 32 px, float32 and bfloat16")
    return parser


@command("gpu_check")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    import mxnet as mx
    gpus = mx.context.num_gpus()
    if args.cpu_smoke:
        settings = argparse.Namespace(model="resnest14", size=32, classes=10, np=1,
                                      steps=min(args.steps, 8), batch_size=8, log_every=2,
                                      loader_workers=1, dtypes=("float32", "bfloat16"),
                                      train=64, val=24)
    else:
        if gpus == 0:
            log.error("MXNet sees no GPU (mxnet-cu112 installed? `make env "
                      "MXNET_PKG=mxnet-cu112`); --cpu-smoke checks the plumbing on a CPU")
            return 2
        settings = argparse.Namespace(model="resnest50", size=224, classes=100,
                                      np=args.np or gpus, steps=args.steps,
                                      batch_size=args.batch_size, log_every=20,
                                      loader_workers=4, dtypes=("float32", "float16"),
                                      train=(args.np or gpus) * args.batch_size * 8,
                                      val=(args.np or gpus) * args.batch_size)
    folder = os.path.abspath(args.workdir)
    os.makedirs(folder, exist_ok=True)
    log.info("packing %d + %d synthetic images at %d px", settings.train, settings.val,
             settings.size)
    data = make_shards(os.path.join(folder, "data"), settings.train, settings.val,
                       settings.classes, settings.size)
    rows = []
    for dtype in settings.dtypes:
        for product in PRODUCTS:
            log.info("training %s, %s, %s, %d step(s) on %d process(es)", settings.model, dtype,
                     product, settings.steps, settings.np)
            rows.append(run_case({"dtype": dtype, "product": product}, data, settings,
                                 folder))
    print(table(rows))
    found = problems(rows, settings.val)
    for problem in found:
        log.error("%s", problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
