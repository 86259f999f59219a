"""Everything a run is made of, built once from the config: :class:`Run` and :func:`setup_run`.

This module owns building the network, the optimizer and the precision, opening the shards,
the schedules, the evaluation network, and restoring a checkpoint into them
(:func:`restore_state`). The loop (:mod:`.loop`) only drives what this module built.
"""
import dataclasses
import functools
import logging
import os
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet import gluon

from .. import config as cfg
from ..data import (
    BatchLoader,
    MixConfig,
    Normalization,
    RandAugment,
    RandomErasing,
    ShardSet,
    TrainTransform,
    batches_per_epoch,
    train_batches,
)
from ..errors import reason_of
from ..models import EvalSettings, get_model, get_spec, resolve_eval_settings
from ..models.convert import load_weights
from ..models.splat import implementations_for
from .checkpoint import CheckpointManager, checkpoint_differences
from .devices import default_context
from .ema import ParameterEMA
from .errors import ResumeError, TrainingError
from .evaluate import EvalNetwork, eval_loader, evaluate, structural_params
from .optim import optimizer_arguments
from .precision import Precision, make_precision
from .schedule import Schedule, dropblock_prob_at, peak_lr
from .state import RunState

__all__ = ["Run", "setup_run", "restore_state", "build_network", "eval_settings"]

log = logging.getLogger(__name__)


def build_network(config: cfg.Config, classes: Optional[int] = None, device_type: str = "cpu"):
    """The configured zoo network for a ``device_type`` device (DropBlock starts at 0; the
    loop schedules it). ``model.attention_product=auto`` and ``model.grouped_conv=auto`` pick
    the implementation for the device and ``train.dtype`` (the same network and results
    either way)."""
    overrides = dict(config.model.overrides)
    if config.model.final_drop is not None:
        overrides["final_drop"] = config.model.final_drop
    overrides.update(implementations_for(device_type, config.model.attention_product,
                                         config.model.grouped_conv, config.train.dtype))
    try:
        return get_model(config.model.name, classes=classes or config.data.num_classes,
                         last_gamma=config.model.last_gamma, **overrides)
    except (ValueError, TypeError) as err:   # the zoo's and the architecture's own checks
        raise cfg.ConfigError(f"model.name={config.model.name}"
                              f"{' with model.overrides' if config.model.overrides else ''}: "
                              f"{err}") from None


def eval_settings(config: cfg.Config, size: Optional[int] = None,
                  crop_ratio: Optional[float] = None,
                  interpolation: Optional[str] = None) -> EvalSettings:
    """The evaluation settings of a training config (see ``resolve_eval_settings``); explicit
    arguments win over the config's ``data.eval_size`` and ``data.crop_ratio``."""
    return resolve_eval_settings(config.model.name, train_size=config.data.input_size,
                                 size=size or config.data.eval_size,
                                 crop_ratio=crop_ratio or config.data.crop_ratio,
                                 interpolation=interpolation)


