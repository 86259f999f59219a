"""Exact resume and host synchronisation of the training loop.

A run interrupted by SIGTERM mid-epoch, or killed with kill -9 after a checkpoint, and then
relaunched, ends with parameters bit-identical to an uninterrupted run and the same metrics,
each step logged once: in one process, under ``horovodrun -np 2``, and accumulating two
micro-batches per update (a stop finishes the update it is in). DropBlock, mixup,
AutoAugment, colour jitter and a weight average are all on, so every random source is used.
Between log windows the loop neither reads from the device nor calls a collective.
"""
import collections
import os
import signal
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from runs import HOROVODRUN, ROOT, newest_meta, read_text, wait_for

from resnest_gluon.config import load_config
from resnest_gluon.training import Callback, fit
from resnest_gluon.training.dist import SingleProcess
from resnest_gluon.training.metrics import read_metrics


def recipe(digits, *extra):
    """ResNeSt-14 at 32 px, batch 8: 12 steps per epoch alone, 6 per rank with two ranks;
    log windows of 5 steps, so that stops fall inside epochs."""
    train, val = digits
    return [f"data.train={train}", f"data.val={val}", "model.name=resnest14",
            "data.num_classes=10", "data.input_size=32", "data.eval_size=32",
            "data.crop_ratio=1.0", "data.workers=1", "data.autoaugment=true",
            "data.mixup_alpha=0.2", "model.dropblock_prob=0.3", "train.ema_decay=0.9",
            "data.chunk=8", "data.window=32", "train.batch_size=8", "train.epochs=3",
            "train.log_every=5", "optim.warmup_epochs=1", "optim.base_lr=0.2", *extra]


# name: (workers, overrides); "1x2": one worker, updates of two micro-batches of 4
CASES = {"1": (1, ()), "2": (2, ()),
         "1x2": (1, ("train.batch_size=4", "train.accumulate=2", "optim.clip_grad_norm=2.0"))}


def launch(workdir, digits, case):
    """The training CLI (under horovodrun for 2 workers), output to WORKDIR.log."""
    workers, extra = CASES[case]
    command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--workdir",
               str(workdir), *recipe(digits, *extra)]
    if workers > 1:
        command = [HOROVODRUN, "-np", str(workers), "-H", f"localhost:{workers}"] + command
    with open(f"{workdir}.log", "a") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def output(workdir):
    return read_text(f"{workdir}.log")


def logged_steps(workdir):
    return [r["step"] for r in read_metrics(str(workdir / "metrics.jsonl"))
            if r["kind"] == "step"]


