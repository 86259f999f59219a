"""Exponential moving average of the trainable parameters.

This module owns :class:`ParameterEMA`. It averages the trainable parameters only: BatchNorm
running statistics are already averages, and the evaluated model takes the live ones. The
average is part of every checkpoint, so a resumed run continues it exactly.
"""
import mxnet as mx

__all__ = ["ParameterEMA"]


class ParameterEMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every update.

    Parameters
    ----------
    params : ParameterDict
        The network's parameters (those with a gradient are averaged).
    decay : float
        In (0, 1).
    """

    def __init__(self, params, decay: float):
        self.decay = float(decay)
        self.params = {name: p for name, p in params.items() if p.grad_req != "null"}
        self.shadow = {name: p.data().copy() for name, p in self.params.items()}

    def reset(self):
        """Start the average at the current values."""
        for name, param in self.params.items():
            self.shadow[name][:] = param.data()

    def update(self):
        for name, param in self.params.items():
            shadow = self.shadow[name]
            shadow[:] = self.decay * shadow + (1 - self.decay) * param.data()

    def values(self) -> dict:
        """``{parameter name: averaged value}``."""
        return self.shadow

    def save(self, path: str):
        """Write the averages from the CPU: an NDArray loads onto the device it was saved from,
        and every rank must restore onto its own (:meth:`load`)."""
        mx.nd.save(path, {name: value.as_in_context(mx.cpu())
                          for name, value in self.shadow.items()})

    def load(self, path: str):
        loaded = mx.nd.load(path)
        missing = set(self.shadow) - set(loaded)
        if missing:
            raise ValueError(f"{path} lacks the average of {sorted(missing)[:3]}")
        for name, shadow in self.shadow.items():
            shadow[:] = loaded[name].as_in_context(shadow.context)
