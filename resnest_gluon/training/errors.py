"""Errors that end a run with a one-line message (the CLIs print them without a traceback)."""

from ..errors import RunFailure, UserError

__all__ = ["TrainingError", "EvaluationError", "ResumeError"]


class TrainingError(RunFailure):
    """A run that cannot go on (NaN loss, stalled job, ...)."""


class EvaluationError(TrainingError):
    """An evaluation that did not see every image exactly once."""


class ResumeError(UserError):
    """A checkpoint in the work directory that this run's config cannot resume."""
