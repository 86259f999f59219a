"""The training loop: :func:`fit` (train with the published recipe) and :func:`evaluate`.

This module owns one run from start or resume to the final model: building the network and
the optimizer from a :class:`~resnest_gluon.config.Config`, the per-step work (schedules, mixup,
NaN check, stop requests), evaluation with exact counts, checkpoints and observability. Rank
and world size come from :mod:`.dist`; nothing here imports horovod.
"""
import logging
import math
import os
import signal
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

from .. import config as cfg
from ..data import (BatchLoader, EvalTransform, MixConfig, ShardSet, TrainTransform,
                    batches_per_epoch, eval_batches, targets_for_batch, train_batches)
from ..models import get_model, get_spec, set_dropblock_prob
from ..models.zoo import eval_crop_ratio
from .checkpoint import CheckpointManager
from .dist import init_distributed
from .metrics import MetricsLog, peak_memory_mb, plot_curves
from .schedule import Schedule, dropblock_prob_at, peak_lr

__all__ = ["fit", "evaluate", "build_network", "eval_settings", "TrainingError", "accuracy_counts"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, stalled job, ...)."""


def default_context(local_rank: int = 0):
    """GPU ``local_rank`` when MXNet sees GPUs, else CPU."""
    return mx.gpu(local_rank) if mx.context.num_gpus() > 0 else mx.cpu()


def build_network(config: cfg.Config, classes=None):
    """The configured zoo network (DropBlock starts at 0; the loop schedules it)."""
    overrides = dict(config.model.overrides)
    if config.model.final_drop is not None:
        overrides["final_drop"] = config.model.final_drop
    return get_model(config.model.name, classes=classes or config.data.num_classes,
                     last_gamma=config.model.last_gamma, **overrides)


def eval_settings(config: cfg.Config):
    """``(eval size, crop ratio)``: the config's, else the spec's when training at the spec's
    train size, else the training size; ratio 0.875 below 320, size/(size+32) above."""
    spec = get_spec(config.model.name)
    size = config.data.eval_size or (spec.eval_size if config.data.input_size == spec.train_size
                                      else config.data.input_size)
    return size, config.data.crop_ratio or eval_crop_ratio(size)


def accuracy_counts(logits, labels):
    """``(top-1 correct, top-5 correct)`` of a batch, as Python ints."""
    labels = labels.astype("int64").reshape((-1, 1))
    k = min(5, logits.shape[1])
    topk = mx.nd.topk(logits, axis=1, k=k, dtype="int64")
    top1 = int((topk[:, 0:1] == labels).sum().asscalar())
    top5 = int((topk == labels).sum().asscalar())
    return top1, top5


def evaluate(net, shards: ShardSet, dist, size: int, crop_ratio: float, batch_size: int,
             workers: int, classes: int, ctx, interpolation="bicubic", per_class=False):
    """Top-1/top-5 over every record of ``shards`` exactly once across ranks.

    Returns
    -------
    dict
        ``top1``, ``top5`` (fractions), ``images`` (the total count, summed across ranks),
        and with ``per_class`` a ``(classes, 2)`` array of [correct, total].
    """
    batches = eval_batches(len(shards), batch_size, dist.rank, dist.size)
    loader = BatchLoader(shards, batches, EvalTransform(size, crop_ratio, interpolation), size,
                         classes=classes, workers=workers, ctx=ctx)
    counts = np.zeros(3)
    class_counts = np.zeros((classes, 2)) if per_class else None
    for data, labels in tqdm(loader, desc="eval", unit="batch", disable=dist.rank != 0,
                             leave=False, dynamic_ncols=True):
        logits = net(data)
        top1, top5 = accuracy_counts(logits, labels)
        counts += (top1, top5, labels.shape[0])
        if per_class:
            hits = (logits.argmax(axis=1) == labels).asnumpy()
            for label, hit in zip(labels.asnumpy().astype(int), hits):
                class_counts[label] += (hit, 1)
    if loader.corrupt_count:
        log.warning("%d unreadable validation records were replaced; accuracy is approximate",
                    loader.corrupt_count)
    total = dist.allreduce_sum(counts)
    result = {"top1": total[0] / max(total[2], 1), "top5": total[1] / max(total[2], 1),
              "images": int(total[2])}
    if per_class:
        result["per_class"] = dist.allreduce_sum(class_counts.ravel()).reshape(classes, 2)
    if result["images"] != len(shards):
        raise TrainingError(f"evaluated {result['images']} images, the set has {len(shards)}")
    return result


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("received %s: finishing this step, saving a checkpoint, then exiting",
                    signal.Signals(signum).name)

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Watchdog(threading.Thread):
    """Abort the process when no step finished for ``timeout`` seconds (a stuck peer or
    input): a job never hangs silently."""

    def __init__(self, timeout):
        super().__init__(daemon=True)
        self.timeout = timeout
        self.last = time.monotonic()
        self._halt = threading.Event()

    def beat(self):
        self.last = time.monotonic()

    def run(self):
        while not self._halt.wait(min(10.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                log.error("no training step finished for %.0f s: a worker is stuck or dead; "
                          "aborting the job (resume restarts from the last checkpoint)",
                          self.timeout)
                logging.shutdown()
                os._exit(3)

    def stop(self):
        self._halt.set()


class _EMA:
    """Exponential moving average of the parameters (evaluated and exported when on)."""

    def __init__(self, params, decay):
        self.decay = decay
        self.params = [p for p in params.values()]
        self.shadow = [p.data().copy() for p in self.params]

    def update(self):
        for p, s in zip(self.params, self.shadow):
            s[:] = self.decay * s + (1 - self.decay) * p.data()

    def swap(self):
        """Exchange live and averaged weights (call twice to undo)."""
        for p, s in zip(self.params, self.shadow):
            live = p.data().copy()
            p.set_data(s)
            s[:] = live


def _no_weight_decay_on_bn_and_bias(net):
    for name, param in net.collect_params().items():
        if name.endswith(("gamma", "beta", "bias")):
            param.wd_mult = 0.0


def fit(config: cfg.Config, workdir: str, dist=None):
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
    """
    dist = dist or init_distributed(config.dist, config.train.stall_timeout)
    rank0 = dist.rank == 0
    os.makedirs(workdir, exist_ok=True)
    if rank0:
        cfg.dump_config(config, os.path.join(workdir, "config.yaml"))
    ctx = default_context(dist.local_rank)
    tc, dc, oc = config.train, config.data, config.optim
    spec = get_spec(config.model.name)
    final_dropblock = spec.dropblock_prob if config.model.dropblock_prob is None \
        else config.model.dropblock_prob

    train_shards = ShardSet(dc.train)
    val_shards = ShardSet(dc.val) if dc.val else None
    steps_per_epoch = batches_per_epoch(len(train_shards), tc.batch_size, dist.size)
    if steps_per_epoch == 0:
        raise cfg.ConfigError(f"data.train has {len(train_shards)} records: not one batch of "
                              f"train.batch_size={tc.batch_size} per worker for {dist.size} "
                              f"worker(s)")
    global_batch = tc.batch_size * dist.size
    lr_peak = oc.lr or peak_lr(oc.base_lr, global_batch)
    schedule = Schedule(lr_peak, steps_per_epoch, tc.epochs, oc.warmup_epochs, oc.warmup_lr,
                        oc.final_lr, oc.schedule, tuple(oc.step_epochs), oc.step_factor)

    if tc.dtype != "float32":
        from mxnet.contrib import amp
        amp.init(target_dtype=tc.dtype)
    net = build_network(config)
    net.initialize(mx.init.MSRAPrelu(), ctx=ctx)
    if tc.dtype == "float32" and tc.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    elif tc.hybridize:
        net.hybridize()
    if oc.no_wd_on_bn_bias:
        _no_weight_decay_on_bn_and_bias(net)
    optimizer = "nag" if oc.nesterov else "sgd"
    trainer = dist.make_trainer(net.collect_params(), optimizer,
                                {"learning_rate": schedule(0), "momentum": oc.momentum,
                                 "wd": oc.weight_decay},
                                fp16_allreduce=config.dist.fp16_allreduce)
    if tc.dtype != "float32":
        amp.init_trainer(trainer)

    checkpoints = CheckpointManager(workdir, tc.keep_checkpoints, is_writer=rank0)
    meta = checkpoints.restore(net, trainer, ctx)
    epoch, batch_in_epoch, global_step = 0, 0, 0
    best = {"top1": -1.0, "step": None}
    if meta is not None:
        if meta.get("config_hash") != cfg.config_hash(config):
            log.warning("the config differs from the checkpoint's (hash %s vs %s); resuming "
                        "with the new one", cfg.config_hash(config), meta.get("config_hash"))
        epoch, batch_in_epoch = meta["epoch"], meta["batch"]
        best = {"top1": meta.get("best_top1", -1.0), "step": meta.get("best_step")}
        if meta["steps_per_epoch"] != steps_per_epoch:
            # another world size (or data): keep the position within the epoch as a fraction
            batch_in_epoch = int(batch_in_epoch * steps_per_epoch / meta["steps_per_epoch"])
            log.warning("steps per epoch changed %d -> %d (world size %d -> %d): data "
                        "re-partitioned, continuing at batch %d of epoch %d",
                        meta["steps_per_epoch"], steps_per_epoch, meta["world_size"], dist.size,
                        batch_in_epoch, epoch)
        global_step = epoch * steps_per_epoch + batch_in_epoch
    # Every rank starts from rank 0's weights. Broadcast before any forward pass: a forward
    # turns arrays into oneDNN layouts, which Horovod cannot read (seen at resume). Only
    # parameters whose shapes are still unknown need a forward pass first.
    deferred = [p for p in net.collect_params().values()
                if p._deferred_init]  # pylint: disable=protected-access
    if deferred:
        net(mx.nd.zeros((1, 3, dc.input_size, dc.input_size), ctx=ctx))
        mx.nd.waitall()
    dist.broadcast_parameters(net.collect_params())
    mx.nd.waitall()   # the broadcast is asynchronous: finish it while every rank is alive
    ema = _EMA(net.collect_params(), tc.ema_decay) if tc.ema_decay > 0 else None
    mx.random.seed(tc.seed * 1000 + dist.rank + global_step)

    mix = MixConfig(dc.num_classes, dc.label_smoothing, dc.mixup_alpha)
    sparse_loss = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=True)
    soft_loss = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
    train_transform = TrainTransform(dc.input_size, dc.autoaugment, dc.jitter, dc.lighting,
                                     scale=(dc.min_crop_area, 1.0))
    eval_size, crop_ratio = eval_settings(config)
    metrics = MetricsLog(os.path.join(workdir, "metrics.jsonl"), enabled=rank0)
    if rank0:
        log.info("%s on %d worker(s) (%s), %s; %d train / %s val records; global batch %d, "
                 "peak LR %.4g, %d steps/epoch x %d epochs; eval %d px (crop %.3f)",
                 config.model.name, dist.size, dist.name, ctx, len(train_shards),
                 len(val_shards) if val_shards else "no", global_batch, lr_peak,
                 steps_per_epoch, tc.epochs, eval_size, crop_ratio)

    stop = _StopFlag()
    stop.install()
    watchdog = _Watchdog(tc.stall_timeout)
    watchdog.start()
    last_eval = None
    status = "finished"

    def checkpoint_meta():
        return {"epoch": epoch, "batch": batch_in_epoch, "global_step": global_step,
                "steps_per_epoch": steps_per_epoch, "world_size": dist.size,
                "seed": tc.seed, "config_hash": cfg.config_hash(config),
                "best_top1": best["top1"], "best_step": best["step"], "lr": schedule(global_step)}

    running_stats = [p for name, p in net.collect_params().items()
                     if name.endswith(("running_mean", "running_var"))]

    def sync_running_stats():
        # Each rank's BatchNorm statistics saw only its own data: average them, so that every
        # rank evaluates, and rank 0 saves, the same model.
        dist.average_in_place(running_stats)

    def save_checkpoint():
        sync_running_stats()
        if ema is not None:
            ema.swap()
        try:
            checkpoints.save(net, trainer, checkpoint_meta())
        finally:
            if ema is not None:
                ema.swap()

    try:
        while epoch < tc.epochs:
            set_dropblock_prob(net, dropblock_prob_at(epoch, tc.epochs, final_dropblock))
            use_mixup = epoch < tc.epochs - dc.mixup_off_epochs
            batches = train_batches(len(train_shards), tc.batch_size, dist.rank, dist.size,
                                    tc.seed, epoch, batch_in_epoch, dc.chunk, dc.window)
            loader = BatchLoader(train_shards, batches, train_transform, dc.input_size,
                                 classes=dc.num_classes, workers=dc.workers,
                                 prefetch=dc.prefetch, seed=tc.seed, epoch=epoch, ctx=ctx)
            bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, disable=not rank0,
                       desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step", dynamic_ncols=True)
            epoch_loss, epoch_correct, epoch_seen, tic = 0.0, 0, 0, time.time()
            window_tic, window_images = time.time(), 0
            for data, labels in loader:
                lr = schedule(global_step)
                trainer.set_learning_rate(lr)
                rng = np.random.default_rng([tc.seed, global_step])
                inputs, targets, sparse = targets_for_batch(data, labels, mix, rng, use_mixup)
                with autograd.record():
                    logits = net(inputs)
                    loss = (sparse_loss if sparse else soft_loss)(logits, targets)
                    if tc.dtype != "float32":
                        with amp.scale_loss(loss, trainer) as scaled:
                            autograd.backward(scaled)
                if tc.dtype == "float32":
                    loss.backward()
                trainer.step(data.shape[0])
                if ema is not None:
                    ema.update()
                loss_value = float(loss.mean().asscalar())
                global_step += 1
                batch_in_epoch += 1
                # one small allreduce: every rank stops (or fails) at the same step
                flags = dist.allreduce_sum([float(stop.requested),
                                            float(not math.isfinite(loss_value))])
                watchdog.beat()
                if flags[1] > 0:
                    value = (loss_value if not math.isfinite(loss_value)
                             else "NaN/inf on another rank")
                    raise TrainingError(
                        f"loss is {value} at step {global_step} (epoch {epoch + 1}, batch "
                        f"{batch_in_epoch}, lr {lr:.4g}); stopping. The last good checkpoint "
                        f"is kept: lower optim.lr or check the data, then relaunch to resume "
                        f"from it")
                epoch_loss += loss_value
                epoch_correct += int((logits.argmax(axis=1) == labels).sum().asscalar())
                epoch_seen += data.shape[0]
                window_images += data.shape[0]
                bar.update(1)
                if rank0 and (global_step % tc.log_every == 0 or batch_in_epoch == 1):
                    rate = window_images * dist.size / max(time.time() - window_tic, 1e-9)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.4g}",
                                    img_s=f"{rate:.1f}")
                    metrics.write("step", step=global_step, epoch=epoch,
                                  epoch_float=epoch + batch_in_epoch / steps_per_epoch,
                                  loss=loss_value, lr=lr, img_per_s=rate,
                                  peak_memory_mb=peak_memory_mb())
                    window_tic, window_images = time.time(), 0
                if flags[0] > 0 or (tc.max_steps and global_step >= tc.max_steps):
                    status = "stopped" if flags[0] > 0 else "max_steps"
                    break
            bar.close()
            if loader.corrupt_count:
                log.warning("epoch %d: %d unreadable training records skipped", epoch + 1,
                            loader.corrupt_count)
            if status != "finished":
                save_checkpoint()
                log.info("%s at step %d; checkpoint saved, relaunch to resume",
                         "stop requested" if status == "stopped" else "max_steps reached",
                         global_step)
                dist.barrier()
                return {"status": status, "global_step": global_step, "epoch": epoch,
                        "lr": schedule(global_step), "last_eval": last_eval}
            # end of epoch
            train_stats = dist.allreduce_sum([epoch_loss, epoch_correct, epoch_seen,
                                              len(batches)])
            record = {"epoch": epoch, "step": global_step,
                      "train_loss": train_stats[0] / max(train_stats[3], 1),
                      "train_top1": train_stats[1] / max(train_stats[2], 1),
                      "img_per_s": train_stats[2] / max(time.time() - tic, 1e-9),
                      "lr": schedule(global_step), "peak_memory_mb": peak_memory_mb(),
                      "dropblock_prob": dropblock_prob_at(epoch, tc.epochs, final_dropblock)}
            epoch += 1
            batch_in_epoch = 0
            last_epoch = epoch == tc.epochs
            sync_running_stats()
            if val_shards is not None and (epoch % tc.eval_every == 0 or last_epoch):
                if ema is not None:
                    ema.swap()
                last_eval = evaluate(net, val_shards, dist, eval_size, crop_ratio,
                                     tc.batch_size, dc.workers, dc.num_classes, ctx)
                record.update(val_top1=last_eval["top1"], val_top5=last_eval["top5"],
                              val_images=last_eval["images"])
                if last_eval["top1"] > best["top1"]:
                    best = {"top1": last_eval["top1"], "step": global_step}
                    checkpoints.save_model(net, "best.params")
                if ema is not None:
                    ema.swap()
                watchdog.beat()
                if rank0:
                    log.info("epoch %d/%d: val top-1 %.2f%%  top-5 %.2f%%  (%d images)  "
                             "train loss %.4f", epoch, tc.epochs, 100 * last_eval["top1"],
                             100 * last_eval["top5"], last_eval["images"], record["train_loss"])
            elif rank0:
                log.info("epoch %d/%d: train loss %.4f", epoch, tc.epochs, record["train_loss"])
            metrics.write("epoch", **record)
            if epoch % tc.checkpoint_every == 0 or last_epoch:
                save_checkpoint()
            if rank0:
                try:
                    plot_curves(metrics.path, os.path.join(workdir, "curves.png"))
                except Exception as err:  # pylint: disable=broad-except
                    log.warning("could not draw curves.png: %s", err)   # never stop training
        if ema is not None:
            ema.swap()
        checkpoints.save_model(net, "final.params")
        if val_shards is None:
            checkpoints.save_model(net, "best.params")
        dist.barrier()   # no rank leaves while another still needs a collective
        return {"status": status, "global_step": global_step, "epoch": epoch,
                "lr": schedule(global_step), "last_eval": last_eval,
                "best_top1": best["top1"]}
    finally:
        watchdog.stop()
        stop.uninstall()
