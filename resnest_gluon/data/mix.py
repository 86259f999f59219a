"""Batch-level label smoothing and mixup, producing soft targets.

This module owns :func:`soft_targets` and :func:`mixup`. They work on MXNet NDArrays on the
training device, after the batch has been normalised: the mix is a cheap element-wise op there
and never costs the input workers anything.
"""
import mxnet as mx
import numpy as np

__all__ = ["soft_targets", "mixup", "MixConfig", "targets_for_batch"]


def soft_targets(labels, classes: int, smoothing: float = 0.0):
    """One-hot targets with ``smoothing`` spread uniformly: ``(1-e) * onehot + e / classes``.

    Parameters
    ----------
    labels : NDArray
        ``(N,)`` integer class labels (any float/int dtype).
    classes : int
        Number of classes.
    smoothing : float
        Label smoothing epsilon in ``[0, 1)``.

    Returns
    -------
    NDArray
        ``(N, classes)`` float32, rows summing to 1.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    on_value = 1.0 - smoothing + smoothing / classes
    off_value = smoothing / classes
    return mx.nd.one_hot(labels.astype("int32"), classes, on_value=on_value,
                         off_value=off_value).astype("float32")


def mixup(data, targets, lam: float):
    """Mix each sample with the batch reversed: ``lam * x + (1 - lam) * x[::-1]``.

    Returns
    -------
    tuple of NDArray
        Mixed data and mixed soft targets.
    """
    data = lam * data + (1 - lam) * mx.nd.flip(data, axis=0)
    targets = lam * targets + (1 - lam) * mx.nd.flip(targets, axis=0)
    return data, targets


class MixConfig:
    """What the training loop mixes: label smoothing and mixup.

    Parameters
    ----------
    classes : int
        Number of classes.
    smoothing : float
        Label smoothing epsilon.
    mixup_alpha : float
        Beta(alpha, alpha) parameter of the mixing weight; 0 disables mixup.
    """

    def __init__(self, classes: int, smoothing: float = 0.0, mixup_alpha: float = 0.0):
        if mixup_alpha < 0:
            raise ValueError(f"mixup alpha must be >= 0, got {mixup_alpha}")
        self.classes = classes
        self.smoothing = smoothing
        self.mixup_alpha = mixup_alpha

    @property
    def sparse(self) -> bool:
        """True when neither smoothing nor mixup is on: integer labels suffice."""
        return self.smoothing == 0 and self.mixup_alpha == 0


def targets_for_batch(data, labels, mix: MixConfig, rng: np.random.Generator,
                      use_mixup: bool = True):
    """Apply the configured mix to a batch.

    Returns
    -------
    tuple
        ``(data, targets, sparse)``: targets are the integer labels when ``sparse`` is True,
        otherwise ``(N, classes)`` soft targets.
    """
    mixing = use_mixup and mix.mixup_alpha > 0
    if mix.smoothing == 0 and not mixing:
        return data, labels, True
    targets = soft_targets(labels, mix.classes, mix.smoothing)
    if mixing:
        lam = float(rng.beta(mix.mixup_alpha, mix.mixup_alpha))
        data, targets = mixup(data, targets, lam)
    return data, targets, False
