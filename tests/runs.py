"""Helpers the training tests share: the tiny digits run, the CLI, waiting on a live run."""
import os
import subprocess
import sys
import time

from resnest_gluon.training.checkpoint import CheckpointManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
TRAIN = os.path.join(ROOT, "scripts", "train.py")


def tiny(digits, *extra):
    """Overrides for a ResNeSt-14 run at 32x32: 6 steps of 16 per epoch."""
    train, val = digits
    return [f"data.train={train}", f"data.val={val}", "model.name=resnest14",
            "data.num_classes=10", "data.input_size=32", "data.eval_size=32",
            "data.crop_ratio=1.0", "data.workers=1", "data.autoaugment=false",
            "data.chunk=8", "data.window=32", "train.batch_size=16", "train.epochs=3",
            "train.log_every=1", "optim.warmup_epochs=1", "optim.base_lr=0.2", *extra]


def train_cli(workdir, overrides, **kwargs):
    """``scripts/train.py --workdir WORKDIR OVERRIDES`` with its output on a pipe."""
    return subprocess.Popen([sys.executable, TRAIN, "--workdir", str(workdir), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, **kwargs)


def newest_meta(workdir):
    """The meta of the newest complete checkpoint of ``workdir`` (None without one)."""
    return CheckpointManager(str(workdir), is_writer=False).latest()[1]


def read_text(path):
    with open(path, errors="replace") as handle:
        return handle.read()


def wait_for(condition, what, timeout=240):
    """Poll ``condition()`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
