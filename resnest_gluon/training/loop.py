"""The training loop: :func:`fit` orchestrates the parts that :mod:`.setup` builds.

This module owns the order of things in a run: restore, epochs of :func:`train_one_epoch`,
the log windows at which the host and the ranks synchronise (:func:`sync_window`), the work at
the end of an epoch (:func:`end_of_epoch`), and stopping. Rank and world size come from
:mod:`.dist`; nothing here imports horovod.

Host synchronisation. The device runs ahead of the host: loss and accuracy accumulate on it,
and the host reads them, exchanges the stop flag and averages the BatchNorm statistics across
ranks only at the end of each log window (every ``train.log_every`` steps, at the end of an
epoch and at ``train.max_steps``): one blocking read and one allreduce per window. A NaN is
therefore noticed at the end of its window, and a stop request (SIGTERM) takes effect there;
checkpoints are only written at window ends. The host never queues more than two steps ahead
of the device.

Exact resume. Every random draw is a function of (seed, epoch, record, step, rank): the record
order (:mod:`..data.partition`), each record's augmentation (:mod:`..data.loader`), mixup and
MXNet's generators (:mod:`.step`). With the optimizer state, the weight average, the loss
scale and the epoch's running sums in the checkpoint, a relaunch repeats the uninterrupted run
bit for bit (same world size and machine type).
"""
import collections
import logging
import math
import time

import mxnet as mx

from .. import config as cfg
from ..data import DataError
from ..models import set_dropblock_prob
from .callbacks import Callbacks, default_callbacks
from .dist import init_distributed
from .errors import TrainingError
from .guards import StopFlag, Watchdog
from .metrics import device_memory_mb, peak_memory_mb
from .setup import restore_state, setup_run
from .step import RunningStatistics, WindowMeter, train_step
from .workdir import claim_workdir, record_config

__all__ = ["fit", "train_one_epoch", "sync_window", "end_of_epoch"]

log = logging.getLogger(__name__)

_STEPS_IN_FLIGHT = 2


def fit(config: cfg.Config, workdir: str, dist=None, callbacks=()) -> dict:
    """Train (or resume training) as configured; returns a summary dict.

    Parameters
    ----------
    config : Config
        The resolved configuration.
    workdir : str
        Work directory: config.yaml, metrics.jsonl, curves.png, checkpoints/, best.params,
        final.params. A relaunch with the same directory resumes from the newest complete
        checkpoint.
    dist : optional
        A distributed context (default: Horovod when launched by horovodrun, else single).
    callbacks : sequence of Callback
        Called after the built-in ones (progress, metrics, curves, checkpoints, model files).

    Returns
    -------
    dict
        ``status`` (finished, stopped, max_steps), ``global_step``, ``epoch``, ``lr``,
        ``last_eval`` and ``best_top1``.
    """
    with StopFlag() as stop:   # from the start: a stop during set-up ends the first window
        dist = dist or init_distributed(config.dist, config.train.stall_timeout)
        with claim_workdir(workdir, dist):
            return _fit(config, workdir, dist, callbacks, stop)


def _fit(config, workdir, dist, callbacks, stop):
    """:func:`fit` inside its stop flag and work-directory lock."""
    run = setup_run(config, workdir, dist)
    try:
        return _train(run, config, workdir, dist, callbacks, stop)
    finally:
        run.close()