def training_pids(workdir):
    """PIDs of the Python training processes (and their loader workers) of ``workdir``: not
    horovodrun, nor the shells it starts them with."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        if argv[0] == sys.executable and len(argv) > 1 and argv[1].endswith("scripts/train.py") \
                and str(workdir) in argv:
            found.append(int(pid))
    return found


def signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:   # a loader worker that has just finished
            pass


def assert_same_run(reference, resumed):
    """Bit-identical weights and the same metrics, every step logged once."""
    for name in ("final.params", "best.params"):
        expected, got = mx.nd.load(str(reference / name)), mx.nd.load(str(resumed / name))
        assert sorted(expected) == sorted(got)
        for key in expected:
            np.testing.assert_array_equal(expected[key].asnumpy(), got[key].asnumpy(),
                                          err_msg=f"{name}: {key}")

    def table(workdir):
        records = read_metrics(str(workdir / "metrics.jsonl"))
        steps = [(r["step"], r["loss"], r["top1"], r["lr"]) for r in records
                 if r["kind"] == "step"]
        epochs = [(r["epoch"], r["step"], r["train_loss"], r["train_top1"], r["val_top1"])
                  for r in records if r["kind"] == "epoch"]
        return steps, epochs

    assert table(resumed) == table(reference)


@pytest.fixture(scope="module")
def references(digits, tmp_path_factory):
    """Uninterrupted runs of every case."""
    out = {}
    for case in CASES:
        workdir = tmp_path_factory.mktemp("reference") / f"w{case}"
        job = launch(workdir, digits, case)
        assert job.wait(timeout=600) == 0, output(workdir)[-3000:]
        out[case] = workdir
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_sigterm_mid_epoch_then_relaunch_replays_the_run_exactly(digits, references, tmp_path,
                                                                  case):
    workers = CASES[case][0]
    workdir = tmp_path / "run"
    job = launch(workdir, digits, case)
    wait_for(lambda: "steps/epoch" in output(workdir), "the start of training")
    # what a scheduler does: every training process gets the signal (loader workers ignore it)
    pids = training_pids(workdir)
    assert len(pids) >= workers
    signal_all(pids, signal.SIGTERM)
    assert job.wait(timeout=300) == 0, output(workdir)[-3000:]
    assert "stop requested at step" in output(workdir)
    meta = newest_meta(workdir)
    steps_per_epoch = 12 // workers
    assert 0 < meta["batch"] < steps_per_epoch, meta      # inside an epoch
    assert meta["global_step"] % 5 == 0                   # at the end of a log window
    again = launch(workdir, digits, case)
    assert again.wait(timeout=600) == 0, output(workdir)[-3000:]
    assert f"resumed from {workdir}/checkpoints/step-{meta['global_step']:08d}" in \
        output(workdir)
    assert_same_run(references[case], workdir)


@pytest.mark.parametrize("case", ["1", "2"])
def test_kill_9_after_a_checkpoint_then_relaunch_replays_the_run_exactly(digits, references,
                                                                          tmp_path, case):
    workers = CASES[case][0]
    workdir = tmp_path / "run"
    steps_per_epoch = 12 // workers
    job = launch(workdir, digits, case)
    # past the first epoch's checkpoint, with steps logged after it
    wait_for(lambda: any(s > steps_per_epoch for s in logged_steps(workdir)),
             "a logged step after the first checkpoint")
    signal_all(training_pids(workdir), signal.SIGKILL)
    job.wait(timeout=120)
    saved = newest_meta(workdir)["global_step"]
    assert saved % steps_per_epoch == 0 and saved < 3 * steps_per_epoch
    assert max(logged_steps(workdir)) > saved     # work lost with the kill, logged already
    again = launch(workdir, digits, case)
    assert again.wait(timeout=600) == 0, output(workdir)[-3000:]
    assert_same_run(references[case], workdir)


class CountingDist(SingleProcess):
    """One process; counts the collectives by name."""

    def __init__(self):
        self.calls = collections.Counter()

    def allreduce_sum(self, values, name="scalars"):
        self.calls[name] += 1
        return super().allreduce_sum(values, name)


class Timeline(Callback):
    """When reads and collectives happen, relative to steps and log windows."""

    def __init__(self, reads, dist):
        self.reads, self.dist, self.events = reads, dist, []

    def on_step(self, run, state):
        self.events.append(("step", state.global_step, self.reads[0],
                            self.dist.calls["window"]))

    def on_log(self, run, state, record):
        self.events.append(("log", state.global_step, self.reads[0],
                            self.dist.calls["window"]))


@pytest.mark.parametrize("log_every,case", [(1, "1"), (4, "1"), (4, "1x2")])
def test_one_read_and_one_allreduce_per_log_window(digits, tmp_path, monkeypatch, log_every,
                                                   case):
    reads = [0]
    original = mx.nd.NDArray.asnumpy

    def counting_asnumpy(self):
        reads[0] += 1
        return original(self)

    monkeypatch.setattr(mx.nd.NDArray, "asnumpy", counting_asnumpy)
    dist = CountingDist()
    timeline = Timeline(reads, dist)
    config = load_config(None, recipe(digits, "data.val=", "train.epochs=1",
                                      f"train.log_every={log_every}", *CASES[case][1]))
    fit(config, str(tmp_path), dist, callbacks=[timeline])
    # 12 steps; windows end every log_every steps and at the end of the epoch
    windows = sorted({s for s in range(1, 13) if s % log_every == 0} | {12})
    logs = [e for e in timeline.events if e[0] == "log"]
    assert [e[1] for e in logs] == windows
    assert dist.calls["window"] == len(windows)
    previous = None
    for kind, step, read_count, allreduce_count in timeline.events:
        if previous is not None:
            new_reads = read_count - previous[2]
            new_allreduces = allreduce_count - previous[3]
            # a step adds nothing; a window adds one read and one allreduce
            assert (new_reads, new_allreduces) == ((1, 1) if kind == "log" else (0, 0)), \
                (kind, step)
        previous = (kind, step, read_count, allreduce_count)
