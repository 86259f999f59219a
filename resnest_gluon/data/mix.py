"""Batch-level label smoothing, mixup and CutMix, producing soft targets.

This module owns :func:`soft_targets`, :func:`mixup` and :func:`cutmix`. They work on MXNet
NDArrays on the training device, after the batch has been normalised (and per micro-batch when
updates accumulate): the mix is a cheap element-wise op there and never costs the input
workers anything, and one place draws which mix a batch gets.
"""
import mxnet as mx
import numpy as np

__all__ = ["soft_targets", "mixup", "cutmix", "cutmix_box", "MixConfig", "targets_for_batch"]


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


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator):
    """``(top, bottom, left, right)`` of CutMix's pasted rectangle for mixing weight ``lam``:
    sides ``sqrt(1 - lam)`` of the image's, centred uniformly, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


def cutmix(data, targets, lam: float, rng: np.random.Generator):
    """Paste a rectangle of the batch reversed into each sample (Yun et al., 2019); the
    targets mix by the rectangle's real area (after clipping), not by ``lam``.

    Returns
    -------
    tuple
        Mixed data, mixed soft targets, and the weight of the sample's own target.
    """
    top, bottom, left, right = cutmix_box(data.shape[2], data.shape[3], lam, rng)
    own = 1.0 - (bottom - top) * (right - left) / float(data.shape[2] * data.shape[3])
    mixed = data.copy()
    if own < 1.0:
        mixed[:, :, top:bottom, left:right] = mx.nd.flip(data, axis=0)[:, :, top:bottom,
                                                                        left:right]
    return mixed, own * targets + (1 - own) * mx.nd.flip(targets, axis=0), own


class MixConfig:
    """What the training loop mixes: label smoothing, mixup and CutMix.

    Parameters
    ----------
    classes : int
        Number of classes.
    smoothing : float
        Label smoothing epsilon.
    mixup_alpha, cutmix_alpha : float
        Beta(alpha, alpha) parameter of each mix's weight; 0 disables that mix.
    switch_prob : float
        With both on, the probability that a batch gets CutMix rather than mixup.
    """

    def __init__(self, classes: int, smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, switch_prob: float = 0.5):
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1:
            raise ValueError(f"mix alphas must be >= 0 and the switch probability in [0, 1], "
                             f"got {mixup_alpha}, {cutmix_alpha}, {switch_prob}")
        self.classes = classes
        self.smoothing = smoothing
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob

    @property
    def sparse(self) -> bool:
        """True when neither smoothing nor a mix is on: integer labels suffice."""
        return self.smoothing == 0 and self.mixup_alpha == 0 and self.cutmix_alpha == 0

    def choose(self, rng: np.random.Generator) -> str:
        """``mixup``, ``cutmix`` or ``none`` for the next batch."""
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if rng.random() < self.switch_prob else "mixup"
        if self.cutmix_alpha > 0:
            return "cutmix"
        return "mixup" if self.mixup_alpha > 0 else "none"


def targets_for_batch(data, labels, mix: MixConfig, rng: np.random.Generator,
                      use_mixup: bool = True):
    """Apply the configured mix to a batch (``use_mixup`` False: no mixup nor CutMix, as in
    the last ``data.mixup_off_epochs`` epochs).

    Returns
    -------
    tuple
        ``(data, targets, sparse)``: targets are the integer labels when ``sparse`` is True,
        otherwise ``(N, classes)`` soft targets.
    """
    kind = mix.choose(rng) if use_mixup else "none"
    if mix.smoothing == 0 and kind == "none":
        return data, labels, True
    targets = soft_targets(labels, mix.classes, mix.smoothing)
    if kind == "mixup":
        lam = float(rng.beta(mix.mixup_alpha, mix.mixup_alpha))
        data, targets = mixup(data, targets, lam)
    elif kind == "cutmix":
        lam = float(rng.beta(mix.cutmix_alpha, mix.cutmix_alpha))
        data, targets, _ = cutmix(data, targets, lam, rng)
    return data, targets, False
