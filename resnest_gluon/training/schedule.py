"""Schedules as pure functions of the update count.

This module owns :class:`Schedule` (learning rate: linear warm-up, then cosine, step or
constant) and :func:`dropblock_prob_at` (linear ramp). The number of updates per epoch is always
the real count the loader yields, passed in by the training loop, never a dataset constant.
"""
import dataclasses
import math
from typing import Sequence

__all__ = ["Schedule", "dropblock_prob_at", "peak_lr"]


def peak_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: ``base_lr * global_batch / 256`` (the paper: 0.1 per 256)."""
    return base_lr * global_batch / 256.0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Learning rate at update ``step`` (0-based).

    Parameters
    ----------
    peak : float
        LR reached at the end of warm-up.
    steps_per_epoch : int
        Updates per epoch (from the loader).
    epochs : int
        Total epochs.
    warmup_epochs : float
        Linear warm-up length, from ``warmup_lr``.
    kind : str
        ``cosine`` (to ``final_lr``), ``step`` (times ``step_factor`` at ``step_epochs``) or
        ``constant``.
    """

    peak: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 5.0
    warmup_lr: float = 0.0
    final_lr: float = 0.0
    kind: str = "cosine"
    step_epochs: Sequence[int] = (30, 60, 90)
    step_factor: float = 0.1

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    def __call__(self, step: int) -> float:
        warm = self.warmup_steps
        if step < warm:
            return self.warmup_lr + (self.peak - self.warmup_lr) * step / warm
        if self.kind == "constant":
            return self.peak
        if self.kind == "step":
            epoch = step / self.steps_per_epoch
            return self.peak * self.step_factor ** sum(epoch >= e for e in self.step_epochs)
        span = max(1, self.total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.final_lr + (self.peak - self.final_lr) * cosine


def dropblock_prob_at(epoch: int, epochs: int, final_prob: float) -> float:
    """DropBlock probability during ``epoch`` (0-based): linear from ``final/epochs`` at the
    first epoch to ``final_prob`` at the last, as the authors' schedule."""
    if final_prob <= 0:
        return 0.0
    return final_prob * min(epoch + 1, epochs) / epochs