@dataclasses.dataclass
class Run:
    """The built parts of one training run (see :func:`setup_run`)."""

    config: cfg.Config
    workdir: str
    dist: object
    ctx: mx.Context
    precision: Precision
    net: gluon.HybridBlock
    trainer: gluon.Trainer
    eval_net: EvalNetwork
    ema: Optional[ParameterEMA]
    schedule: Schedule
    steps_per_epoch: int
    train_shards: ShardSet
    val_shards: Optional[ShardSet]
    eval_settings: EvalSettings
    mix: MixConfig
    checkpoints: CheckpointManager
    final_dropblock: float
    _loader: Optional[BatchLoader] = dataclasses.field(default=None, repr=False)
    _eval_loader: Optional[BatchLoader] = dataclasses.field(default=None, repr=False)

    @property
    def rank0(self) -> bool:
        return self.dist.rank == 0

    @property
    def update_batch(self) -> int:
        """Records per update on each worker (see :func:`update_batch`)."""
        return update_batch(self.config)

    @property
    def global_batch(self) -> int:
        """Records per update over all workers (what the LR scales with)."""
        return self.update_batch * self.dist.size

    def lr(self, state: RunState, before: int = 0) -> float:
        """The learning rate at ``state``'s position (``before`` updates earlier)."""
        return self.schedule(state.schedule_step(self.steps_per_epoch) - before)

    def dropblock_prob(self, epoch: int) -> float:
        return dropblock_prob_at(epoch, self.config.train.epochs, self.final_dropblock)

    def mixup_on(self, epoch: int) -> bool:
        return epoch < self.config.train.epochs - self.config.data.mixup_off_epochs

    def train_loader(self, state: RunState) -> BatchLoader:
        """This rank's batches of ``state.epoch`` from ``state.batch_in_epoch`` on, from the
        run's one loader (its worker processes live as long as the run: :meth:`close`)."""
        tc, dc = self.config.train, self.config.data
        batches = train_batches(len(self.train_shards), self.update_batch, self.dist.rank,
                                self.dist.size, tc.seed, state.epoch, state.batch_in_epoch,
                                dc.chunk, dc.window)
        if self._loader is None:
            transform = train_transform(dc, self.eval_settings)
            self._loader = BatchLoader(
                self.train_shards, batches, transform, dc.input_size, classes=dc.num_classes,
                workers=dc.workers, prefetch=dc.prefetch, seed=tc.seed, epoch=state.epoch,
                ctx=self.ctx, persistent=True,
                normalization=None if self.normalize_on_device else self.normalization)
        return self._loader.start_epoch(batches, state.epoch)

    def close(self):
        """End what the run holds open (the loaders' worker processes)."""
        for loader in (self._loader, self._eval_loader):
            if loader is not None:
                loader.close()
        self._loader = self._eval_loader = None

    @functools.cached_property
    def normalization(self) -> Normalization:
        """The model's mean/std normalisation (one instance: it keeps its device arrays)."""
        return Normalization(self.eval_settings.mean, self.eval_settings.std)

    @property
    def normalize_on_device(self) -> bool:
        """Whether training batches travel as uint8 and are normalised on the device
        (``data.normalize_on``; auto: on GPUs, where the upload is the cost, not on CPUs,
        where the loader's workers do it in parallel)."""
        where = self.config.data.normalize_on
        return where == "device" or (where == "auto" and self.ctx.device_type == "gpu")

    def device_batch(self, data):
        """A training batch as the network takes it: uint8 NHWC batches are normalised here,
        on the device."""
        if data.dtype == np.uint8:
            return self.normalization.batch(data, self.ctx)
        return data

    def model_to_evaluate(self):
        """The evaluation network holding the weights to evaluate and save (EMA if on)."""
        return self.eval_net.load_from(self.net, self.ema.values() if self.ema else None)

    def bad_record_budget(self, records: int) -> int:
        """Unreadable records tolerated in one pass over ``records`` (``data.max_bad_fraction``);
        more stop the run."""
        return int(self.config.data.max_bad_fraction * records)

    def evaluate(self) -> dict:
        """Top-1/top-5 of :meth:`model_to_evaluate` on the validation shards."""
        dc = self.config.data
        if self._eval_loader is None:
            self._eval_loader = eval_loader(self.val_shards, self.dist, self.eval_settings,
                                            self.config.train.batch_size, dc.workers,
                                            dc.num_classes, self.ctx, persistent=True)
        return evaluate(self.model_to_evaluate(), self.val_shards, self.dist, self.eval_settings,
                        self.config.train.batch_size, dc.workers, dc.num_classes, self.ctx,
                        max_unreadable=self.bad_record_budget(len(self.val_shards)),
                        loader=self._eval_loader)

    def checkpoint_meta(self, state: RunState) -> dict:
        """What a checkpoint's meta.json holds besides the files' checksums."""
        return dict(state.to_meta(), steps_per_epoch=self.steps_per_epoch,
                    world_size=self.dist.size, accumulate=self.config.train.accumulate,
                    seed=self.config.train.seed,
                    config_hash=cfg.config_hash(self.config), config=cfg.to_dict(self.config),
                    lr=self.lr(state), precision=self.precision.name,
                    precision_state=self.precision.state_dict())


def _check_labels(shards: ShardSet, key: str, classes: int):
    """Labels outside ``[0, data.num_classes)`` stop the run before its first step."""
    low, high = shards.label_range()
    if low < 0 or high >= classes:
        raise cfg.ConfigError(f"{key} has labels from {low:g} to {high:g}, outside "
                              f"[0, {classes}) of data.num_classes={classes}: set "
                              f"data.num_classes, or check that {key} is the intended set")


def update_batch(config: cfg.Config) -> int:
    """Records per update on each worker: ``train.batch_size`` x ``train.accumulate`` (the
    loader's batch, run as ``accumulate`` micro-batches)."""
    return config.train.batch_size * config.train.accumulate


