"""How every command-line tool ends: one home for the exit codes and the error line.

:func:`command` wraps a ``main(argv) -> int``:

* a user's mistake (:class:`~resnest_gluon.errors.UserError`: config, data, weights, a busy
  work directory, a full disk), an ``OSError`` on a path the user named, and a Pillow
  decompression bomb print one line and exit 2;
* a run that fails for a known reason (:class:`~resnest_gluon.errors.RunFailure`: a NaN
  loss, a stalled worker) prints one line and exits 1;
* Ctrl-C prints one line and exits 130;
* anything else is a defect: its traceback is printed and the exit code is 1.

Usage errors of the arguments themselves stay argparse's (usage line, exit 2).
"""
import argparse
import errno
import functools
import logging
from typing import Optional

from PIL import Image

from ..errors import RunFailure, UserError
from . import setup_logging

__all__ = ["command", "user_message", "EXIT_USER_ERROR", "EXIT_FAILURE", "EXIT_INTERRUPTED",
           "positive_int", "non_negative_int", "positive_float"]

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def _describe_os_error(err: OSError) -> str:
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p)
    if err.errno == errno.ENOSPC:
        return f"no space left on device{f' writing {paths}' if paths else ''}"
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and paths:
        reason += " (a file is in the way: the path or one of its parents is not a folder)"
    return f"{reason}: {paths}" if paths else reason


def user_message(err: BaseException) -> Optional[str]:
    """The one line to print for ``err`` when it is the user's to fix, else None."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, Image.DecompressionBombError):
        return str(err)
    if isinstance(err, OSError) and (err.filename or err.errno == errno.ENOSPC):
        return _describe_os_error(err)
    return None


def command(name: str, interrupted: str = "interrupted"):
    """Decorate a ``main(argv=None) -> int`` with the exit-code rules of this module.

    Parameters
    ----------
    name : str
        Logger name of the tool (e.g. ``train``); the error line is logged under it.
    interrupted : str
        What to say on Ctrl-C (e.g. how to resume).
    """
    def decorate(main):
        @functools.wraps(main)
        def wrapped(argv=None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                _error(name, interrupted)
                return EXIT_INTERRUPTED
            except RunFailure as err:
                _error(name, str(err))
                return EXIT_FAILURE
            except Exception as err:  # pylint: disable=broad-except
                message = user_message(err)
                if message is None:
                    raise
                _error(name, message)
                return EXIT_USER_ERROR
        return wrapped
    return decorate


def _error(name: str, message: str):
    if not logging.getLogger().handlers:   # failed before the tool set up its logging
        setup_logging()
    logging.getLogger(name).error("%s", message)


def _number(convert, low, inclusive, words):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{value} is not {words}")
        return value
    parse.__name__ = convert.__name__   # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, True, ">= 1")
non_negative_int = _number(int, 0, True, ">= 0")
positive_float = _number(float, 0, False, "> 0")
