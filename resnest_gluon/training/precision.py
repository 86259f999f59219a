"""Training precision: the one place that knows about float16, bfloat16 and loss scaling.

This module owns :class:`Precision` (float32) and :class:`AMPPrecision` (MXNet AMP in float16
with dynamic loss scaling, or in bfloat16, which keeps float32's exponent range and needs no
scaling), and :func:`make_precision`. The loop calls the same methods whatever the dtype:
``prepare`` before the network is built, ``hybridize``, ``attach`` to the trainer, ``scale``
inside ``autograd.record()``, and ``state_dict``/``load_state_dict`` through checkpoints.
"""
import logging

from ..config import ConfigError

__all__ = ["Precision", "AMPPrecision", "make_precision"]

log = logging.getLogger(__name__)


class Precision:
    """float32 training: static memory planning, no loss scaling."""

    name = "float32"

    def prepare(self):
        """Anything that must happen before the network is built."""

    def hybridize(self, net):
        net.hybridize(static_alloc=True, static_shape=True)

    def attach(self, trainer):
        """Connect to the trainer (loss scaling)."""

    def scale(self, loss):
        """The loss to call ``backward`` on (called inside ``autograd.record()``)."""
        return loss

    def state_dict(self) -> dict:
        """What a checkpoint must keep (the loss scaler)."""
        return {}

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict`."""


class AMPPrecision(Precision):
    """MXNet AMP: the network computes in ``dtype`` where AMP's lists allow it.

    float16 uses AMP's dynamic loss scaler (its state is checkpointed, so a resumed run goes on
    with the same scale); bfloat16 has float32's exponent range and trains unscaled.
    """

    def __init__(self, dtype: str):
        self.name = dtype
        self._trainer = None

    @property
    def scaled(self) -> bool:
        return self.name == "float16"

    def prepare(self):
        from mxnet.contrib import amp  # imported here: AMP patches MXNet's operators
        amp.init(target_dtype=self.name)

    def hybridize(self, net):
        # AMP inserts its casts when the graph is traced; the traced graph is planned
        # statically like float32's (no allocation per step).
        net.hybridize(static_alloc=True, static_shape=True)

    def attach(self, trainer):
        if self.scaled:
            from mxnet.contrib import amp
            amp.init_trainer(trainer)
            self._trainer = trainer

    def scale(self, loss):
        scaler = self._scaler()
        if scaler is None:
            return loss
        # What amp.scale_loss does: the trainer divides the gradients by the scale again.
        trainer = self._trainer
        trainer._scale = (trainer._amp_original_scale   # pylint: disable=protected-access
                          / scaler.loss_scale)
        return loss * scaler.loss_scale

    def _scaler(self):
        if self._trainer is None:
            return None
        return self._trainer._amp_loss_scaler   # pylint: disable=protected-access

    def state_dict(self) -> dict:
        scaler = self._scaler()
        if scaler is None:
            return {}
        # pylint: disable=protected-access
        return {"loss_scale": scaler._loss_scale, "next_loss_scale": scaler._next_loss_scale,
                "unskipped": scaler._unskipped}

    def load_state_dict(self, state: dict):
        scaler = self._scaler()
        if scaler is None or not state:
            return
        # pylint: disable=protected-access
        scaler._loss_scale = float(state["loss_scale"])
        scaler._next_loss_scale = float(state["next_loss_scale"])
        scaler._unskipped = int(state["unskipped"])
        log.info("loss scale restored: %g", scaler.loss_scale)


def make_precision(dtype: str, on_gpu: bool) -> Precision:
    """The :class:`Precision` for ``train.dtype``.

    Raises
    ------
    ConfigError
        bfloat16 on a GPU (MXNet 1.9's cuDNN convolutions have no bfloat16 kernels) or float16
        on a CPU (MXNet has no float16 CPU kernels for most operators).
    """
    if dtype == "float32":
        return Precision()
    if dtype == "bfloat16" and on_gpu:
        raise ConfigError("train.dtype=bfloat16 runs on CPUs only (MXNet 1.9 has no bfloat16 "
                          "GPU convolution); use float16 on GPUs")
    if dtype == "float16" and not on_gpu:
        raise ConfigError("train.dtype=float16 needs a GPU (MXNet has no float16 CPU kernels "
                          "for most operators); use bfloat16 on CPUs")
    return AMPPrecision(dtype)