def train_transform(dc: cfg.DataConfig, settings: EvalSettings) -> TrainTransform:
    """The per-image training augmentation of ``data`` (random erasing fills with the
    model's normalisation mean/std)."""
    randaugment = (RandAugment(dc.randaugment_n, dc.randaugment_m, dc.randaugment_mstd)
                   if dc.randaugment_n > 0 else None)
    erasing = (RandomErasing(dc.random_erasing, dc.erasing_mode, settings.mean, settings.std)
               if dc.random_erasing > 0 else None)
    return TrainTransform(dc.input_size, dc.autoaugment, dc.jitter, dc.lighting,
                          scale=(dc.min_crop_area, 1.0), randaugment=randaugment,
                          erasing=erasing)


def _open_data(config: cfg.Config, dist):
    dc, tc = config.data, config.train
    train_shards = ShardSet(dc.train)
    val_shards = ShardSet(dc.val) if dc.val else None
    for shards, key in ((train_shards, "data.train"), (val_shards, "data.val")):
        if shards is not None:
            _check_labels(shards, key, dc.num_classes)
    steps_per_epoch = batches_per_epoch(len(train_shards), update_batch(config), dist.size)
    if steps_per_epoch == 0:
        accumulated = f" x train.accumulate={tc.accumulate}" if tc.accumulate > 1 else ""
        raise cfg.ConfigError(f"data.train has {len(train_shards)} records: not one batch of "
                              f"train.batch_size={tc.batch_size}{accumulated} per worker for "
                              f"{dist.size} worker(s)")
    return train_shards, val_shards, steps_per_epoch


def _schedule(config: cfg.Config, steps_per_epoch: int, global_batch: int) -> Schedule:
    oc = config.optim
    return Schedule(oc.lr or peak_lr(oc.base_lr, global_batch), steps_per_epoch,
                    config.train.epochs, oc.warmup_epochs, oc.warmup_lr, oc.final_lr,
                    oc.schedule, tuple(oc.step_epochs), oc.step_factor)


def _training_network(config: cfg.Config, precision: Precision, ctx):
    net = build_network(config, device_type=ctx.device_type)
    # the initial weights are a function of train.seed, not of what ran before in the process
    mx.random.seed(int(np.random.SeedSequence([config.train.seed, 0x1217]).generate_state(1)[0]))
    net.initialize(mx.init.MSRAPrelu(), ctx=ctx)
    deferred = [name for name, p in net.collect_params().items()
                if p._deferred_init]   # pylint: disable=protected-access
    if deferred:
        # The broadcast and the checkpoints need every shape now; a forward pass to infer
        # them would run the training network in inference mode (see evaluate.py).
        raise TrainingError(f"parameters without a shape after initialisation: {deferred[:3]}")
    _prepare_fine_tuning(net, config)   # before hybridize: frozen BatchNorms change the graph
    if config.train.accumulate > 1:      # gradients summed over the micro-batches of an update
        for param in net.collect_params().values():
            if param.grad_req == "write":
                param.grad_req = "add"
    if config.train.hybridize:
        precision.hybridize(net)
    if config.optim.no_wd_on_bn_bias:
        for name, param in net.collect_params().items():
            if name.endswith(("gamma", "beta", "bias")):
                param.wd_mult = 0.0
    return net


def _prepare_fine_tuning(net, config: cfg.Config):
    """``model.freeze`` and ``optim.head_lr_mult`` (both no-ops at their defaults)."""
    net.freeze(config.model.freeze)
    if config.model.freeze >= 0:
        frozen = sum(p.grad_req == "null" for p in net.collect_params().values())
        log.info("frozen: the stem%s (%d parameter arrays; their BatchNorms use running "
                 "statistics)", f" and stages 1-{config.model.freeze}"
                 if config.model.freeze else "", frozen)
    if config.optim.head_lr_mult != 1.0:
        for param in net.fc.collect_params().values():
            param.lr_mult = config.optim.head_lr_mult
        log.info("the classifier learns at %g x the learning rate", config.optim.head_lr_mult)


