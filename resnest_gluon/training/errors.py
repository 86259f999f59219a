"""Errors that end a run with a one-line message (the CLIs print them without a traceback)."""

__all__ = ["TrainingError", "EvaluationError"]


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, stalled job, ...)."""


class EvaluationError(TrainingError):
    """An evaluation that did not see every image exactly once."""