def _train(run, config, workdir, dist, callbacks, stop):
    """:func:`fit` once the run is set up."""
    state = restore_state(run)
    if run.rank0:   # after the restore: a config that cannot resume leaves the old one
        record_config(config, workdir, state.restored_step)
    last_eval, status = None, _limit_reached(run, state) or "finished"
    if state.epoch >= config.train.epochs and run.rank0:
        log.warning("the run has done %d epoch(s), train.epochs is %d: nothing left to train "
                    "(raise train.epochs to go on)", state.epoch, config.train.epochs)
    with Watchdog(config.train.stall_timeout) as watchdog, \
            Callbacks(default_callbacks(run) + list(callbacks)) as hooks:
        hooks("on_start", run, state)
        _log_start(run)
        while state.epoch < config.train.epochs and status == "finished":
            status = train_one_epoch(run, state, hooks, stop, watchdog)
            if status == "finished":
                last_eval = end_of_epoch(run, state, hooks) or last_eval
                watchdog.beat()
                status = _limit_reached(run, state) or status
        if status == "finished":
            hooks("on_end", run, state, run.model_to_evaluate())
        else:
            hooks("on_stop", run, state, status)
        dist.barrier()   # no rank leaves while another still needs a collective
    return {"status": status, "global_step": state.global_step, "epoch": state.epoch,
            "lr": run.lr(state), "last_eval": last_eval, "best_top1": state.best_top1}


def _limit_reached(run, state):
    """``max_steps`` when ``train.max_steps`` updates are done and epochs remain."""
    max_steps = run.config.train.max_steps
    if max_steps and state.global_step >= max_steps and state.epoch < run.config.train.epochs:
        return "max_steps"
    return None


def _log_start(run):
    if not run.rank0:
        return
    tc, settings = run.config.train, run.eval_settings
    accumulated = (f" ({tc.batch_size} x {tc.accumulate} micro-batches x {run.dist.size})"
                   if tc.accumulate > 1 else "")
    log.info("%s on %d worker(s) (%s), %s, %s; %d train / %s val records; global batch %d%s, "
             "%s, peak LR %.4g, %d steps/epoch x %d epochs; eval %d px (crop %.3f)",
             run.config.model.name, run.dist.size, run.dist.name, run.ctx, run.precision.name,
             len(run.train_shards), len(run.val_shards) if run.val_shards else "no",
             run.global_batch, accumulated, run.trainer.optimizer.__class__.__name__,
             run.schedule.peak, run.steps_per_epoch, tc.epochs, settings.size,
             settings.crop_ratio)


def _window_ends(run, state) -> bool:
    tc = run.config.train
    return (state.global_step % tc.log_every == 0
            or state.batch_in_epoch == run.steps_per_epoch
            or state.global_step == tc.max_steps)


def train_one_epoch(run, state, hooks, stop: StopFlag, watchdog: Watchdog) -> str:
    """Run the rest of ``state.epoch``; returns ``finished`` (the epoch is done), ``stopped``
    (a stop request) or ``max_steps``."""
    set_dropblock_prob(run.net, run.dropblock_prob(state.epoch))
    loader = run.train_loader(state)
    meter, statistics = WindowMeter(run.ctx), RunningStatistics(run.net)
    in_flight = collections.deque()
    window_started, status = time.time(), "finished"
    hooks("on_epoch_start", run, state)
    for data, labels in loader:
        loss, logits = train_step(run, state, data, labels)
        meter.add(loss, logits, labels)
        state.advance()
        in_flight.append(loss)
        if len(in_flight) > _STEPS_IN_FLIGHT:
            in_flight.popleft().wait_to_read()   # bound the queue, never stall the device
        watchdog.beat()
        hooks("on_step", run, state)
        if _window_ends(run, state):
            stop_requested, record = sync_window(run, state, meter, statistics, stop,
                                                 time.time() - window_started, loader)
            hooks("on_log", run, state, record)
            window_started = time.time()
            if stop_requested:
                status = "stopped"
            elif state.global_step == run.config.train.max_steps:
                # at the epoch's last step the epoch ends first (evaluation, checkpoint)
                status = "max_steps" if state.batch_in_epoch < run.steps_per_epoch else status
            if status != "finished":
                break
    if loader.corrupt_count:
        log.warning("epoch %d: %d unreadable training records skipped", state.epoch + 1,
                    loader.corrupt_count)
    return status