def setup_run(config: cfg.Config, workdir: str, dist) -> Run:
    """Build the network, optimizer, precision, data and schedules of a run (no restore)."""
    ctx = default_context(dist.local_rank)
    precision = make_precision(config.train.dtype, on_gpu=ctx.device_type == "gpu")
    precision.prepare()
    net = _training_network(config, precision, ctx)   # a model mistake: before reading data
    train_shards, val_shards, steps_per_epoch = _open_data(config, dist)
    schedule = _schedule(config, steps_per_epoch, update_batch(config) * dist.size)
    params = net.collect_params()
    optimizer, arguments = optimizer_arguments(config.optim, params, schedule(0))
    trainer = dist.make_trainer(params, optimizer, arguments,
                                fp16_allreduce=config.dist.fp16_allreduce)
    precision.attach(trainer)
    spec = get_spec(config.model.name)
    return Run(config=config, workdir=workdir, dist=dist, ctx=ctx, precision=precision,
               net=net, trainer=trainer,
               eval_net=EvalNetwork(build_network(config, device_type=ctx.device_type), ctx),
               ema=(ParameterEMA(structural_params(net), config.train.ema_decay)
                    if config.train.ema_decay > 0 else None),
               schedule=schedule, steps_per_epoch=steps_per_epoch, train_shards=train_shards,
               val_shards=val_shards, eval_settings=eval_settings(config),
               mix=MixConfig(config.data.num_classes, config.data.label_smoothing,
                             config.data.mixup_alpha, config.data.cutmix_alpha,
                             config.data.mix_switch_prob),
               checkpoints=CheckpointManager(workdir, config.train.keep_checkpoints,
                                             is_writer=dist.rank == 0),
               final_dropblock=(spec.dropblock_prob if config.model.dropblock_prob is None
                                else config.model.dropblock_prob))


def _check_resumable(run: Run, folder: str, meta: dict):
    """Raise :class:`ResumeError` listing what differs when ``folder`` does not fit ``run``."""
    differences = checkpoint_differences(folder, meta, run.net, cfg.to_dict(run.config),
                                         os.path.join(run.workdir, "config.yaml"))
    if differences:
        listed = "; ".join(d.rstrip(". ") for d in differences)
        raise ResumeError(f"cannot resume from {folder}, it holds another model: {listed}. "
                          f"{_start_over(run, folder)}")


def _start_over(run: Run, folder: str) -> str:
    return (f"Relaunch with the run's own config ({run.workdir}/config.yaml), start fresh with "
            f"another --workdir, or fine-tune from its weights in another --workdir with "
            f"model.pretrained={os.path.join(folder, 'model.params')}")


def restore_state(run: Run) -> RunState:
    """Load the newest complete checkpoint (weights, optimizer, EMA, loss scale), or the
    ``model.pretrained`` weights in a fresh run, make every rank hold rank 0's weights, and
    return where the run stands.

    Raises
    ------
    ResumeError
        The checkpoint does not fit this run's model; the message lists the differences.
    """
    found = run.checkpoints.latest()
    if found[0] is not None:
        _check_resumable(run, *found)
    try:
        meta = run.checkpoints.restore(run.net, run.trainer, run.ctx, run.ema, found=found)
    except (mx.base.MXNetError, ValueError, KeyError, AssertionError) as err:
        reason = reason_of(err)
        reason = reason.split(" Set allow_missing")[0].rstrip(". ")   # MXNet's hint: not ours
        raise ResumeError(f"cannot resume from {found[0]}: {reason}. {_start_over(run, found[0])}"
                          ) from None
    if meta is None and run.config.model.pretrained:
        # a classifier for other classes keeps its fresh initialisation (fine-tuning)
        load_weights(run.net, run.config.model.pretrained, ctx=run.ctx, new_head=True)
    elif run.config.model.pretrained:
        log.warning("model.pretrained is not used: the run resumes from its own checkpoint "
                    "%s (model.pretrained only starts fresh runs)", found[0])
    state = RunState()
    if meta is not None:
        if meta.get("config_hash") != cfg.config_hash(run.config):
            log.warning("the config differs from the checkpoint's (hash %s vs %s); resuming "
                        "with the new one", cfg.config_hash(run.config), meta.get("config_hash"))
        if "epoch_sums" not in meta:
            log.warning("the checkpoint was written by an older version: this epoch's training "
                        "statistics restart%s", ", and its weights are the averaged ones"
                        if run.ema is not None else "")
        run.precision.load_state_dict(meta.get("precision_state", {}))
        state = RunState.from_meta(meta, run.steps_per_epoch, run.dist.size,
                                   run.config.train.accumulate)
    # Broadcast before any forward pass: a forward leaves arrays in oneDNN layouts, which
    # Horovod cannot read.
    run.dist.broadcast_parameters(run.net.collect_params())
    mx.nd.waitall()   # the broadcast is asynchronous: finish it while every rank is alive
    if meta is None and run.ema is not None:
        run.ema.reset()     # start the average from the broadcast weights
    return state
