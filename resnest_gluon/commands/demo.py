"""``make demo``: the main job end to end on the built-in data.

Packs scikit-learn's real handwritten digits (1,797 images, upscaled to 32x32, split 80/20)
into RecordIO shards with recordio_tools, trains ResNeSt-14 on them under
``horovodrun -np 2`` (one process if Horovod is unavailable or ``--workers 1``), verifies the
best model on the validation shards, exports it (symbol + params and ONNX) and classifies a few
validation images with the export. Everything lands in ``--workdir``.
"""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time

from . import setup_logging
from .cli import command

log = logging.getLogger("demo")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(step, command):
    print(f"\n$ {' '.join(command)}", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if result.returncode != 0:
        print(result.stdout[-5000:])
        raise SystemExit(f"demo: {step} failed (exit {result.returncode})")
    return result.stdout, time.time() - started


def _script(name):
    return [sys.executable, os.path.join(ROOT, "scripts", name)]


@command("demo")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--workdir", default="demo_output", help="outputs (demo_output)")
    parser.add_argument("--workers", type=int, default=2, help="horovod workers (2)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the previous training run (the data are reused)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for training")
    args = parser.parse_args(argv)
    setup_logging()
    workdir = os.path.abspath(args.workdir)
    data_dir, run_dir = os.path.join(workdir, "data"), os.path.join(workdir, "run")
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()

    print("1/5 packing scikit-learn's handwritten digits into RecordIO shards")
    from recordio_tools.digits import make_digits
    data = make_digits(data_dir, size=32, workers=2)
    print(f"    {data['train_records']} training records ({data['train']}-*.rec), "
          f"{data['val_records']} validation records ({data['val']}-*.rec)")
    check, _ = _run("check", [sys.executable, "-m", "recordio_tools", "check", data["train"],
                              "--quiet"])
    print("    " + check.strip().splitlines()[-1])

    print(f"\n2/5 training ResNeSt-14 (configs/demo.yaml) on {args.workers} worker(s)")
    train = _script("train.py") + ["--config", "configs/demo.yaml", "--workdir", run_dir,
                                   f"data.train={data['train']}", f"data.val={data['val']}",
                                   *args.overrides]
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable),
                                                            "horovodrun")
    if args.workers > 1 and os.path.exists(horovodrun):
        train = [horovodrun, "-np", str(args.workers), "-H", f"localhost:{args.workers}"] + train
    output, seconds = _run("training", train)
    lines = [line.split("INFO ")[-1] for line in output.splitlines() if "val top-1" in line
             or "finished at" in line or "resumed from" in line]
    for line in lines:
        print("    " + line.split("resnest_gluon.training.loop: ")[-1].split("train: ")[-1])
    print(f"    training took {seconds:.0f} s")

    print("\n3/5 verifying best.params on the validation shards (exact count)")
    output, _ = _run("verify", _script("verify.py") + [
        "--config", os.path.join(run_dir, "config.yaml"), "--params",
        os.path.join(run_dir, "best.params"), "--rec-val", data["val"], "--json"])
    result = json.loads(output.strip().splitlines()[-1])
    print(f"    top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
          f"on {result['images']} images")

    print("\n4/5 exporting for serving (symbol + params, ONNX), each checked against Gluon")
    export_prefix = os.path.join(workdir, "export", "resnest14-digits")
    output, _ = _run("export", _script("export.py") + [
        "--config", os.path.join(run_dir, "config.yaml"), "--params",
        os.path.join(run_dir, "best.params"), "--output", export_prefix, "--onnx"])
    for line in output.splitlines():
        if line.startswith(("symbol", "params", "onnx", "max", "meta")):
            print("    " + line)

    print("\n5/5 predicting validation images with the exported model")
    samples = [os.path.join(data_dir, "images", "val", str(d),
                            sorted(os.listdir(os.path.join(data_dir, "images", "val", str(d))))[0])
               for d in (0, 3, 7)]
    output, _ = _run("predict", _script("predict.py") + [
        "--model", export_prefix, "--top", "3", *samples])
    for line in output.strip().splitlines():
        print("    " + os.path.relpath(line, workdir) if line.startswith("/") else "    " + line)

    print(f"\nDone in {time.time() - started:.0f} s. Everything is in {workdir}:")
    for path, what in ((data["train"] + "-*.rec", "training shards (+ .idx, manifest, classes)"),
                       (os.path.join(run_dir, "metrics.jsonl"), "metrics log"),
                       (os.path.join(run_dir, "curves.png"), "training curves"),
                       (os.path.join(run_dir, "best.params"), "best model"),
                       (os.path.join(run_dir, "checkpoints"), "checkpoints (relaunch resumes)"),
                       (export_prefix + "-symbol.json", "exported symbol (+ -0000.params)"),
                       (export_prefix + ".onnx", "ONNX model"),
                       (export_prefix + "-meta.json", "what the export expects (size, classes)")):
        print(f"  {os.path.relpath(path, os.getcwd()):55s} {what}")
    if result["top1"] < 0.95:
        log.warning("validation top-1 %.2f%% is below the 95%% this demo normally reaches",
                    100 * result["top1"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