def sync_window(run, state, meter: WindowMeter, statistics: RunningStatistics, stop: StopFlag,
                seconds: float, loader=None):
    """The end of a log window: read the window's sums (one transfer), sum them, the stop
    votes and the epoch's unreadable records over ranks (one allreduce), average the
    BatchNorm statistics, fail on a NaN or on more unreadable records than the budget.

    Returns
    -------
    tuple
        ``(stop requested on any rank, the window's metrics record)``.
    """
    dist = run.dist
    many = dist.size > 1
    if many:
        mx.nd.waitall()   # oneDNN BatchNorm statistics: see evaluate.py
    local = meter.read(statistics.vector() if many else None)
    unreadable = loader.corrupt_count if loader is not None else 0
    local = [*local[:3], float(stop.requested), float(unreadable), *local[3:]]
    total = dist.allreduce_sum(local, name="window")
    loss, correct, images, stops, unreadable = total[:5]
    first = state.global_step - meter.steps + 1
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss became NaN or infinite between steps {first} and {state.global_step} "
            f"(epoch {state.epoch + 1}, lr up to {run.lr(state, before=1):.4g}); "
            f"stopping. The last good checkpoint is kept: lower optim.lr or check the data, "
            f"then relaunch to resume from it")
    _check_unreadable(run, state, int(unreadable), loader)
    if many:
        statistics.assign(total[5:] / dist.size)
    state.epoch_sums.add(loss, correct, images)
    meter.reset()
    record = {"step": state.global_step, "epoch": state.epoch,
              "epoch_float": state.epoch + state.batch_in_epoch / run.steps_per_epoch,
              "loss": loss / max(images, 1), "top1": correct / max(images, 1),
              "lr": run.lr(state, before=1), "first_step": first,
              "img_per_s": images / max(seconds, 1e-9), "peak_memory_mb": peak_memory_mb(),
              "unreadable": int(unreadable)}
    gpu_memory = device_memory_mb(run.ctx)
    if gpu_memory is not None:
        record["gpu_memory_mb"] = gpu_memory
    return stops > 0, record


def _check_unreadable(run, state, unreadable: int, loader):
    """Stop (every rank alike: ``unreadable`` is the sum over ranks) when this epoch met more
    unreadable training records than ``data.max_bad_fraction`` allows."""
    records = len(run.train_shards)
    allowed = run.bad_record_budget(records)
    if unreadable <= allowed:
        return
    where = loader.corrupt_shards() if loader is not None else ""
    raise DataError(
        f"{unreadable} unreadable training records in epoch {state.epoch + 1}, more than the "
        f"{allowed} that data.max_bad_fraction={run.config.data.max_bad_fraction:g} allows for "
        f"{records} records{f'; on this rank in {where}' if where else ''}. Find them with "
        f"python -m recordio_tools check, repair or re-pack the shards, then relaunch to "
        f"resume from the last checkpoint")


def end_of_epoch(run, state, hooks):
    """Epoch statistics, evaluation (when due), then the epoch-end callbacks; returns the
    evaluation result or None."""
    sums, epoch = state.epoch_sums, state.epoch
    record = {"epoch": epoch, "step": state.global_step, "train_loss": sums.mean_loss,
              "train_top1": sums.top1, "lr": run.lr(state),
              "peak_memory_mb": peak_memory_mb(), "dropblock_prob": run.dropblock_prob(epoch)}
    state.next_epoch()
    result = None
    tc = run.config.train
    if run.val_shards is not None and (state.epoch % tc.eval_every == 0
                                       or state.epoch == tc.epochs):
        try:
            result = run.evaluate()
        except DataError:
            # bad validation data: keep the epoch's training before stopping
            hooks("on_stop", run, state, "failed")
            raise
        improved = state.record_eval(result["top1"])
        hooks("on_eval", run, state, result, improved, run.eval_net.net)
        record.update(val_top1=result["top1"], val_top5=result["top5"],
                      val_images=result["images"])
    if run.rank0:
        log.info("epoch %d/%d: %strain loss %.4f", state.epoch, tc.epochs,
                 "" if result is None else
                 f"val top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
                 f"({result['images']} images)  ", record["train_loss"])
    hooks("on_epoch_end", run, state, record)
    return result
