"""A full disk (issue case 8) on a real small filesystem (tmpfs, mounted by the tests; they run
as root): one line, nothing partial, and a relaunch after space is freed resumes."""
import errno
import os
import subprocess
import sys

import mxnet as mx
import pytest
from runs import HOROVODRUN, ROOT, TRAIN, newest_meta, tiny

from resnest_gluon import get_model
from resnest_gluon.errors import DiskFullError
from resnest_gluon.paths import atomic_write
from resnest_gluon.training.checkpoint import CheckpointManager
from resnest_gluon.training.metrics import read_metrics

MB = 1 << 20


class SmallDisk:
    """A tmpfs mounted at ``path``; :meth:`resize` changes its size (as freeing space does)."""

    def __init__(self, path):
        self.path = path
        path.mkdir()
        self._mount("size=1m")

    def _mount(self, options):
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
                       check=True, capture_output=True)

    def resize(self, mb):
        self._mount(f"remount,size={mb}m")

    def unmount(self):
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.unmount()


def _fill(folder, leave_bytes):
    """Fill the filesystem of ``folder`` until ``leave_bytes`` are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(os.path.join(folder, "filler"), "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))


def _train(workdir, digits, *extra):
    return subprocess.run([sys.executable, TRAIN, "--workdir", str(workdir),
                           *tiny(digits, "train.epochs=3", *extra)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_a_full_disk_stops_training_with_one_line_and_a_relaunch_resumes(digits, small_disk):
    workdir = small_disk.path / "run"
    small_disk.resize(150)       # room for one checkpoint (~69 MB) and best.params, not two
    full = _train(workdir, digits)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert f"no space left on device in {workdir}" in last and "needs ~" in last
    assert newest_meta(workdir)["global_step"] == 6           # epoch 1's checkpoint, whole
    leftovers = [n for n in os.listdir(workdir / "checkpoints") if n.startswith(".")]
    assert leftovers == [] and not [n for n in os.listdir(workdir) if ".tmp" in n]
    config = (workdir / "config.yaml").read_text()

    # a relaunch on a disk with no space at all: one line again, and nothing is lost
    _fill(small_disk.path, 0)
    again = _train(workdir, digits)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "no space left on device" in again.stderr.strip().splitlines()[-1]
    assert (workdir / "config.yaml").read_text() == config
    assert newest_meta(workdir)["global_step"] == 6

    # space freed: the same command resumes and finishes
    os.remove(small_disk.path / "filler")
    small_disk.resize(400)
    done = _train(workdir, digits)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and os.path.exists(workdir / "final.params")
    steps = [r["step"] for r in read_metrics(str(workdir / "metrics.jsonl"))
             if r["kind"] == "step"]
    assert steps == list(range(1, 19))


def test_under_horovodrun_every_rank_stops_when_rank_0_cannot_write(digits, small_disk):
    workdir = small_disk.path / "run"
    small_disk.resize(150)
    done = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable, TRAIN,
                           "--workdir", str(workdir),
                           *tiny(digits, "train.epochs=3", "train.batch_size=8")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    output = done.stdout + done.stderr
    ranks = [line for line in output.splitlines() if line.startswith("[")]   # [rank]<stderr>:
    # on failure: rank 1's own lines first (a rank that dies early is buried otherwise)
    shown = "\n".join(line for line in ranks if line.startswith("[1]"))[-3000:] + \
        "\n...\n" + output[-3000:]
    assert done.returncode != 0 and ranks, shown
    assert not [line for line in ranks if "Traceback" in line], shown
    lines = [line for line in ranks if "ERROR train:" in line]
    assert len(lines) == 2, shown
    assert any(f"no space left on device in {workdir}" in line and "needs ~" in line
               for line in lines)
    assert any("rank 0 could not write" in line for line in lines)
    assert newest_meta(workdir)["global_step"] == 6


def test_running_out_of_space_during_a_checkpoint_leaves_nothing_partial(small_disk):
    """The first checkpoint of a run with Adam (two states per weight) passes the estimate
    (one state per weight) but does not fit: ~34 MB of weights + ~69 MB of states in 90 MB."""
    small_disk.resize(90)
    net = get_model("resnest14", classes=10)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), "adam")
    with mx.autograd.record():
        loss = net(mx.nd.ones((1, 3, 32, 32))).sum()
    loss.backward()
    trainer.step(1)
    manager = CheckpointManager(str(small_disk.path), keep=3)
    meta = {"global_step": 2, "epoch": 0, "batch": 2}
    with pytest.raises(DiskFullError) as err:
        manager.save(net, trainer, meta)
    assert err.value.errno == errno.ENOSPC
    assert f"no space left on device in {small_disk.path / 'checkpoints'} writing checkpoint " \
           f"step-00000002 (needs ~" in str(err.value)
    assert os.listdir(small_disk.path / "checkpoints") == []
    # when the estimate already says it will not fit, nothing is even started
    small_disk.resize(60)
    with pytest.raises(DiskFullError, match=r"needs ~\d+ MB, \d+ MB free"):
        manager.save(net, trainer, meta)
    assert os.listdir(small_disk.path / "checkpoints") == []


def test_a_small_file_that_does_not_fit_keeps_its_old_content(small_disk):
    path = str(small_disk.path / "config.yaml")
    atomic_write(path, lambda handle: handle.write("old: 1\n"))
    _fill(small_disk.path, 0)
    with pytest.raises(DiskFullError):
        atomic_write(path, lambda handle: handle.write("new: 2\n" * 100000))
    assert open(path).read() == "old: 1\n"
    assert sorted(os.listdir(small_disk.path)) == ["config.yaml", "filler"]


def test_an_export_that_does_not_fit_leaves_the_old_one_whole(small_disk, tmp_path):
    net = get_model("resnest14", classes=10)
    net.initialize()
    net.save_parameters(str(tmp_path / "w.params"))
    small_disk.resize(60)
    args = [sys.executable, os.path.join(ROOT, "scripts", "export.py"), "--model", "resnest14",
            "--num-classes", "10", "--params", str(tmp_path / "w.params"), "--size", "32",
            "--output", str(small_disk.path / "serve" / "m")]
    first = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {n: (small_disk.path / "serve" / n).read_bytes()
              for n in os.listdir(small_disk.path / "serve")}
    again = subprocess.run(args + ["--onnx"], capture_output=True, text=True, cwd=ROOT,
                           timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    last = again.stderr.strip().splitlines()[-1]
    assert f"no space left on device in {small_disk.path / 'serve'} writing the export" in last
    assert {n: (small_disk.path / "serve" / n).read_bytes()
            for n in os.listdir(small_disk.path / "serve")} == before
