"""Training: the loop (:mod:`.loop`) over the parts :mod:`.setup` builds (network, optimizer,
:mod:`.precision`, :mod:`.ema`), one step (:mod:`.step`), evaluation (:mod:`.evaluate`),
callbacks (:mod:`.callbacks`), checkpoints, schedules, metrics and the distributed context
(:mod:`.dist`, the only module that imports horovod)."""
from .callbacks import Callback
from .errors import EvaluationError, TrainingError
from .evaluate import evaluate
from .loop import fit

__all__ = ["fit", "evaluate", "Callback", "TrainingError", "EvaluationError"]
