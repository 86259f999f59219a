"""Helpers the training tests share: the tiny digits run, the CLI, waiting on a live run."""
import os
import subprocess
import sys
import textwrap
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


RANK_DUMPER = textwrap.dedent("""
    import socket
    import sys
    import numpy as np
    from resnest_gluon.config import load_config
    from resnest_gluon.training import Callback, fit

    class SaveEachRank(Callback):
        def on_end(self, run, state, model):
            np.savez(sys.argv[1] + "/rank%d.npz" % run.dist.rank, host=socket.gethostname(),
                     **{k: v.data().asnumpy()
                        for k, v in run.net._collect_params_with_prefix().items()})

    fit(load_config(None, sys.argv[2:]), sys.argv[1], callbacks=[SaveEachRank()])
""")


def write_rank_dumper(folder):
    """A script ``dump.py WORKDIR OVERRIDES`` that trains like ``train.py`` and saves each
    rank's parameters (and host name) as ``WORKDIR/rank<N>.npz``; returns its path."""
    path = os.path.join(str(folder), "dump.py")
    with open(path, "w") as out:
        out.write(RANK_DUMPER)
    return path


def assert_ranks_identical(workdir, ranks=2):
    """Every rank's saved parameters equal rank 0's; returns the ranks' host names."""
    import numpy as np
    saved = [np.load(os.path.join(str(workdir), f"rank{r}.npz")) for r in range(ranks)]
    names = set(saved[0].files) - {"host"}
    assert len(names) > 100
    for other in saved[1:]:
        assert set(other.files) - {"host"} == names
        for name in names:
            np.testing.assert_array_equal(saved[0][name], other[name], err_msg=name)
    return [str(s["host"]) for s in saved]
