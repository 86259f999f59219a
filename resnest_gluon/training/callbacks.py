"""What the loop tells the outside world: progress, metrics, curves, checkpoints, model files.

This module owns :class:`Callback` (the hooks), :class:`Callbacks` (a list of them) and the
built-in ones that :func:`default_callbacks` gives every run. Tests and tools observe or extend
a run by passing their own callbacks to ``fit``. Hooks run on every rank; effects that only
rank 0 should have check ``run.rank0``. ``on_step`` runs on the host after each step is
queued: it must not read device values (that would stall the device every step).
"""
import errno
import logging
import os
import time

from tqdm import tqdm

from ..errors import DiskFullError
from .metrics import MetricsLog, plot_curves

__all__ = ["Callback", "Callbacks", "ProgressBar", "MetricsWriter", "CurvePlotter",
           "Checkpointer", "ModelFiles", "default_callbacks"]

log = logging.getLogger(__name__)


class Callback:
    """Hooks of a run; every method is optional. ``run`` is the
    :class:`~resnest_gluon.training.setup.Run`, ``state`` the
    :class:`~resnest_gluon.training.state.RunState`."""

    def on_start(self, run, state):
        """After setup and restore, before the first step."""

    def on_epoch_start(self, run, state):
        """Before the first step of an epoch (also a resumed one)."""

    def on_step(self, run, state):
        """After each step is queued (host only: no device reads here)."""

    def on_log(self, run, state, record: dict):
        """At each log window: ``record`` holds the window's mean loss, accuracy, LR, speed."""

    def on_eval(self, run, state, result: dict, improved: bool, model):
        """After an evaluation; ``model`` is the evaluated network."""

    def on_epoch_end(self, run, state, record: dict):
        """After an epoch and its evaluation; ``state`` already points at the next epoch."""

    def on_stop(self, run, state, status: str):
        """The run stops early (``stopped`` by a signal, ``max_steps``, or ``failed``: the
        validation data failed after an epoch, whose training is kept)."""

    def on_end(self, run, state, model):
        """The last epoch is done; ``model`` holds the final (evaluated) weights."""

    def close(self):
        """Always called last, also when the run fails."""


class Callbacks:
    """A list of callbacks: ``callbacks("on_log", run, state, record)`` calls each one's
    hook in order. A context manager that closes them all on the way out."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def __call__(self, hook: str, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def close(self):
        for callback in self.callbacks:
            try:
                callback.close()
            except Exception as err:  # pylint: disable=broad-except
                log.warning("closing %s failed: %s", type(callback).__name__, err)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProgressBar(Callback):
    """A tqdm bar per epoch on rank 0, with the last window's loss, LR and speed."""

    def __init__(self):
        self.bar = None

    def on_epoch_start(self, run, state):
        self.close()
        self.bar = tqdm(total=run.steps_per_epoch, initial=state.batch_in_epoch,
                        disable=not run.rank0, unit="step", dynamic_ncols=True,
                        desc=f"epoch {state.epoch + 1}/{run.config.train.epochs}")

    def on_step(self, run, state):
        self.bar.update(1)

    def on_log(self, run, state, record):
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.4g}",
                             img_s=f"{record['img_per_s']:.1f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsWriter(Callback):
    """``metrics.jsonl``: a ``step`` record per log window, an ``epoch`` record per epoch.

    On start the log is cut back to the step of the checkpoint the run resumed from, so that
    after a resume it holds every step once.
    """

    def __init__(self, path: str):
        self.path = path
        self.log = None

    def on_start(self, run, state):
        self.log = MetricsLog(self.path, enabled=run.rank0)
        dropped = self.log.truncate_after(state.restored_step)
        if dropped:
            log.info("metrics.jsonl: dropped %d records after step %d (work lost with the "
                     "interruption, redone now)", dropped, state.restored_step)

    def on_log(self, run, state, record):
        self.log.write("step", **record)

    def on_epoch_end(self, run, state, record):
        self.log.write("epoch", **record)


class CurvePlotter(Callback):
    """``curves.png`` redrawn after each epoch (rank 0); a failure only warns."""

    def __init__(self, metrics_path: str, png_path: str):
        self.metrics_path, self.png_path = metrics_path, png_path

    def on_epoch_end(self, run, state, record):
        if not run.rank0:
            return
        try:
            plot_curves(self.metrics_path, self.png_path)
        except Exception as err:  # pylint: disable=broad-except
            log.warning("could not draw %s: %s", self.png_path, err)   # never stop training


class Checkpointer(Callback):
    """A checkpoint every ``train.checkpoint_every`` epochs, after the last one, and when the
    run stops early; never twice for the same step."""

    def __init__(self):
        self.saved_step = None

    def on_start(self, run, state):
        self.saved_step = state.restored_step if state.restored_step else None

    def on_epoch_end(self, run, state, record):
        every = run.config.train.checkpoint_every
        if state.epoch % every == 0 or state.epoch == run.config.train.epochs:
            self._save(run, state)

    def on_stop(self, run, state, status):
        self._save(run, state)
        if status == "stopped":
            log.info("stop requested at step %d; checkpoint saved, relaunch to resume",
                     state.global_step)
        elif status == "failed":
            log.info("checkpoint of step %d saved: a relaunch after the data is repaired goes "
                     "on with the next epoch (this one stays unevaluated)", state.global_step)
        else:
            log.info("max_steps reached at step %d, which has its checkpoint; raise "
                     "train.max_steps and relaunch to go on", state.global_step)

    def _save(self, run, state):
        if state.global_step == self.saved_step:
            return
        tic = time.time()
        written_by_rank0(run, f"the checkpoint of step {state.global_step}",
                         lambda: run.checkpoints.save(run.net, run.trainer,
                                                      run.checkpoint_meta(state), run.ema))
        self.saved_step = state.global_step
        log.debug("checkpoint written in %.1f s", time.time() - tic)


class ModelFiles(Callback):
    """``best.params`` after each best evaluation, ``final.params`` at the end (and
    ``best.params`` then too when there is no validation set)."""

    def on_eval(self, run, state, result, improved, model):
        if improved:
            self._save(run, model, "best.params")

    def on_end(self, run, state, model):
        self._save(run, model, "final.params")
        if run.val_shards is None:
            self._save(run, model, "best.params")

    @staticmethod
    def _save(run, model, name):
        written_by_rank0(run, name, lambda: run.checkpoints.save_model(model, name))


def written_by_rank0(run, what: str, write):
    """Call ``write()``, which writes on rank 0 only, and make a full disk there stop every
    rank alike (one allreduce when there are several ranks) instead of leaving the others
    waiting in their next collective."""
    failure = None
    try:
        write()
    except DiskFullError as err:
        failure = err
    if run.dist.size > 1 and run.dist.allreduce_sum([float(failure is not None)],
                                                    name="disk_full")[0] > 0:
        failure = failure or DiskFullError(
            errno.ENOSPC, f"rank 0 could not write {what} into {run.workdir}: no space left on "
                          f"device (rank 0's line says how much it needs)", run.workdir)
    if failure is not None:
        raise failure


def default_callbacks(run):
    """The callbacks every run has: progress, metrics, curves, checkpoints, model files."""
    metrics = os.path.join(run.workdir, "metrics.jsonl")
    return [ProgressBar(), MetricsWriter(metrics),
            CurvePlotter(metrics, os.path.join(run.workdir, "curves.png")),
            Checkpointer(), ModelFiles()]
