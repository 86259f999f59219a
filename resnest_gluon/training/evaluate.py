"""Evaluation with exact counts, and the separate network the training loop evaluates.

This module owns :func:`evaluate` (top-1/top-5 over every record exactly once across ranks)
and :class:`EvalNetwork`, a second instance of the network that receives a copy of the
weights being evaluated (live or averaged).

Why a second network: in MXNet 1.9.1 with oneDNN, running the training network in inference
mode between training steps changes the later training steps' arithmetic and makes it
depend on thread timing (runs stop being reproducible), and its statically planned graphs do
not order host reads of BatchNorm running statistics after the backward pass that updates
them (apache/mxnet#18610). The training network therefore only ever trains; its weights are
copied out after ``mx.nd.waitall()``.
"""
import logging
from typing import Optional

import mxnet as mx
import numpy as np
from tqdm import tqdm

from ..data import BatchLoader, DataError, EvalTransform, Normalization, ShardSet, eval_batches
from ..models import EvalSettings, set_dropblock_prob
from .errors import EvaluationError

__all__ = ["evaluate", "eval_loader", "EvalNetwork", "structural_params", "topk_hits"]

log = logging.getLogger(__name__)


def structural_params(net) -> dict:
    """``{"layer1.0.conv1.weight": Parameter, ...}``: names that do not depend on the prefix."""
    return net._collect_params_with_prefix()   # pylint: disable=protected-access


def eval_loader(shards: ShardSet, dist, settings: EvalSettings, batch_size: int, workers: int,
                classes: int, ctx, persistent: bool = False) -> BatchLoader:
    """This rank's share of ``shards`` in evaluation batches (see :func:`eval_batches`).

    ``persistent`` keeps its worker processes between evaluations (a training run evaluates
    every few epochs; forking after CUDA is initialised costs seconds each time).
    """
    batches = eval_batches(len(shards), batch_size, dist.rank, dist.size)
    return BatchLoader(shards, batches, EvalTransform(settings.size, settings.crop_ratio,
                                                      settings.interpolation),
                       settings.size, classes=classes, workers=workers, ctx=ctx,
                       normalization=Normalization(settings.mean, settings.std),
                       unreadable_label=_UNREADABLE, persistent=persistent)


