"""Where a run is: the state a checkpoint carries besides weights and optimizer state.

This module owns :class:`RunState` (position, best result, the running sums of the current
epoch) and its round trip through a checkpoint's ``meta.json``. Everything the loop needs to
continue a run exactly is either here, in the weights and optimizer files, or a pure function
of the config and these numbers.
"""
import dataclasses
import logging
from typing import Optional

__all__ = ["RunState", "EpochSums"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EpochSums:
    """Sums over all ranks of the current epoch's steps so far (read at each log window)."""

    loss: float = 0.0       # sum of per-image losses
    correct: float = 0.0    # top-1 hits against the (unmixed) labels
    images: float = 0.0

    def add(self, loss, correct, images):
        self.loss += float(loss)
        self.correct += float(correct)
        self.images += float(images)

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.images, 1.0)

    @property
    def top1(self) -> float:
        return self.correct / max(self.images, 1.0)


@dataclasses.dataclass
class RunState:
    """Position and bookkeeping of a run.

    Attributes
    ----------
    epoch, batch_in_epoch : int
        The next step to run is batch ``batch_in_epoch`` of ``epoch`` (0-based).
    global_step : int
        Updates done so far, counted across world-size changes (checkpoints, metrics and
        ``train.max_steps`` use it). The schedules use :meth:`schedule_step`, the position in
        the current units.
    best_top1, best_step
        The best validation top-1 so far and the step it was reached at.
    epoch_sums : EpochSums
        Loss/accuracy sums of the current epoch, so that a run resumed mid-epoch reports the
        same epoch statistics as an uninterrupted one.
    restored_step : int
        The global step of the checkpoint this run resumed from; 0 for a fresh run.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    best_step: Optional[int] = None
    epoch_sums: EpochSums = dataclasses.field(default_factory=EpochSums)
    restored_step: int = 0

    def schedule_step(self, steps_per_epoch: int) -> int:
        """The position in the run in updates of the current size: what the LR schedule is a
        function of. Equal to ``global_step`` unless the world size changed."""
        return self.epoch * steps_per_epoch + self.batch_in_epoch

    def advance(self):
        """One update done."""
        self.global_step += 1
        self.batch_in_epoch += 1

    def next_epoch(self):
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = EpochSums()

    def record_eval(self, top1: float) -> bool:
        """Note a validation result; True when it is the best so far."""
        if top1 > self.best_top1:
            self.best_top1, self.best_step = top1, self.global_step
            return True
        return False

    def to_meta(self) -> dict:
        """The fields a checkpoint's meta.json stores."""
        return {"epoch": self.epoch, "batch": self.batch_in_epoch,
                "global_step": self.global_step, "best_top1": self.best_top1,
                "best_step": self.best_step, "epoch_sums": dataclasses.asdict(self.epoch_sums)}

    @classmethod
    def from_meta(cls, meta: dict, steps_per_epoch: int, world_size: int,
                  accumulate: int = 1) -> "RunState":
        """The state saved in ``meta``, continued with ``steps_per_epoch`` steps per epoch.

        With the same number of steps per epoch the position is exact. With another one (the
        world size or the data changed) the position inside the epoch is kept as a fraction (the
        schedules continue from there, in the new units) and a warning says so; the global step
        goes on counting updates.
        """
        sums = {k: v for k, v in meta.get("epoch_sums", {}).items() if k != "steps"}
        state = cls(epoch=meta["epoch"], batch_in_epoch=meta["batch"],
                    global_step=meta["global_step"], best_top1=meta.get("best_top1", -1.0),
                    best_step=meta.get("best_step"), epoch_sums=EpochSums(**sums),
                    restored_step=meta["global_step"])
        saved = meta["steps_per_epoch"]
        if saved != steps_per_epoch:
            state.batch_in_epoch = int(state.batch_in_epoch * steps_per_epoch / saved)
            log.warning("steps per epoch changed %d -> %d (world size %s -> %d, accumulated "
                        "micro-batches %s -> %s): data re-partitioned, continuing at batch %d "
                        "of epoch %d; from here the run is not a replay of the original one",
                        saved, steps_per_epoch, meta.get("world_size", "?"), world_size,
                        meta.get("accumulate", 1), accumulate, state.batch_in_epoch,
                        state.epoch)
        return state
