"""Training: the loop (:mod:`.loop`), schedules, checkpoints, metrics and the distributed
context (:mod:`.dist`, the only module that imports horovod)."""
from .loop import evaluate, fit

__all__ = ["fit", "evaluate"]