def evaluate(net, shards: ShardSet, dist, settings: EvalSettings, batch_size: int,
             workers: int, classes: int, ctx, per_class: bool = False,
             max_unreadable: Optional[int] = 0, loader: Optional[BatchLoader] = None) -> dict:
    """Top-1/top-5 over every record of ``shards`` exactly once across ranks.

    Parameters
    ----------
    net : HybridBlock
        The network to evaluate (inference mode).
    shards : ShardSet
        Validation records.
    dist
        Distributed context (rank, size, ``allreduce_sum``).
    settings : EvalSettings
        Size, crop ratio, interpolation and normalisation (from ``resolve_eval_settings``).
    batch_size, workers, classes : int
        Per-rank batch, decoding processes, number of classes.
    per_class : bool
        Also return per-class ``[correct, total]``.
    max_unreadable : int, optional
        Records that may be unreadable (summed over ranks); more raise
        :class:`~resnest_gluon.data.DataError` naming them. None: no limit.
    loader : BatchLoader, optional
        A loader from :func:`eval_loader` over the same ``shards`` to reuse (a persistent
        one keeps its workers); by default one is made for this evaluation.

    Returns
    -------
    dict
        ``top1``, ``top5`` (fractions of the images scored), ``images`` (images scored, summed
        across ranks), ``unreadable`` (records that could not be decoded: not scored, not in
        ``images``), and with ``per_class`` a ``(classes, 2)`` array.
    """
    if loader is None:
        loader = eval_loader(shards, dist, settings, batch_size, workers, classes, ctx)
    loader.start_epoch(loader.batches, 0)
    sums = mx.nd.zeros((3,), ctx=ctx, dtype="float32")   # top-1, top-5, images: on the device
    class_counts = np.zeros((classes, 2)) if per_class else None
    for data, labels in tqdm(loader, desc="eval", unit="batch", disable=dist.rank != 0,
                             leave=False, dynamic_ncols=True):
        logits = net(data)
        sums += mx.nd.concat(topk_hits(logits, labels),
                             mx.nd.sum(labels >= 0).astype("float32").reshape((1,)), dim=0)
        if per_class:
            host_labels = labels.asnumpy()
            scored = host_labels >= 0
            # float32: float16 argmax indices are exact only up to 2048 classes
            top1 = (logits.astype("float32", copy=False).argmax(axis=1) == labels
                    ).asnumpy()[scored]
            np.add.at(class_counts, host_labels[scored].astype(int), np.stack(
                [top1, np.ones_like(top1)], axis=1))
    local = np.concatenate([sums.asnumpy().astype(np.float64), [loader.corrupt_count]])
    total = dist.allreduce_sum(local, name="eval.counts")
    result = {"top1": total[0] / max(total[2], 1), "top5": total[1] / max(total[2], 1),
              "images": int(total[2]), "unreadable": int(total[3])}
    if per_class:
        result["per_class"] = dist.allreduce_sum(class_counts.ravel(), name="eval.per_class"
                                                 ).reshape(classes, 2)
    if result["images"] + result["unreadable"] != len(shards):
        raise EvaluationError(f"evaluated {result['images']} images and met "
                              f"{result['unreadable']} unreadable records; the set has "
                              f"{len(shards)}")
    if result["unreadable"]:
        _check_unreadable(result["unreadable"], len(shards), max_unreadable, loader)
    return result


# The label an unreadable record's place in a batch gets: never a class, so never counted.
_UNREADABLE = -1.0


def _check_unreadable(unreadable: int, records: int, allowed: Optional[int], loader):
    where = loader.corrupt_shards()
    where = f"; on this rank in {where}" if where else ""
    if allowed is not None and unreadable > allowed:
        raise DataError(f"{unreadable} of {records} validation records are unreadable (more "
                        f"than the {allowed} allowed){where}. Check them with: python -m "
                        f"recordio_tools check")
    log.warning("%d of %d validation records are unreadable and not scored: the accuracy is "
                "over the other %d%s", unreadable, records, records - unreadable, where)


def topk_hits(logits, labels, k: int = 5):
    """``[top-1 hits, top-k hits]`` of a batch as a float32 NDArray on the logits' device.

    Ranked in float32: float16 cannot represent class indices above 2048 exactly.
    """
    labels = labels.astype("float32").reshape((-1, 1))
    k = min(k, logits.shape[1])
    topk = mx.nd.topk(logits.astype("float32", copy=False), axis=1, k=k, dtype="float32")
    top1 = mx.nd.sum(topk.slice_axis(axis=1, begin=0, end=1) == labels)
    return mx.nd.concat(top1, mx.nd.sum(topk == labels), dim=0)


class EvalNetwork:
    """A second network, hybridized for inference, that holds the weights to evaluate.

    Parameters
    ----------
    net : HybridBlock
        A freshly built network of the same architecture (not initialised).
    ctx : mxnet.Context
    """

    def __init__(self, net, ctx):
        self.net = net
        self.net.initialize(ctx=ctx)
        set_dropblock_prob(self.net, 0.0)     # the identity in inference: no random ops
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.params = structural_params(self.net)

    def load_from(self, train_net, averaged: dict = None):
        """Copy ``train_net``'s weights in, taking ``averaged[name]`` where given (an EMA)."""
        mx.nd.waitall()     # BatchNorm statistics: see the module docstring
        averaged = averaged or {}
        for name, param in structural_params(train_net).items():
            source = averaged.get(name)
            self.params[name].set_data(param.data() if source is None else source)
        return self.net
