"""One training step on the device, and what the steps accumulate between host reads.

This module owns :func:`train_step` (schedules, seeds, mixup, forward, backward, update),
:class:`WindowMeter` (loss and accuracy summed on the device) and :class:`RunningStatistics`
(BatchNorm statistics as one flat vector, to average across ranks). Nothing here reads a value
back to the host except :meth:`WindowMeter.read`, which the loop calls once per log window.
"""
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..data import targets_for_batch
from .evaluate import topk_hits
from .optim import clip_global_norm

__all__ = ["train_step", "step_seed", "WindowMeter", "RunningStatistics"]

_SPARSE_LOSS = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=True)
_SOFT_LOSS = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)


def step_seed(seed: int, step: int, rank: int, part: int = 0) -> int:
    """The seed of MXNet's generators for micro-batch ``part`` of update ``step`` on ``rank``
    (DropBlock, dropout)."""
    key = [seed, step, rank, 0xD80] + ([part] if part else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def train_step(run, state, data, labels):
    """Run the next update of ``run`` (at ``state``) on one batch; returns ``(loss, logits)``.

    The batch (as the loader gives it: uint8 batches are normalised on the device one
    micro-batch at a time) holds ``train.accumulate`` micro-batches of ``train.batch_size``:
    each is run forward and backward in turn, their gradients summed, then one allreduce and
    one update (optionally after clipping the global gradient norm) follow. The learning rate is the
    schedule's at the state's position. Every random draw is a function of (seed, step,
    micro-batch, rank): MXNet's generators are reseeded before each forward pass, and the
    mixup weight comes from a generator keyed by (seed, step, micro-batch). A resumed run
    therefore repeats the uninterrupted one.

    Returns
    -------
    tuple of NDArray
        Per-image losses ``(N,)`` and logits ``(N, classes)`` of the whole batch, still on
        the device.
    """
    run.trainer.set_learning_rate(run.lr(state))
    micro = run.config.train.batch_size
    outputs = [_forward_backward(run, state, part, data[start:start + micro],
                                 labels[start:start + micro])
               for part, start in enumerate(range(0, data.shape[0], micro))]
    _update(run, data.shape[0])
    if run.ema is not None:
        run.ema.update()
    if len(outputs) == 1:
        return outputs[0]
    return (mx.nd.concat(*[loss for loss, _ in outputs], dim=0),
            mx.nd.concat(*[logits for _, logits in outputs], dim=0))


def _forward_backward(run, state, part, data, labels):
    """One micro-batch's forward and backward pass; its gradients are added to the others'."""
    seed, step = run.config.train.seed, state.global_step
    mx.random.seed(step_seed(seed, step, run.dist.rank, part), ctx=run.ctx)
    rng = np.random.default_rng([seed, step] + ([part] if part else []))
    inputs, targets, sparse = targets_for_batch(run.device_batch(data), labels, run.mix, rng,
                                                run.mixup_on(state.epoch))
    with autograd.record():
        logits = run.net(inputs)
        loss = (_SPARSE_LOSS if sparse else _SOFT_LOSS)(logits, targets)
        scaled = run.precision.scale(loss)
    scaled.backward()
    return loss, logits


def _update(run, batch: int):
    """Allreduce the summed gradients once, clip them if configured, update, and clear
    gradients that accumulate (``grad_req='add'``) for the next update."""
    trainer, clip = run.trainer, run.config.optim.clip_grad_norm
    if clip > 0:
        trainer.allreduce_grads()
        clip_global_norm(trainer._params, clip,   # pylint: disable=protected-access
                         trainer._scale / batch)  # pylint: disable=protected-access
        trainer.update(batch)
    else:
        trainer.step(batch)
    if run.config.train.accumulate > 1:
        for param in trainer._params:   # pylint: disable=protected-access
            if param.grad_req == "add":
                param.zero_grad()


class WindowMeter:
    """Loss sum and top-1 hits of the steps since the last read, kept on the device.

    Parameters
    ----------
    ctx : mxnet.Context
        The training device.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.reset()

    def reset(self):
        self.sums = mx.nd.zeros((2,), ctx=self.ctx)      # loss sum, top-1 hits
        self.images = 0
        self.steps = 0

    def add(self, loss, logits, labels):
        hits = topk_hits(logits, labels, k=1)[0:1]
        self.sums += mx.nd.concat(loss.sum(), hits, dim=0)
        self.images += labels.shape[0]
        self.steps += 1

    def read(self, extra=None) -> np.ndarray:
        """``[loss sum, top-1 hits, images]`` (+ ``extra``, a device vector read in the same
        transfer) as float64: the one blocking read of a window."""
        device = self.sums if extra is None else mx.nd.concat(self.sums, extra, dim=0)
        values = device.asnumpy().astype(np.float64)
        return np.concatenate([values[:2], [self.images], values[2:]])


class RunningStatistics:
    """The BatchNorm running means and variances of a network as one flat vector.

    Each rank's statistics see only its own data; the loop averages them across ranks at every
    log window, so that the ranks hold the same model whenever a checkpoint or an evaluation
    can happen (the average of running averages is the running average of the averages, so
    the cadence does not change the result beyond rounding).
    """

    def __init__(self, net):
        self.params = [p for name, p in net.collect_params().items()
                       if name.endswith(("running_mean", "running_var"))]
        self.sizes = [int(np.prod(p.shape)) for p in self.params]

    def vector(self):
        """All statistics, flattened, as one float32 NDArray on their device."""
        return mx.nd.concat(*[p.data().reshape((-1,)) for p in self.params], dim=0)

    def assign(self, flat: np.ndarray):
        """Set the statistics from a flat host vector (the order of :meth:`vector`): one
        upload, then copies on the device."""
        if not self.params:
            return
        values = mx.nd.array(flat, ctx=self.params[0].data().context, dtype="float32")
        offset = 0
        for param, size in zip(self.params, self.sizes):
            param.set_data(values[offset:offset + size].reshape(param.shape))
            offset += size
