"""The base classes of the errors that end a command with one line, shared by the package.

:class:`UserError` marks an error whose message alone tells the user what to fix (a config
key, a path, a data file, a weight file, a busy work directory, a full disk): the command-line
tools print its message as one line and exit 2 (:mod:`.commands.cli`). :class:`RunFailure`
marks a run that failed for a known reason that is nobody's typo (a NaN loss, a stalled
worker): one line, exit 1. Any other exception is a defect of ours and keeps its traceback.
The specific errors (``ConfigError``, ``RecordFormatError``, ``DataError``,
``WeightsMismatchError``, ...) live beside the code that raises them and derive from these
classes and from the built-in class callers already catch.
Imports nothing.
"""

__all__ = ["UserError", "RunFailure", "DiskFullError", "reason_of"]


class UserError(Exception):
    """A mistake in what the user gave or in the user's environment; the message says what
    to fix."""


class RunFailure(RuntimeError):
    """A run that cannot go on for a known reason; the message says what happened."""


class DiskFullError(UserError, OSError):
    """No space left for a file the program must write (nothing partial is left behind).

    Built as ``DiskFullError(errno.ENOSPC, message, folder)``; prints as the message alone.
    """

    def __str__(self):
        return self.strerror or super().__str__()


def reason_of(err: BaseException) -> str:
    """The one line that says why ``err`` happened. MXNet's errors carry the C++ stack first
    (``Traceback ... File "src/...cc"``) and their reason last (``MXNetError: Check failed:
    ...``); other errors give their first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Traceback"):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith("MXNetError: ") else last
    return lines[0]
